"""GET /metrics and GET /lf/requests with real processes and a real llama-server: the gateway's figures and the
manager's in one exposition, labels bounded whatever is asked, refusals counted by reason, and one request id
through the gateway's, the manager's and the engine's logs."""

from __future__ import annotations

import json
import re
import urllib.error
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, running_instance, wait_until
from tests.support.metrics import scrape

KEY = "metrics-admin-key-123"
CHAT = {"model": "a", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5, "temperature": 0}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("metrics") / "home", llama_server,
                          {"a": models_dir / "chat.gguf"}, "request_log_bodies = true\n") as inst:
        yield inst


def sse_usage(text: str) -> int:
    """The completion tokens in a streamed OpenAI answer's usage chunk."""
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    return next(c["usage"]["completion_tokens"] for c in reversed(chunks) if c.get("usage"))


def test_one_exposition_holds_the_gateways_and_the_managers_figures(inst: Instance) -> None:
    assert inst.post("/lf/model/switch", {"model": "a"})[0] == 200
    _, before = scrape(inst.url)
    code, whole = inst.post("/v1/chat/completions", CHAT)
    assert code == 200
    code, streamed = inst.post("/v1/chat/completions", {**CHAT, "stream": True,
                                                        "stream_options": {"include_usage": True}})
    assert code == 200
    code, ollama = inst.post("/api/chat", {"model": "a", "messages": CHAT["messages"], "stream": False,
                                           "options": {"num_predict": 5, "temperature": 0}})
    assert code == 200
    generated = whole["usage"]["completion_tokens"] + sse_usage(streamed) + ollama["eval_count"]  # type: ignore[index]

    wait_until(lambda: (inst.slot("a") or {}).get("measured_bytes"), what="the engine's memory measured")
    text, after = scrape(inst.url)

    def delta(name: str, **labels: str) -> float:
        return (after.get_one(name, **labels) or 0) - (before.get_one(name, **labels) or 0)

    assert delta("lmforge_requests_total", route="/v1/chat/completions", method="POST", status="200") == 2
    assert delta("lmforge_requests_total", route="/api/chat", method="POST", status="200") == 1
    assert delta("lmforge_request_duration_seconds_count", route="/api/chat") == 1
    assert delta("lmforge_completion_tokens_total", model="a") == generated
    assert delta("lmforge_prompt_tokens_total", model="a") > 0
    assert delta("lmforge_time_to_first_token_seconds_count", model="a") == 1  # the one streamed answer
    assert delta("lmforge_tokens_per_second_count", model="a") == 3
    assert delta("lmforge_queue_wait_seconds_count", model="a") == 3
    # The manager's part: the load, the slot, the memory and the loop.
    assert after.get_one("lmforge_model_loads_total", model="a", outcome="ok") == 1
    assert after.get_one("lmforge_model_load_duration_seconds_count", model="a") == 1
    assert after.get_one("lmforge_slots", state="ready") == 1
    assert after.get_one("lmforge_model_memory_estimate_bytes", model="a", kind="chat") > 0
    assert after.get_one("lmforge_model_memory_measured_bytes", model="a", kind="chat") > 0
    total = after.get_one("lmforge_memory_budget_total_bytes")
    assert total and total == after.get_one("lmforge_memory_budget_used_bytes") + \
        after.get_one("lmforge_memory_budget_free_bytes")
    assert after.get_one("lmforge_manager_loop_lag_seconds") is not None
    assert after.get_one("lmforge_manager_up") == 1
    assert "_created" not in text


def test_labels_are_route_templates_whatever_scanners_ask(inst: Instance) -> None:
    probes = [f"/{uuid.uuid4().hex}/.env" for _ in range(20)] + ["/v1/models/a", "/v1/models/nope:1b"]
    for path in probes:
        inst.get(path)
    text, samples = scrape(inst.url)
    assert not any(p in text for p in probes[:20])
    assert samples.get_one("lmforge_requests_total", route="unmatched", method="GET", status="404") >= 20
    assert samples.get_one("lmforge_requests_total", route="/v1/models/{id}", method="GET", status="200") >= 1


def test_the_request_log_has_timings_tokens_and_outcomes_and_masks_secrets(inst: Instance) -> None:
    code, whole = inst.request("POST", "/v1/chat/completions", CHAT, headers={"X-Request-Id": "log-ok-1"})
    assert code == 200
    code, _ = inst.post("/v1/chat/completions", {**CHAT, "model": "nope", "api_key": "sk-secret-value"},
                        headers={"X-Request-Id": "log-bad-1"})
    assert code == 404
    code, _ = inst.request("POST", "/v1/chat/completions", CHAT, headers={"X-Request-Id": "bad id\twith junk"})
    assert code == 200
    code, log = inst.get("/lf/requests?limit=3")
    assert code == 200
    newest, failed, ok = log["requests"]  # type: ignore[index]
    assert re.fullmatch(r"[0-9a-f]{32}", newest["id"])  # a junk id is replaced, never logged as sent
    assert ok["id"] == "log-ok-1" and ok["model"] == "a" and ok["dialect"] == "openai"
    assert ok["route"] == "/v1/chat/completions" and ok["status"] == 200 and ok["outcome"] == "ok"
    assert ok["tokens"]["completion"] == whole["usage"]["completion_tokens"]  # type: ignore[index]
    t = ok["timings_ms"]
    assert t["queue"] is not None and t["load"] == 0 and t["total"] >= t["queue"]
    assert failed["id"] == "log-bad-1" and failed["status"] == 404 and failed["outcome"] == "error"
    assert failed["code"] == "model_not_found" and "sk-secret-value" not in json.dumps(failed)
    assert json.loads(failed["body"])["api_key"] == "***"
    assert inst.get("/lf/requests?limit=0")[0] == 400
    assert inst.get("/lf/requests?limit=abc")[0] == 400


def test_one_request_id_runs_through_the_gateway_manager_and_engine_logs(inst: Instance) -> None:
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    code, _ = inst.request("POST", "/v1/chat/completions", CHAT, headers={"X-Request-Id": rid})
    assert code == 200
    engine_log = next((inst.home / "logs").glob("engine-a-chat.log"))

    def marked() -> bool:
        return f"request {rid} ended" in engine_log.read_text(errors="replace")
    wait_until(marked, what="the engine log's end mark")
    engine = engine_log.read_text(errors="replace").splitlines()
    start = next(i for i, line in enumerate(engine) if f"request {rid} started" in line)
    end = next(i for i, line in enumerate(engine) if f"request {rid} ended (ok)" in line)
    assert any("print_timing" in line or "launch_slot" in line for line in engine[start + 1:end]), \
        "the engine's own lines of the request lie between the marks"
    wait_until(lambda: rid in inst.log("gateway"), what="the gateway's line")
    assert re.search(rf"request {rid} POST /v1/chat/completions -> 200 ok model=a", inst.log("gateway"))
    assert re.search(rf"lmforge.manager: request {rid} started \(lease \S+ on a\)", inst.log("manager"))


def test_refusals_are_counted_by_reason(make_instance, models_dir: Path) -> None:
    guarded = make_instance(f'api_key = "{KEY}"\ntrusted_networks = []\nmax_body_mb = 1\n',
                            {"a": models_dir / "chat.gguf"}).start()
    auth = {"Authorization": f"Bearer {KEY}"}
    assert guarded.get("/v1/models")[0] == 401
    assert guarded.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong-key-000"})[0] == 401
    big = b'{"model": "a", "prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert guarded.request("POST", "/v1/completions", raw=big, headers=auth)[0] == 413
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(guarded.url)  # /metrics needs a key from outside trusted_networks
    assert refused.value.code == 401
    _, samples = scrape(guarded.url, auth)
    assert samples.get_one("lmforge_auth_rejections_total", reason="missing_api_key") >= 2  # the scrape too
    assert samples.get_one("lmforge_auth_rejections_total", reason="invalid_api_key") == 1
    assert samples.get_one("lmforge_body_limit_rejections_total", route="/v1/completions") == 1
    assert samples.get_one("lmforge_requests_total", route="/v1/models", method="GET", status="401") == 2


def test_without_a_manager_the_gateway_still_answers_and_says_so(make_instance) -> None:
    alone = make_instance().start()
    alone.stop("manager")
    wait_until(lambda: not alone.healthy(), what="the gateway to notice")
    _, samples = scrape(alone.url)
    assert samples.get_one("lmforge_manager_up") == 0
    assert samples.get_one("lmforge_slots", state="ready") is None

