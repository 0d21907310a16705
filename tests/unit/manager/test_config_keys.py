"""The one table of live keys: who takes which key from a changed config.toml, and nothing else."""

from __future__ import annotations

from manager.config import Settings
from manager.config_keys import GUARDED, LIVE, Applies, Guard, changed, flatten, keys, take
from manager.live_config import LIVE_KEYS, apply_live


def test_keys_are_fields_with_tables_dotted_and_the_table_names_only_real_ones() -> None:
    every = keys()
    assert every[:2] == ["host", "port"] and "llama_cpp.ctx_size" in every and "llama_cpp" not in every
    assert set(LIVE) <= set(every) and set(GUARDED) <= set(every)
    assert flatten(Settings())["api_keys"] == []  # a list of tables is one key


def test_each_process_takes_its_own_keys_only() -> None:
    running = Settings()
    read = Settings(keep_alive="1m", trusted_networks=["10.0.0.0/8"], load_timeout_s=60.0, port=12000,
                    embed_batch_size=8)
    manager, manager_keys = take(running, read, Applies.MANAGER)
    gateway, gateway_keys = take(running, read, Applies.GATEWAY)
    assert manager_keys == ["keep_alive", "load_timeout_s"] and manager.trusted_networks == running.trusted_networks
    assert gateway_keys == ["trusted_networks", "load_timeout_s", "embed_batch_size"] and gateway.keep_alive == "5m"
    assert manager.port == gateway.port == running.port  # port needs a restart: nobody takes it
    assert take(running, running, Applies.MANAGER) == (running, [])


def test_the_manager_applies_what_the_table_gives_it() -> None:
    assert LIVE_KEYS == tuple(key for key, where in LIVE.items() if Applies.MANAGER in where)
    applied, lines = apply_live(Settings(), Settings(max_loaded_models=2, allowed_hosts=["box.lan"]))
    assert applied.max_loaded_models == 2 and applied.allowed_hosts == []
    assert lines == ["max_loaded_models: 0 → 2"]


def test_what_cannot_change_live_is_not_in_the_table() -> None:
    for key in ("host", "port", "tls_cert", "max_body_mb", "max_pulls", "auto_load", "llama_cpp.ctx_size",
                "llama_cpp.parallel", "log_max_mb"):
        assert key not in LIVE, key


def test_trust_needs_an_admin_key_and_files_and_programs_this_machine() -> None:
    assert {key for key, guard in GUARDED.items() if guard is Guard.ADMIN_KEY} == {
        "host", "api_key", "api_keys", "trusted_networks", "trusted_proxies", "allowed_hosts", "allowed_origins",
        "allow_unauthenticated", "image_allow_hosts",  # opens this machine's own network to image fetches
        "remote"}  # sends prompts and a key to another machine
    assert GUARDED["llama_cpp.server"] is GUARDED["llama_cpp.extra_args"] is Guard.LOCAL
    assert {GUARDED[f"{e}.{k}"] for e in ("mlx", "sglang") for k in ("python", "requirements", "extra_args")} == {
        Guard.LOCAL}


def test_changed_lists_keys_in_field_order() -> None:
    assert changed(Settings(), Settings(embed_batch_size=1, port=1, keep_alive=3)) == ["port", "keep_alive",
                                                                                      "embed_batch_size"]
