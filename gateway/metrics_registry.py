"""The gateway's Prometheus figures: requests by route and status, latency, per-model tokens and timings, and
rejections by reason. The manager's figures (loads, evictions, slots, memory, downloads) are its own, appended
at scrape time (manager/metrics.py says how).

Cardinality stays bounded whatever callers send: `route` is the template of the route that answered (or
"unmatched"), `method` one of the HTTP methods, `model` a model the manager granted a lease for, and every
`reason` one of a fixed set of error codes.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.request_log import RequestRecord

prometheus_client.disable_created_metrics()  # no `_created` series: they double the exposition for nothing

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# Refusals by the middlewares and the manager, by the error code they answer with.
AUTH_CODES = frozenset({"missing_api_key", "invalid_api_key", "insufficient_scope", "loopback_only",
                        "admin_key_required"})
BODY_CODES = frozenset({"request_too_large", "request_entity_too_large"})
GUARD_CODES = frozenset({"host_not_allowed", "origin_not_allowed", "unsupported_content_encoding"})
CONCURRENCY_CODE = "concurrency_limit"
# Images (gateway/preflight/): how each image of a request ended, and why a refused one was refused.
IMAGE_RESULTS = ("accepted", "inline", "rejected")  # fetched and rewritten; data: or base64 as sent; refused
IMAGE_REASONS = ("blocked_address", "scheme", "fetch_failed", "http_status", "timeout", "too_large",
                 "too_many_redirects", "not_an_image")
SECOND_CALLS = ("call2_prefill", "answer_fallback")  # the thinking workflow's second call, by kind


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lmforge_requests", "HTTP requests answered, by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("lmforge_request_duration_seconds", "Request to the end of its answer (a stream's "
                                 "last byte)", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("lmforge_requests_in_flight", "Requests the gateway is answering", registry=r)
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "Request to the first token of a streamed "
                              "answer, queue and load included", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.rate = Histogram("lmforge_tokens_per_second", "Generation speed of each answer, from the engine's "
                              "own timings", ["model"], buckets=RATE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "Prompt tokens sent to engines", ["model"], registry=r)
        self.completion_tokens = Counter("lmforge_completion_tokens", "Tokens engines generated", ["model"],
                                         registry=r)
        self.queue_wait = Histogram("lmforge_queue_wait_seconds", "Time a request waited in its model's queue, "
                                    "its load excluded", ["model"], buckets=QUEUE_BUCKETS, registry=r)
        self.auth_rejections = Counter("lmforge_auth_rejections", "Requests refused by auth, by reason", ["reason"],
                                       registry=r)
        self.body_rejections = Counter("lmforge_body_limit_rejections", "Requests refused for a body over "
                                       "max_body_mb (or compressed)", ["route"], registry=r)
        self.concurrency_rejections = Counter("lmforge_concurrency_rejections", "Requests refused because their "
                                              "model's queue was full or the wait too long", registry=r)
        self.guard_rejections = Counter("lmforge_guard_rejections", "Requests refused by the host and origin "
                                        "guards or for a compressed body, by reason", ["reason"], registry=r)

        self.images = Counter("lmforge_image_inputs", "Images in chat requests: fetched and rewritten (accepted), "
                              "sent inline (inline), or refused (rejected)", ["result"], registry=r)
        self.image_rejections = Counter("lmforge_image_rejections", "Images refused, by reason", ["reason"],
                                        registry=r)
        self.thinking_requests = Counter("lmforge_thinking_requests", "Requests served by the thinking-budget "
                                         "workflow, by dialect", ["dialect"], registry=r)
        self.second_calls = Counter("lmforge_thinking_second_calls", "Second calls of the thinking workflow: an "
                                    "answer after the budget ran out (call2_prefill) or after an empty first call "
                                    "(answer_fallback)", ["kind"], registry=r)
        self.reasoning_tokens = Counter("lmforge_reasoning_tokens", "Tokens models spent thinking, in the thinking "
                                        "workflow", ["model"], registry=r)
        for result in IMAGE_RESULTS:  # every series from the start: a rate over a series that appears is lost
            self.images.labels(result)
        for reason in IMAGE_REASONS:
            self.image_rejections.labels(reason)
        for kind in SECOND_CALLS:
            self.second_calls.labels(kind)

    def observe(self, record: RequestRecord) -> None:
        """One finished request."""
        method = record.method if record.method in METHODS else "OTHER"
        self.requests.labels(record.route, method, str(record.status)).inc()
        if record.total_ms is not None:
            self.latency.labels(record.route).observe(record.total_ms / 1000)
        self._rejection(record)
        if record.model is None:
            return
        model = record.model
        if record.first_token_ms is not None and record.stream:
            self.ttft.labels(model).observe(record.first_token_ms / 1000)
        if record.tokens_per_s is not None:
            self.rate.labels(model).observe(record.tokens_per_s)
        if record.prompt_tokens:
            self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        if record.completion_tokens:
            self.completion_tokens.labels(model).inc(record.completion_tokens)
        if record.queue_ms is not None:
            self.queue_wait.labels(model).observe(record.queue_ms / 1000)
        if record.thinking is not None:
            self.thinking_requests.labels(record.dialect or "openai").inc()
            if record.thinking in SECOND_CALLS:
                self.second_calls.labels(record.thinking).inc()
        if record.reasoning_tokens:
            self.reasoning_tokens.labels(model).inc(record.reasoning_tokens)

    def _rejection(self, record: RequestRecord) -> None:
        code = record.code or ""
        if code in AUTH_CODES:
            self.auth_rejections.labels(code).inc()
        elif code in BODY_CODES:
            self.body_rejections.labels(record.route).inc()
        elif code == CONCURRENCY_CODE:
            self.concurrency_rejections.inc()
        elif code in GUARD_CODES:
            self.guard_rejections.labels(code).inc()
        else:
            return
        record.outcome = "rejected"

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
