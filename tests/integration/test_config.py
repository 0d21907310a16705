"""/lf/config and `lmforge config` on a real LMForge: secrets redacted, every change checked whole before
config.toml is written, applied live where it can be, and trust changed over HTTP with an admin key only."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.instance import Instance, wait_until

ADMIN, FILE_ADMIN, WEBUI = "admin-key-0123456789", "file-admin-key-0123456789", "webui-key-0123456789"
COMMENTED = """\
# my LMForge
keep_alive = "5m"  # as Ollama
"""
WITH_KEYS = COMMENTED + f"""\
api_key = "{FILE_ADMIN}"  # LMFORGE_API_KEY overrides it

[[api_keys]]
key = "{WEBUI}"
scope = "inference"
name = "webui"
"""
PAGE = "https://chat.example"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def patch(inst: Instance, change: object, key: str | None = None) -> tuple[int, dict]:
    code, body = inst.request("PATCH", "/lf/config", change, headers=bearer(key) if key else None)
    return code, body  # type: ignore[return-value]


def config_bytes(inst: Instance) -> bytes:
    return (inst.home / "config.toml").read_bytes()


@pytest.fixture
def keyed(make_instance) -> Instance:
    inst = make_instance(WITH_KEYS)
    inst.env["LMFORGE_API_KEY"] = ADMIN
    return inst.start()


def test_get_redacts_every_secret_and_names_what_the_environment_overrides(keyed: Instance) -> None:
    code, view = keyed.get("/lf/config")
    assert code == 200 and isinstance(view, dict), view
    assert view["path"] == str(keyed.home / "config.toml")
    config = view["config"]
    assert config["api_key"] == "***" and config["api_keys"] == [{"key": "***", "scope": "inference", "name": "webui"}]
    assert config["keep_alive"] == "5m" and config["port"] == keyed.port and config["llama_cpp"]["ctx_size"] == 8192
    assert {"port": "LMFORGE_PORT", "api_key": "LMFORGE_API_KEY"}.items() <= view["env_overrides"].items()
    assert "keep_alive" in view["live"] and "port" not in view["live"] and view["restart_required"] == []
    text = json.dumps(view)
    assert ADMIN not in text and FILE_ADMIN not in text and WEBUI not in text


def test_a_change_of_trust_needs_an_admin_key_even_from_loopback_and_then_applies_at_once(keyed: Instance) -> None:
    before = config_bytes(keyed)
    narrowed = {"trusted_networks": ["10.99.0.0/16"]}
    code, body = patch(keyed, narrowed)
    assert code == 403 and body["error"]["code"] == "admin_key_required", body
    assert "trusted_networks" in body["error"]["message"] and "no key was sent" in body["error"]["message"]
    code, body = patch(keyed, narrowed, key=WEBUI)
    assert code == 403 and "scoped to inference" in body["error"]["message"], body
    assert config_bytes(keyed) == before
    code, body = patch(keyed, narrowed, key=ADMIN)
    assert (code, body) == (200, {"changed": ["trusted_networks"], "applied": ["trusted_networks"],
                                  "restart_required": [], "overridden_by_env": []})
    # Loopback is no longer trusted: the very next requests need keys, and the inference key gets no status.
    assert keyed.get("/v1/models")[0] == 401
    assert keyed.request("GET", "/v1/models", headers=bearer(WEBUI))[0] == 200
    assert keyed.request("GET", "/lf/status", headers=bearer(WEBUI))[0] == 403
    # "***" keeps the stored key while the entry's scope changes, and the new scope holds at once.
    code, body = patch(keyed, {"api_keys": [{"key": "***", "name": "webui", "scope": "admin"}]}, key=ADMIN)
    assert (code, body["applied"]) == (200, ["api_keys"]), body
    assert keyed.request("GET", "/lf/status", headers=bearer(WEBUI))[0] == 200
    written = tomllib.loads(config_bytes(keyed).decode())
    assert written["api_keys"] == [{"key": WEBUI, "scope": "admin", "name": "webui"}]
    assert written["trusted_networks"] == ["10.99.0.0/16"] and b"# my LMForge" in config_bytes(keyed)
    # The file's api_key changes, but LMFORGE_API_KEY still decides: the report says so.
    code, body = patch(keyed, {"api_key": "another-file-key-0123456789"}, key=ADMIN)
    assert (code, body["overridden_by_env"], body["applied"]) == (200, ["api_key"], []), body
    assert keyed.request("GET", "/lf/status", headers=bearer(ADMIN))[0] == 200


def test_bad_changes_are_refused_naming_the_key_and_config_toml_stays_byte_for_byte(make_instance) -> None:
    inst = make_instance(COMMENTED).start()
    before = config_bytes(inst)
    for change, status, message in [
        ({"kep_alive": "5m"}, 400, 'unknown key "kep_alive" (did you mean "keep_alive"?)'),
        ({"llama_cpp.ctx_size": "big"}, 400, "llama_cpp.ctx_size: Expected `int`, got `str`"),
        ({"llama_cpp": {"parallel": 0}}, 400, "llama_cpp.parallel must be 1-64"),
        ({"max_queue": 5000}, 400, "max_queue must be 0-1024"),
        ({"keep_alive": "10 days"}, 400, "keep_alive '10 days' is not a duration"),
        (["keep_alive"], 400, "must be a JSON object"),
        # No admin key is configured: trust cannot change over HTTP at all.
        ({"allowed_origins": [PAGE]}, 403, "`lmforge config set` on the LMForge machine"),
    ]:
        code, body = patch(inst, change)
        assert code == status and message in body["error"]["message"], (change, body)
        assert config_bytes(inst) == before, change
    (inst.home / "config.toml").write_text("keep_alive = \n")
    code, body = patch(inst, {"keep_alive": "1m"})
    assert code == 409 and "is not valid TOML" in body["error"]["message"], body
    assert (inst.home / "config.toml").read_text() == "keep_alive = \n"


def test_keep_alive_applies_to_the_next_load_and_ctx_size_waits_for_a_restart(make_instance,
                                                                               models_dir: Path) -> None:
    inst = make_instance(COMMENTED, models={"a": models_dir / "chat.gguf"}).start()
    code, body = patch(inst, {"keep_alive": "42s"})
    assert (code, body["applied"], body["restart_required"]) == (200, ["keep_alive"], []), body
    wait_until(lambda: "keep_alive: '5m' → '42s'" in inst.log("manager"), what="the manager to apply keep_alive")
    assert inst.post("/lf/model/switch", {"model": "a"})[0] == 200
    assert inst.slot("a")["keep_alive_s"] == 42  # type: ignore[index]
    code, body = patch(inst, {"llama_cpp.ctx_size": 4096})
    assert (code, body) == (200, {"changed": ["llama_cpp.ctx_size"], "applied": [],
                                  "restart_required": ["llama_cpp.ctx_size"], "overridden_by_env": []})
    assert inst.get("/lf/config")[1]["restart_required"] == ["llama_cpp.ctx_size"]  # type: ignore[index]
    text = (inst.home / "config.toml").read_text()
    assert '# my LMForge\nkeep_alive = "42s"  # as Ollama\n' in text and "[llama_cpp]\nctx_size = 4096\n" in text


def test_the_cli_gets_and_sets_through_the_gateway_or_the_file_when_lmforge_is_not_running(make_instance) -> None:
    inst = make_instance(COMMENTED)
    done = inst.lmforge("config", "set", "max_queue", "8")
    assert done.returncode == 0 and "not running" in done.stdout, done.stderr
    assert inst.lmforge("config", "get", "max_queue").stdout == "8\n"
    inst.start()
    assert inst.lmforge("config", "get", "llama_cpp.ctx_size", "--json").stdout == "8192\n"
    done = inst.lmforge("config", "set", "keep_alive", "30s")
    assert done.returncode == 0 and "applied live: keep_alive" in done.stdout, done.stderr
    done = inst.lmforge("config", "set", "llama_cpp.ctx_size", "4096")
    assert done.returncode == 0 and "needs a restart to apply: llama_cpp.ctx_size" in done.stderr, done.stderr
    shown = tomllib.loads(inst.lmforge("config", "get").stdout)
    assert (shown["keep_alive"], shown["max_queue"], shown["port"]) == ("30s", 8, inst.port)
    failed = inst.lmforge("config", "set", "kep_alive", "1m")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and 'unknown key "kep_alive"' in failed.stderr
    # No admin key for the gateway to take a change of trust with: the owner's CLI writes the file itself,
    # and the running gateway takes it from there.
    assert inst.request("GET", "/v1/models", headers={"Origin": PAGE})[0] == 403
    done = inst.lmforge("config", "set", "allowed_origins", f'["{PAGE}"]')
    assert done.returncode == 0 and "applied live: allowed_origins" in done.stdout, done.stderr
    wait_until(lambda: inst.request("GET", "/v1/models", headers={"Origin": PAGE})[0] == 200,
               what="the gateway to take allowed_origins from the file")


EDITOR = """\
import os, pathlib, sys
draft = pathlib.Path(sys.argv[1])
draft.write_text(os.environ["PREPEND"] + draft.read_text())
"""


def test_config_edit_saves_a_valid_edit_and_refuses_an_invalid_one_without_a_terminal(make_instance,
                                                                                    tmp_path: Path) -> None:
    inst = make_instance(COMMENTED).start()
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    inst.env.pop("VISUAL", None)
    inst.env["EDITOR"] = f"{sys.executable} {script}"
    before = config_bytes(inst)
    inst.env["PREPEND"] = "max_queue = 99999\n"
    failed = inst.lmforge("config", "edit")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert "max_queue must be 0-1024" in failed.stderr and config_bytes(inst) == before
    assert inst.request("GET", "/v1/models", headers={"Host": "box.example"})[0] == 403
    inst.env["PREPEND"] = 'max_queue = 9\nallowed_hosts = ["box.example"]\n'
    done = inst.lmforge("config", "edit")
    assert done.returncode == 0 and "applied live: allowed_hosts, max_queue" in done.stdout, done.stderr
    assert config_bytes(inst).endswith(before)  # the rest of the file, comments included, as it was
    wait_until(lambda: inst.request("GET", "/v1/models", headers={"Host": "box.example"})[0] == 200,
               what="the gateway to take allowed_hosts from the edited file")


FIXER = """\
import pathlib, sys
pathlib.Path(sys.argv[1]).write_text("max_queue = 9\\n")
"""


def test_config_edit_repairs_a_file_that_no_other_command_can_read(make_instance, tmp_path: Path) -> None:
    inst = make_instance('max_queue = "lots"\n')  # not started: nothing could start with this file
    script = tmp_path / "fixer.py"
    script.write_text(FIXER)
    inst.env.pop("VISUAL", None)
    inst.env["EDITOR"] = f"{sys.executable} {script}"
    broken = inst.lmforge("list")
    assert broken.returncode == 1 and "max_queue" in broken.stderr
    fixed = inst.lmforge("config", "edit")
    assert fixed.returncode == 0, fixed.stderr
    assert config_bytes(inst) == b"max_queue = 9\n"
    assert inst.lmforge("config", "get", "max_queue").stdout.strip() == "9"
