"""Image preflight: every image of a chat request checked (and every remote one fetched) before any engine work."""
