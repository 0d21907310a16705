"""`lmforge launch` against a running LMForge, with a stand-in program in each agent's place.

Each stand-in records the argv and environment it was started with, then calls the API the way its
agent does, using only what it was given (the official `anthropic` and `openai` clients), and exits
42 when that call succeeded: `launch` execs the agent, so its status is the agent's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.store import ModelStore
from manager.config import LlamaCppSettings, Paths, Settings
from manager.engines.llamacpp import LlamaCppAdapter
from manager.protocol import SlotKind
from tests.support.instance import Instance, free_port

AGENT_OK = 42
MiB = 1024**2
TRAINED_CTX = 16384  # tests/support/tiny_models.py N_CTX: caps launch's 64k default
DEFAULT_CTX = 8192  # LMForge's llama_cpp.ctx_size default
CONFIG = "[llama_cpp]\ncache_ram_mb = 0\n"  # estimates without the host prompt cache, as chat_plan() makes them

PRELUDE = """\
#!{python}
import json, os, re, sys, urllib.request
RECORD, STATUS = {record!r}, {status!r}
PREFIXES = ("ANTHROPIC_", "CLAUDE_", "OPENCODE_", "LMFORGE_API_KEY")
TOOL_SCHEMA = {{"type": "object", "properties": {{"command": {{"type": "string"}}}}, "required": ["command"]}}
"""

CLOSING = """
record = {"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith(PREFIXES)}}
with urllib.request.urlopen(STATUS) as resp:
    record["slots"] = json.load(resp)["slots"]  # while the agent runs
try:
    record["api"] = call()
except Exception as exc:
    record["error"] = f"{type(exc).__name__}: {exc}"
with open(RECORD, "w") as f:
    json.dump(record, f)
sys.exit(3 if "error" in record else 42)
"""

# Claude Code: the Anthropic SDK configured from the environment alone, streaming, with tools
# and a cached system block.
CLAUDE = """
def call():
    import anthropic
    client = anthropic.Anthropic()
    with client.messages.stream(
        model=os.environ["ANTHROPIC_MODEL"], max_tokens=8,
        system=[{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        tools=[{"name": "Bash", "description": "Run a command", "input_schema": TOOL_SCHEMA}],
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    return {"events": events, "role": final.role, "stop_reason": final.stop_reason,
            "output_tokens": final.usage.output_tokens}
"""

# Codex: the provider from its `-c` options (TOML values), the key from the variable env_key names,
# a streamed Responses call with a function tool and store=false.
CODEX = """
def call():
    import tomllib, openai
    args, c = sys.argv[1:], {}
    for flag, pair in zip(args, args[1:]):
        if flag == "-c":
            key, _, value = pair.partition("=")
            c[key] = tomllib.loads("v = " + value)["v"]
    provider = c["model_providers." + c["model_provider"]]
    assert provider["wire_api"] == "responses"
    client = openai.OpenAI(base_url=provider["base_url"], api_key=os.environ[provider["env_key"]])
    stream = client.responses.create(
        model=c["model"], instructions="You are a coding agent.", store=False, stream=True, max_output_tokens=8,
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        tools=[{"type": "function", "name": "shell", "description": "Run a command", "parameters": TOOL_SCHEMA,
                "strict": False}],
    )
    events = [event for event in stream]
    return {"events": [e.type for e in events], "status": events[-1].response.status}
"""

# opencode: the provider from the OPENCODE_CONFIG file ({env:VAR} substituted as opencode does) and
# the model from --model provider/model; a streamed chat completion with usage, as the AI SDK asks.
OPENCODE = """
def call():
    import openai
    with open(os.environ["OPENCODE_CONFIG"]) as f:
        config = json.load(f)
    provider_id, _, model = sys.argv[sys.argv.index("--model") + 1].partition("/")
    options = config["provider"][provider_id]["options"]
    key = re.sub(r"\\{env:(\\w+)\\}", lambda m: os.environ[m.group(1)], options["apiKey"])
    client = openai.OpenAI(base_url=options["baseURL"], api_key=key)
    chunks = list(client.chat.completions.create(
        model=model, stream=True, max_tokens=8, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "hello"}],
        tools=[{"type": "function", "function": {"name": "bash", "parameters": TOOL_SCHEMA}}],
    ))
    return {"model": model, "completion_tokens": chunks[-1].usage.completion_tokens,
            "finish_reason": next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)}
"""


def write_stand_in(tmp_path: Path, body: str, url: str) -> tuple[Path, Path]:
    """(program, the record it will write)."""
    program, record = tmp_path / "agent", tmp_path / "record.json"
    program.write_text(PRELUDE.format(python=sys.executable, record=str(record), status=f"{url}/lf/status")
                       + body + CLOSING)
    program.chmod(0o755)
    return program, record


def launched(result: subprocess.CompletedProcess, record: Path) -> dict:
    """The stand-in's record, after checking that launch started it."""
    assert "Traceback" not in result.stderr, result.stderr
    assert record.exists(), f"the agent did not start: {result.stderr}"
    return json.loads(record.read_text())


def api_call(result: subprocess.CompletedProcess, data: dict) -> dict:
    """What the stand-in's API call returned, after checking it succeeded and its status came back."""
    assert "error" not in data, data["error"]
    assert result.returncode == AGENT_OK, result.stderr
    return data["api"]


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    # The embedding model comes first: the default must be the first model that can chat.
    return make_instance(CONFIG, {"a:embed": models_dir / "embed.gguf", "tiny:chat": models_dir / "chat.gguf"}).start()


def test_claude_gets_the_anthropic_api_and_the_first_chat_model_at_the_models_own_context(
    inst: Instance, tmp_path: Path
) -> None:
    agent, record = write_stand_in(tmp_path, CLAUDE, inst.url)
    result = inst.lmforge("launch", "claude", "--agent-bin", str(agent), "--", "--print", "hi")
    data = launched(result, record)
    env = data["env"]
    assert env["ANTHROPIC_BASE_URL"] == inst.url  # no /v1: the SDK adds it
    assert env["ANTHROPIC_AUTH_TOKEN"] == "lmforge" and env["ANTHROPIC_API_KEY"] == ""
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "tiny:chat"
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == str(TRAINED_CTX)
    assert data["argv"] == ["--print", "hi"]
    assert inst.slot("tiny:chat")["ctx_size"] == TRAINED_CTX  # 64k asked, capped by the model
    # Kept loaded while the agent ran (an idle spell must not bring back a smaller context), then as usual.
    (during,) = [s for s in data["slots"] if s["model"] == "tiny:chat"]
    assert during["keep_alive_s"] is None and during["expires_in_s"] is None
    assert inst.slot("tiny:chat")["keep_alive_s"] == 300  # the default "5m"
    api = api_call(result, data)
    assert api["role"] == "assistant" and api["output_tokens"] >= 1
    assert api["events"][0] == "message_start" and api["events"][-1] == "message_stop"
    assert api["stop_reason"] in ("max_tokens", "end_turn", "tool_use")


def test_codex_gets_a_responses_provider_and_the_context_asked(inst: Instance, tmp_path: Path) -> None:
    agent, record = write_stand_in(tmp_path, CODEX, inst.url)
    result = inst.lmforge("launch", "codex", "--model", "tiny:chat", "--ctx", "12288", "--agent-bin", str(agent),
                          "--", "exec", "fix the bug")
    data = launched(result, record)
    args = data["argv"]
    assert args[-2:] == ["exec", "fix the bug"]  # the user's arguments come last
    assert f'model_providers.lmforge={{name = "LMForge", base_url = "{inst.url}/v1", env_key = "LMFORGE_API_KEY", ' \
           'wire_api = "responses"}' in args
    assert "model_context_window=12288" in args
    assert data["env"]["LMFORGE_API_KEY"] == "lmforge"
    assert inst.slot("tiny:chat")["ctx_size"] == 12288
    api = api_call(result, data)
    assert api["events"][0] == "response.created"
    assert api["events"][-1] in ("response.completed", "response.incomplete")  # max_output_tokens may end it


def test_opencode_gets_a_config_file_and_a_key_from_the_environment(inst: Instance, tmp_path: Path) -> None:
    agent, record = write_stand_in(tmp_path, OPENCODE, inst.url)
    inst.env["LMFORGE_API_KEY"] = "my-key-0123456789"
    result = inst.lmforge("launch", "opencode", "--agent-bin", str(agent))
    data = launched(result, record)
    config_file = inst.home / "launch" / "opencode.json"
    assert data["env"]["OPENCODE_CONFIG"] == str(config_file) and data["env"]["LMFORGE_API_KEY"] == "my-key-0123456789"
    assert data["argv"] == ["--model", "lmforge/tiny:chat"]
    config = json.loads(config_file.read_text())
    provider = config["provider"]["lmforge"]
    assert provider["options"]["baseURL"] == f"{inst.url}/v1"
    assert provider["models"]["tiny:chat"]["limit"]["context"] == TRAINED_CTX
    assert "my-key-0123456789" not in config_file.read_text()
    api = api_call(result, data)
    assert api["completion_tokens"] >= 1 and api["finish_reason"] in ("length", "stop", "tool_calls")


def chat_plan_mib(models_dir: Path, num_ctx: int) -> float:
    """What the manager reserves for the tiny chat model with `num_ctx` asked, before measuring it."""
    settings = Settings(llama_cpp=LlamaCppSettings(cache_ram_mb=0))
    entry = ModelStore(Paths(models_dir / "probe-home-launch")).import_gguf(models_dir / "chat.gguf", "probe")
    plan = LlamaCppAdapter(settings, Paths(models_dir)).plan(entry, SlotKind.CHAT, None, 0, num_ctx=num_ctx)
    return plan.total / MiB


def test_when_the_budget_cannot_hold_the_agent_context_it_warns_and_starts_on_the_default(
    make_instance, models_dir: Path, tmp_path: Path
) -> None:
    small, large = chat_plan_mib(models_dir, 0), chat_plan_mib(models_dir, TRAINED_CTX)
    assert large - small > 2, "the test needs two plans a few MiB apart"
    budget = int((small + large) / 2)
    inst = make_instance(f"memory_budget_mb = {budget}\n{CONFIG}", {"tiny:chat": models_dir / "chat.gguf"}).start()
    agent, record = write_stand_in(tmp_path, OPENCODE, inst.url)
    result = inst.lmforge("launch", "opencode", "--agent-bin", str(agent))
    assert "memory budget cannot hold tiny:chat with a 16384-token context" in result.stderr
    data = launched(result, record)
    assert inst.slot("tiny:chat")["ctx_size"] == DEFAULT_CTX
    config = json.loads(Path(data["env"]["OPENCODE_CONFIG"]).read_text())
    assert config["provider"]["lmforge"]["models"]["tiny:chat"]["limit"]["context"] == DEFAULT_CTX  # the real window
    assert api_call(result, data)["completion_tokens"] >= 1


def test_a_model_the_budget_cannot_hold_at_all_does_not_start_the_agent(
    make_instance, models_dir: Path, tmp_path: Path
) -> None:
    inst = make_instance(f"memory_budget_mb = 1\n{CONFIG}", {"tiny:chat": models_dir / "chat.gguf"}).start()
    agent, record = write_stand_in(tmp_path, CLAUDE, inst.url)
    result = inst.lmforge("launch", "claude", "--agent-bin", str(agent))
    assert result.returncode == 1 and not record.exists()
    warning, error = result.stderr.splitlines()
    assert warning.startswith("warning: the memory budget cannot hold tiny:chat")
    assert error.startswith("error: could not load tiny:chat") and "memory_budget_mb" in error


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_an_agent_that_is_not_installed_says_how_to_install_it_and_loads_nothing(
    inst: Instance, tmp_path: Path
) -> None:
    env = dict(inst.env, PATH=str(tmp_path / "empty"), HOME=str(tmp_path))  # nor ~/.claude/local/claude
    result = run_cli(env, "launch", "claude")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert "Claude Code is not installed" in result.stderr and "npm install -g @anthropic-ai/claude-code" in result.stderr
    assert inst.status()["slots"] == []


@pytest.mark.parametrize(("model", "fragment"), [("nope", "'nope' is not installed"),
                                                 ("a:embed", "a:embed cannot chat")])
def test_a_model_an_agent_cannot_use_is_one_line(inst: Instance, tmp_path: Path, model: str, fragment: str) -> None:
    agent, record = write_stand_in(tmp_path, CLAUDE, inst.url)
    result = inst.lmforge("launch", "claude", "--model", model, "--agent-bin", str(agent))
    assert result.returncode == 1 and not record.exists()
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_without_lmforge_running_it_says_how_to_start_it(home: Path, tmp_path: Path) -> None:
    port = free_port()
    agent, record = write_stand_in(tmp_path, CLAUDE, f"http://127.0.0.1:{port}")
    env = dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(port))
    result = run_cli(env, "launch", "claude", "--agent-bin", str(agent))
    assert result.returncode == 1 and not record.exists()
    assert "LMForge is not running" in result.stderr and "lmforge start" in result.stderr
