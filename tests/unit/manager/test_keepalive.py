"""keep_alive parsing follows Ollama: durations, seconds, 0, and negative for forever."""

from __future__ import annotations

import pytest

from manager.keepalive import FOREVER, KeepAliveError, describe, parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("30s", 30.0), ("1.5h", 5400.0), ("250ms", 0.25), (" 10m ", 600.0),
     (0, 0.0), ("0", 0.0), (45, 45.0), (2.5, 2.5), ("120", 120.0), ("0s", 0.0)],
)
def test_durations_and_numbers_parse_to_seconds(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, "-1", "-5m", -0.5, float("inf")])
def test_negative_keeps_the_model_forever(value: object) -> None:
    assert parse_keep_alive(value) is FOREVER  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["10d", "five minutes", "", "m", "5 m", True, None, "nan"])
def test_garbage_is_refused_with_a_hint(value: object) -> None:
    with pytest.raises(KeepAliveError, match="keep_alive"):
        parse_keep_alive(value)  # type: ignore[arg-type]


def test_describe_reads_like_a_duration() -> None:
    assert describe(None) == "forever"
    assert describe(0) == "unload after request"
    assert describe(5400) == "1h30m"
    assert describe(59.6) == "1m"
