"""What `lmforge launch` hands each agent (pure builders), and how its command line splits at `--`."""

from __future__ import annotations

import json
import signal
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.cli.__main__ import parser
from gateway.cli.commands.launch import Target, claude_wiring, codex_wiring, opencode_wiring, run_agent

BASE = "http://127.0.0.1:40123"


@pytest.fixture
def target(tmp_path: Path) -> Target:
    # A name with ":" and a quote: both must survive TOML and JSON quoting.
    return Target(base_url=BASE, model='qwen:7b "q4"', ctx=32768, key="sekrit", config_dir=tmp_path / "launch")


def test_claude_sends_every_model_tier_to_the_loaded_model_with_a_bearer_token(target: Target) -> None:
    wiring = claude_wiring(target)
    env = wiring.env
    assert env["ANTHROPIC_BASE_URL"] == BASE  # the SDK appends /v1/messages itself
    assert env["ANTHROPIC_AUTH_TOKEN"] == "sekrit" and env["ANTHROPIC_API_KEY"] == ""
    tiers = ["ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
             "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"]
    assert {env[t] for t in tiers} == {target.model}
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "32768"
    assert wiring.args == [] and wiring.files == {}


def codex_overrides(args: list[str]) -> dict[str, object]:
    """The `-c key=value` pairs as Codex reads them: each value is TOML."""
    assert args[::2] == ["-c"] * (len(args) // 2) and len(args) % 2 == 0, args
    out: dict[str, object] = {}
    for pair in args[1::2]:
        key, _, value = pair.partition("=")
        out[key] = tomllib.loads(f"v = {value}")["v"]
    return out


def test_codex_gets_a_responses_provider_on_the_command_line(target: Target) -> None:
    wiring = codex_wiring(target)
    c = codex_overrides(wiring.args)
    assert c["model_provider"] == "lmforge" and c["model"] == target.model
    assert c["model_providers.lmforge"] == {"name": "LMForge", "base_url": f"{BASE}/v1",
                                           "env_key": "LMFORGE_API_KEY", "wire_api": "responses"}
    assert c["model_context_window"] == 32768
    assert 0 < c["model_auto_compact_token_limit"] < 32768  # type: ignore[operator]
    assert wiring.env == {"LMFORGE_API_KEY": "sekrit"} and wiring.files == {}


def test_opencode_gets_a_config_file_with_an_openai_compatible_provider(target: Target) -> None:
    wiring = opencode_wiring(target)
    (path, text), = wiring.files.items()
    assert path == target.config_dir / "opencode.json"
    assert wiring.env == {"OPENCODE_CONFIG": str(path), "LMFORGE_API_KEY": "sekrit"}
    assert wiring.args == ["--model", f"lmforge/{target.model}"]
    config = json.loads(text)
    provider = config["provider"]["lmforge"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": f"{BASE}/v1", "apiKey": "{env:LMFORGE_API_KEY}"}  # no key on disk
    assert "sekrit" not in text
    limit = provider["models"][target.model]["limit"]
    assert limit["context"] == 32768 and 0 < limit["output"] < 32768
    assert config["model"] == config["small_model"] == f"lmforge/{target.model}"


@pytest.mark.parametrize(("argv", "model", "agent_args"), [
    (["claude", "--model", "m", "--", "-p", "hi"], "m", ["-p", "hi"]),
    (["--model", "m", "claude", "--", "-p", "hi"], "m", ["-p", "hi"]),
    (["codex", "--", "exec", "--", "x"], None, ["exec", "--", "x"]),  # only the first `--` is ours
    (["opencode", "/project"], None, ["/project"]),
    (["claude", "--", "--model", "theirs"], None, ["--model", "theirs"]),
])
def test_everything_after_the_first_double_dash_goes_to_the_agent(
    argv: list[str], model: str | None, agent_args: list[str]
) -> None:
    args = parser().parse_args(["launch", *argv])
    assert (args.model, args.agent_args) == (model, agent_args)


@pytest.mark.parametrize("argv", [["cursor"], ["claude", "--ctx", "100"], ["claude", "--ctx", "lots"],
                                  ["claude", "-p"]])
def test_an_unknown_agent_or_a_bad_option_is_a_usage_error(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["launch", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_ctrl_c_is_the_agents_and_a_sigterm_to_launch_reaches_it() -> None:
    """The stand-in signals its parent (launch) itself, so nothing waits on timing."""
    interrupt = "import os, signal, sys; os.kill(os.getppid(), signal.SIGINT); sys.exit(7)"
    assert run_agent([sys.executable, "-c", interrupt], {}) == 7  # launch ignored it and passed the status on
    terminate = "import os, signal; os.kill(os.getppid(), signal.SIGTERM); signal.pause()"
    assert run_agent([sys.executable, "-c", terminate], {}) == 128 + signal.SIGTERM  # as a shell reports it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers are back
