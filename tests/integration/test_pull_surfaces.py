"""The pull surfaces through a running LMForge: refusals in each dialect, /lf/catalog, the catalog's name alias,
and `lmforge pull|catalog|rm` as a user runs them (not on a terminal: plain lines).

The end-to-end behaviour of the downloader (resume, corruption, disk, concurrency) is test_pulls_*'s; here a
local Hub serves one tiny GGUF so that the CLI has something real to pull.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import ollama
import pytest

from catalog.entries import fits
from manager.config import Paths
from tests.support.hub import LocalHub, running_hub
from tests.support.instance import Instance, clean_up, prepare_instance, wait_until
from tests.support.pulls import add_shortcut

REPO = "tester/Tiny-GGUF"
WEIGHTS = "tiny-Q4_K_M.gguf"
PULLED = f"{REPO}:Q4_K_M"
ALIASED = "qwen3:0.6b:4bit"  # a catalog name, installed here as a tiny model: `qwen3:0.6b` must find it
SHORT_REPO = "tester/Short-GGUF"
SHORT = "tinyshort:1m"  # a shortcut of this home's catalog override, for SHORT_REPO
ADMIN, INFERENCE = "admin-key-0123456789", "inference-key-0123456789"


@pytest.fixture(scope="module")
def hub(models_dir: Path) -> Iterator[LocalHub]:
    with running_hub() as hub:
        hub.add_repo(REPO, {WEIGHTS: models_dir / "cycle.gguf", "README.md": b"# tiny\n"})
        hub.add_repo(SHORT_REPO, {WEIGHTS: models_dir / "cycle.gguf"})
        yield hub


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path,
         hub: LocalHub) -> Iterator[Instance]:
    inst = prepare_instance(tmp_path_factory.mktemp("pulls") / "home", llama_server,
                            {ALIASED: models_dir / "chat.gguf"})
    inst.env["HF_ENDPOINT"] = hub.url
    add_shortcut(inst.home, SHORT, SHORT_REPO, WEIGHTS, (models_dir / "cycle.gguf").stat().st_size)
    try:
        yield inst.start()
    finally:
        clean_up(inst)


def pull_events(inst: Instance, body: dict) -> list[tuple[str, dict]]:
    """POST /lf/model/pull and read its SSE to the end: (event, data) pairs, pings left out."""
    req = urllib.request.Request(inst.url + "/lf/model/pull", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    events, name = [], None
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name != "ping":
                events.append((name, json.loads(line[5:])))
    return events


def ndjson(inst: Instance, body: dict) -> tuple[int, list[dict]]:
    code, reply = inst.request("POST", "/api/pull", raw=json.dumps(body).encode())
    if isinstance(reply, str):  # several lines: not one JSON document
        return code, [json.loads(line) for line in reply.splitlines()]
    return code, [reply]  # type: ignore[list-item]


def pulls(inst: Instance) -> list[dict]:
    return inst.status()["pulls"]


# --- refusals, in each dialect ---


@pytest.mark.parametrize("name", ["../etc/passwd", "bad name", "-x", "a" * 200])
def test_a_name_no_model_can_have_is_400_in_each_dialect(inst: Instance, name: str) -> None:
    code, body = inst.post("/lf/model/pull", {"model": name})
    assert code == 400 and body["error"]["code"] == "invalid_model_name", body  # type: ignore[index]
    code, body = inst.post("/api/pull", {"model": name})
    assert code == 400 and "invalid model name" in body["error"], body  # type: ignore[index]
    assert not any(p["model"] == name for p in pulls(inst))  # nothing was asked of the manager


def test_a_missing_model_field_is_400_in_each_dialect(inst: Instance) -> None:
    code, body = inst.post("/lf/model/pull", {})
    assert code == 400 and "model" in body["error"]["message"], body  # type: ignore[index]
    code, body = inst.post("/api/pull", {"stream": False})
    assert code == 400 and body == {"error": "model is required"}


def test_an_unknown_shortcut_is_404_naming_the_closest_in_each_dialect(inst: Instance) -> None:
    code, body = inst.post("/lf/model/pull", {"model": "qwen3:0.6bb"})
    assert code == 404 and body["error"]["code"] == "model_not_found", body  # type: ignore[index]
    assert "qwen3:0.6b:4bit" in body["error"]["message"]  # type: ignore[index]  # did you mean ...
    for stream in (True, False):
        code, lines = ndjson(inst, {"model": "qwen3:0.6bb", "stream": stream})
        assert code == 404 and len(lines) == 1, lines
        assert lines[0]["error"].startswith("pull model manifest: file does not exist")  # Ollama's words
    assert not any(p["model"] == "qwen3:0.6bb" for p in pulls(inst))


def test_cancelling_a_pull_that_is_not_running_is_404(inst: Instance) -> None:
    code, body = inst.request("DELETE", "/lf/model/pull/qwen3:4b")
    assert code == 404 and body["error"]["code"] == "model_not_found", body  # type: ignore[index]
    code, body = inst.request("DELETE", "/lf/model/pull/a..b")
    assert code == 400, body


def test_an_inference_key_is_refused_every_pull_route_but_reads_the_catalog(
        make_instance, hub: LocalHub) -> None:  # type: ignore[no-untyped-def]
    # Loopback untrusted: every caller needs a key, so the key's scope decides.
    keyed = make_instance(f'trusted_networks = []\napi_key = "{ADMIN}"\n'
                          f'[[api_keys]]\nkey = "{INFERENCE}"\nscope = "inference"\n')
    keyed.env["HF_ENDPOINT"] = hub.url
    keyed.start("manager", "gateway", wait=False)
    wait_until(lambda: _answers(keyed), timeout=20, what="gateway /health 200")
    for method, path, body in (("POST", "/lf/model/pull", {"model": PULLED}), ("POST", "/api/pull", {"model": PULLED}),
                               ("DELETE", "/lf/model/pull/qwen3:4b", None)):
        code, reply = _call(keyed, method, path, body, INFERENCE)
        assert code == 403, (path, reply)
    code, reply = _call(keyed, "GET", "/lf/catalog", None, INFERENCE)
    assert code == 200 and reply["models"], reply
    assert _call(keyed, "GET", "/lf/status", None, ADMIN)[1]["pulls"] == []  # nothing started


def _answers(inst: Instance) -> bool:
    try:
        return _call(inst, "GET", "/health", None, ADMIN)[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


def _call(inst: Instance, method: str, path: str, body: object, key: str) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(inst.url + path, method=method, data=data,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- /lf/catalog and the name alias ---


def test_the_catalog_lists_sizes_and_what_fits_this_machines_budget(inst: Instance) -> None:
    code, body = inst.get("/lf/catalog")
    assert code == 200, body
    budget = inst.status()["budget"]["total_bytes"]
    assert body["budget_bytes"] == budget > 0  # type: ignore[index]
    models = {m["name"]: m for m in body["models"]}  # type: ignore[index]
    assert {"chat", "embedding", "vision", "rerank"} <= {m["kind"] for m in models.values()}
    for m in models.values():
        default = next(q for q in m["quants"] if q["quant"] == m["default_quant"])
        assert m["fits"] == fits(default["size_bytes"], budget) == default["fits"]
        assert m["description"] and m["context_length"] > 0 and any(m["repos"].values())
    assert models[ALIASED]["installed"] and not any(m["installed"] for n, m in models.items() if n != ALIASED)
    code, body = inst.get("/lf/catalog?kind=embedding")
    assert code == 200 and {m["kind"] for m in body["models"]} == {"embedding"}  # type: ignore[index]
    code, body = inst.get("/lf/catalog?kind=spaceship")
    assert code == 400 and "kind must be one of" in body["error"]["message"]  # type: ignore[index]


def test_a_shortcut_without_its_quant_finds_the_model_installed_under_its_canonical_name(inst: Instance) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    code, body = inst.post("/v1/chat/completions", {"model": "qwen3:0.6b", **chat})
    assert code == 200, body
    code, body = inst.post("/v1/chat/completions", {"model": "qwen3:4b", **chat})
    assert code == 404, body
    assert "pull it with `lmforge pull qwen3:4b`" in body["error"]["message"]  # type: ignore[index]
    code, body = inst.post("/v1/chat/completions", {"model": "not-in-any:catalog", **chat})
    assert code == 404 and "lmforge pull" not in body["error"]["message"]  # type: ignore[index]


# --- the CLI ---


def test_cli_pull_prints_plain_lines_ending_in_done_and_a_second_pull_fetches_nothing(
        inst: Instance, hub: LocalHub) -> None:
    first = inst.lmforge("pull", PULLED)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert lines[-1].startswith("done: ") and "(1 file, " in lines[-1] and lines[-1].endswith(" GB)"), lines
    name = lines[-1].removeprefix("done: ").split(" (")[0]
    assert name in [m["name"] for m in inst.get("/lf/model/list")[1]["models"]]  # type: ignore[index]
    served = hub.bytes_served(f"{REPO}/{WEIGHTS}")
    again = inst.lmforge("pull", PULLED)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == lines[-1]
    assert hub.bytes_served(f"{REPO}/{WEIGHTS}") == served  # in the store already: not fetched again


def test_ollamas_pull_shows_each_files_progress_by_digest_and_ends_in_success(
        inst: Instance, hub: LocalHub, models_dir: Path) -> None:
    paced, weights = "tester/Paced-GGUF", models_dir / "embed.gguf"
    hub.add_repo(paced, {"paced-Q4_K_M.gguf": weights})
    pause = hub.pause_at(f"{paced}/paced-Q4_K_M.gguf", 200 * 1024)  # held there until its progress was reported
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ndjson, inst, {"model": f"{paced}:Q4_K_M"})
        try:
            assert pause.reached.wait(60), "the download never started"
            wait_until(lambda: any(p["model"] == f"{paced}:Q4_K_M" and p["files"] for p in pulls(inst)),
                       timeout=30, what="a progress report with the file")
        finally:
            pause.set()
        code, lines = asked.result(120)
    assert code == 200, lines
    assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    files = [line for line in lines if line.get("digest")]
    assert files and all(line["status"] == f"pulling {line['digest'][7:19]}" for line in files)
    assert {line["total"] for line in files} == {weights.stat().st_size}
    assert all(0 <= line["completed"] <= line["total"] for line in files)
    assert files[-1]["completed"] == files[-1]["total"]  # the bar ends full
    assert [line["status"] for line in lines[-3:-1]] == ["verifying sha256 digest", "writing manifest"]
    code, lines = ndjson(inst, {"name": f"{paced}:Q4_K_M", "stream": False, "insecure": True})
    assert (code, lines) == (200, [{"status": "success"}])


def test_native_pull_streams_download_events_then_done_with_the_model(inst: Instance) -> None:
    events = pull_events(inst, {"model": PULLED})
    assert {name for name, _ in events[:-1]} == {"download"}
    name, data = events[-1]
    assert name == "done" and data["model"]["repo"] == REPO and WEIGHTS in data["model"]["files"]


@pytest.mark.parametrize("keep", [False, True])
def test_a_client_that_leaves_cancels_the_pull_it_alone_followed_unless_it_asked_to_keep_it(
        inst: Instance, hub: LocalHub, models_dir: Path, keep: bool) -> None:
    repo = f"tester/Left-{keep}-GGUF"
    hub.add_repo(repo, {"left-Q4_K_M.gguf": models_dir / ("rerank.gguf" if keep else "broken.gguf")})
    pause = hub.pause_at(f"{repo}/left-Q4_K_M.gguf", 100 * 1024)  # held until the client has gone
    model = f"{repo}:Q4_K_M"
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=30)
    try:
        conn.request("POST", "/lf/model/pull", body=json.dumps({"model": model, "keep": keep}),
                      headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"event: download")
        assert pause.reached.wait(60), "the download never started"
        assert next(p["followers"] for p in pulls(inst) if p["model"] == model) == (0 if keep else 1)
    finally:
        conn.close()  # the client goes away mid-pull
    try:
        if not keep:
            wait_until(lambda: next(p["state"] for p in pulls(inst) if p["model"] == model) == "cancelled",
                       timeout=30, what="the pull nobody follows to be cancelled")
            parts = list(Paths(inst.home).downloads.rglob("left-Q4_K_M.gguf*.part"))
            assert parts, "a cancelled pull keeps its .part for the next pull to resume"
    finally:
        pause.set()
    if keep:  # nobody follows it, and it goes on to the end
        wait_until(lambda: next(p["state"] for p in pulls(inst) if p["model"] == model) == "done",
                   timeout=60, what="the kept pull to finish")


def test_one_of_two_followers_leaving_leaves_the_pull_to_the_other(inst: Instance, hub: LocalHub,
                                                                   models_dir: Path) -> None:
    repo = "tester/Twice-GGUF"
    hub.add_repo(repo, {"twice-Q4_K_M.gguf": models_dir / "embed.gguf"})  # a model: the pull ends indexed
    pause = hub.pause_at(f"{repo}/twice-Q4_K_M.gguf", 200 * 1024)  # held until the CLI has left
    model = f"{repo}:Q4_K_M"
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
    cli = None
    try:
        conn.request("POST", "/lf/model/pull", body=json.dumps({"model": model}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"event: download")
        assert pause.reached.wait(60), "the download never started"
        cli = subprocess.Popen([sys.executable, "-m", "gateway.cli", "pull", "--json", model], env=inst.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cli.stdout is not None
        assert json.loads(cli.stdout.readline())["followers"] == 2  # the CLI has seen the other follower
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 130, (out, err)
        assert "stopped; the pull goes on for 1 other client" in err and "cancelled" not in err
        wait_until(lambda: next(p["followers"] for p in pulls(inst) if p["model"] == model) == 1,
                   timeout=30, what="the CLI's leave to be counted")
        assert next(p["state"] for p in pulls(inst) if p["model"] == model) == "downloading"
        pause.set()
        lines = resp.read().decode().splitlines()
        assert [line for line in lines if line.startswith("event:")][-1] == "event: done", lines[-4:]
    finally:
        pause.set()
        conn.close()
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()


def test_a_failed_pull_is_an_error_line_in_ndjson_and_a_response_error_in_the_ollama_client(inst: Instance) -> None:
    missing = "tester/Nowhere-GGUF:Q4_K_M"
    code, lines = ndjson(inst, {"model": missing})
    assert code == 200 and lines[0] == {"status": "pulling manifest"}, lines
    assert set(lines[-1]) == {"error"} and "Nowhere-GGUF" in lines[-1]["error"], lines
    client = ollama.Client(host=inst.url)
    with pytest.raises(ollama.ResponseError) as raised:
        client.pull(missing)
    assert raised.value.status_code == 404 and "Nowhere-GGUF" in raised.value.error
    with pytest.raises(ollama.ResponseError, match="Nowhere-GGUF"):
        for _ in client.pull(missing, stream=True):
            pass


def test_a_short_name_loads_unloads_and_deletes_the_model_it_names(inst: Instance) -> None:
    loaded = inst.lmforge("load", "qwen3:0.6b")
    assert loaded.returncode == 0 and f"{ALIASED} is ready" in loaded.stdout, loaded.stderr
    unloaded = inst.lmforge("unload", "qwen3:0.6b")
    assert unloaded.returncode == 0 and f"unloading {ALIASED}" in unloaded.stdout, unloaded.stderr
    pulled = inst.lmforge("pull", SHORT)
    assert pulled.returncode == 0, pulled.stderr
    name = pulled.stdout.strip().splitlines()[-1].removeprefix("done: ").split(" (")[0]
    assert name != SHORT and name.startswith(SHORT)  # installed under its canonical name
    gone = inst.lmforge("rm", SHORT)
    assert gone.returncode == 0 and f"deleted {name}" in gone.stdout, gone.stderr
    assert name not in [m["name"] for m in inst.get("/lf/model/list")[1]["models"]]  # type: ignore[index]


def test_cli_pull_exit_codes_for_refusals(inst: Instance) -> None:
    unknown = inst.lmforge("pull", "qwen3:0.6bb")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    assert "did you mean" in unknown.stderr and "qwen3:0.6b:4bit" in unknown.stderr
    missing = inst.lmforge("pull")
    assert missing.returncode == 2 and "error:" in missing.stderr


def test_ctrl_c_cancels_the_pull_and_says_how_to_resume(inst: Instance, hub: LocalHub) -> None:
    slow = "tester/Slow-GGUF"
    hub.add_repo(slow, {"slow-Q4_K_M.gguf": bytes(range(256)) * 4096})
    pause = hub.pause_at(f"{slow}/slow-Q4_K_M.gguf", 256 * 1024)  # held until the pull has been cancelled
    cli = subprocess.Popen([sys.executable, "-m", "gateway.cli", "pull", f"{slow}:Q4_K_M"], env=inst.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert pause.reached.wait(60), "the download never started"
        wait_until(lambda: any(p["model"] == f"{slow}:Q4_K_M" and p["state"] == "downloading" for p in pulls(inst)),
                   timeout=30, what="the pull to be downloading")
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 130, (out, err)
        assert "cancelled; run the same pull to resume" in err
        wait_until(lambda: next(p["state"] for p in pulls(inst) if p["model"] == f"{slow}:Q4_K_M") == "cancelled",
                   timeout=30, what="the pull to be cancelled")
    finally:
        pause.set()
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_cli_catalog_json_is_the_listing(inst: Instance) -> None:
    result = inst.lmforge("catalog", "--json", "--kind", "rerank")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["budget_bytes"] > 0 and listing["models"]
    assert {m["kind"] for m in listing["models"]} == {"rerank"}
    table = inst.lmforge("catalog")
    assert table.returncode == 0 and "memory budget" in table.stdout and ALIASED in table.stdout


def test_cli_rm_deletes_a_model_and_says_so_when_it_is_not_installed(inst: Instance, models_dir: Path) -> None:
    assert inst.lmforge("import", str(models_dir / "chat.gguf"), "--name", "doomed:1b").returncode == 0
    gone = inst.lmforge("rm", "doomed:1b")
    assert gone.returncode == 0 and "deleted doomed:1b" in gone.stdout, gone.stderr
    assert "doomed:1b" not in [m["name"] for m in inst.get("/lf/model/list")[1]["models"]]  # type: ignore[index]
    again = inst.lmforge("rm", "doomed:1b")
    assert again.returncode == 1 and "model doomed:1b is not installed" in again.stderr


def test_without_a_running_lmforge_rm_and_catalog_work_on_the_home_itself(
        make_instance, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    idle = make_instance(models={"idle:1b": models_dir / "chat.gguf",  # never started: nothing answers its port
                                 ALIASED: models_dir / "chat.gguf"})
    listing = idle.lmforge("catalog", "--json")
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["budget_bytes"] == 0  # no manager: the budget is unknown, so is what fits
    assert "memory budget unknown" in idle.lmforge("catalog").stdout
    gone = idle.lmforge("rm", "idle:1b")
    assert gone.returncode == 0 and "deleted idle:1b" in gone.stdout, gone.stderr
    again = idle.lmforge("rm", "idle:1b")
    assert again.returncode == 1 and "model idle:1b is not installed" in again.stderr
    short = idle.lmforge("rm", "qwen3:0.6b")
    assert short.returncode == 0 and f"deleted {ALIASED}" in short.stdout, short.stderr
