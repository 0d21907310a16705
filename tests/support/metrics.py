"""Reading a Prometheus exposition in tests: samples by name and labels, parsed by prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Samples(dict):
    """{(sample name, ((label, value), ...)): value}"""

    def get_one(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def named(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: value for (n, labels), value in self.items() if n == name}


def parse(text: str) -> Samples:
    out = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(base_url: str, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    """GET /metrics: its text, and its samples (the parser refuses an exposition Prometheus would refuse)."""
    req = urllib.request.Request(base_url + "/metrics", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return text, parse(text)
