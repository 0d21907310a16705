"""GET /lf/engines through a real instance: the engine each installed model gets for each kind it serves and why
(the manager's own choice: a load reports the same), each engine's install, the host's default, and who may ask.

A caller off this machine is played through a trusted proxy on loopback (X-Forwarded-For), as no second machine
is needed to see what the auth middleware decides for an address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, clean_up, prepare_instance, running_instance, wait_until

ADMIN, INFERENCE = "admin-key-0123456789", "inference-key-0123456789"
LAN_CALLER, STRANGER = "198.51.100.9", "203.0.113.7"  # a trusted network's address, and one outside every network
CONFIG = f"""
api_key = "{ADMIN}"
trusted_proxies = ["127.0.0.1/32"]
trusted_networks = ["127.0.0.0/8", "::1/128", "198.51.100.0/24"]
[[api_keys]]
key = "{INFERENCE}"
scope = "inference"
[engines]
"tiny:mlx" = "mlx"
"""
GGUF_REASON = "GGUF weights: llama.cpp serves them on every host"
MLX_REASON = "config sets engine 'mlx' for it, which cannot serve gguf weights as {}"


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    models = {"tiny:chat": models_dir / "chat.gguf", "tiny:embed": models_dir / "embed.gguf",
              "tiny:mlx": models_dir / "chat.gguf"}
    with running_instance(tmp_path_factory.mktemp("engines") / "home", llama_server, models, CONFIG) as inst:
        wait_until(lambda: inst.get("/lf/hardware")[1], timeout=20, what="the prober's first snapshot")
        yield inst


def engines(inst: Instance) -> dict:
    code, body = inst.get("/lf/engines")
    assert code == 200, body
    return body  # type: ignore[return-value]


def by_model(report: dict) -> dict[str, dict]:
    return {m["model"]: m for m in report["models"]}


def test_each_model_and_kind_gets_its_engine_and_reason(inst: Instance) -> None:
    models = by_model(engines(inst))
    assert set(models) == {"tiny:chat", "tiny:embed", "tiny:mlx"}
    llama = {"engine": "llama.cpp", "reason": GGUF_REASON, "fallbacks": [], "installed": True}
    # a chat GGUF serves embeddings too (llama-server pools its output); the embedding model serves those only
    assert models["tiny:chat"]["kinds"] == {"chat": llama, "embed": llama} and models["tiny:chat"]["override"] is None
    assert models["tiny:embed"]["kinds"] == {"embed": llama}
    assert models["tiny:mlx"]["override"] == "mlx" and models["tiny:mlx"]["format"] == "gguf"
    refused = {kind: {"engine": None, "reason": MLX_REASON.format(kind), "fallbacks": [], "installed": None}
               for kind in ("chat", "embed")}
    assert models["tiny:mlx"]["kinds"] == refused


def test_the_manager_loads_by_the_same_choice(inst: Instance) -> None:
    code, body = inst.post("/lf/model/switch", {"model": "tiny:chat"})
    assert code == 200, body
    slot = body["slot"]  # type: ignore[index]
    assert (slot["engine"], slot["engine_reason"]) == ("llama.cpp", GGUF_REASON)
    code, body = inst.post("/lf/model/switch", {"model": "tiny:mlx"})
    assert code == 400 and MLX_REASON.format("chat") in body["error"]["message"], body  # type: ignore[index]


def test_engines_say_what_is_installed_where_and_how_to_install_the_rest(inst: Instance, llama_server: str) -> None:
    report = engines(inst)
    rows = {row["name"]: row for row in report["engines"]}
    assert list(rows) == ["llama.cpp", "mlx", "sglang", "remote"]
    llama = rows["llama.cpp"]
    assert (llama["installed"], llama["path"], llama["status"], llama["source"], llama["configured"]) == (
        True, llama_server, "installed", "LMFORGE_LLAMA_SERVER", True)
    assert llama["formats"] == ["gguf"] and llama["kinds"] == ["chat", "embed", "rerank"]
    for name in ("mlx", "sglang"):
        row = rows[name]
        assert row["installed"] is False and row["path"] is None and row["versions"] == {}
        assert row["install"] == f"lmforge engine install {name}" and row["status"] == "not installed"
    assert (rows["remote"]["status"], rows["remote"]["install"]) == ("remote", None)
    host = report["host"]
    assert host["hardware"] is True and host["engine"] == "llama.cpp"  # no GPU, not a Mac: this test machine
    assert host["llama_cpp_backend"] == "cpu" and "llama.cpp" in host["reason"]


def test_it_is_an_admin_route(inst: Instance) -> None:
    def call(path: str, caller: str, key: str = "") -> int:
        headers = {"X-Forwarded-For": caller, **({"Authorization": f"Bearer {key}"} if key else {})}
        return inst.request("GET", path, headers=headers)[0]

    assert call("/lf/hardware", LAN_CALLER) == 200  # a trusted network may watch...
    assert call("/lf/engines", LAN_CALLER) == 401  # ...but not see where engines are installed without a key
    assert call("/lf/engines", STRANGER) == 401
    assert call("/lf/engines", LAN_CALLER, INFERENCE) == 403
    assert call("/lf/engines", STRANGER, ADMIN) == 200
    assert inst.get("/lf/engines")[0] == 200  # this machine needs no key


def test_without_a_hardware_reading_or_an_engine_it_says_so_and_still_chooses(
        tmp_path: Path, llama_server: str, models_dir: Path) -> None:
    inst = prepare_instance(tmp_path / "home", llama_server, {"tiny:chat": models_dir / "chat.gguf"})
    del inst.env["LMFORGE_LLAMA_SERVER"]  # and this home has built none
    try:
        inst.start("manager", "downloader", "gateway")  # no prober: no hardware reading, ever
        report = engines(inst)
    finally:
        clean_up(inst)
    assert report["host"]["hardware"] is False and report["host"]["engine"] is None
    assert "has not reported" in report["host"]["reason"]
    assert by_model(report)["tiny:chat"]["kinds"]["chat"] == {"engine": "llama.cpp", "reason": GGUF_REASON,
                                                             "fallbacks": [], "installed": False}
    llama = next(row for row in report["engines"] if row["name"] == "llama.cpp")
    assert (llama["installed"], llama["status"], llama["install"]) == (False, "not installed",
                                                                       "lmforge engine install llama.cpp")
