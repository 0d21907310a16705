"""LMForge's version, as /health, the OpenAPI document and the image fetcher's User-Agent say it."""

VERSION = "0.1.0"
