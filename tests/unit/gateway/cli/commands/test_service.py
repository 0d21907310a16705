"""What `lmforge status` prints of the cores budget (/lf/status `cpu`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.cli.commands.service import _print_cpu
from gateway.cli.terminal import Terminal

PLAN = {"cores": 2, "physical_cores": 2, "affinity": 2, "quota": None, "limited_by": "physical cores"}
CPU = {"cores": 2, "policy": "auto", "mode": "exclusive", "at_once": 1, "threads": 2, "busy_threads": 2,
       "busy_threads_peak": 2, "fair_share_s": 1.0, "waiting": [], "plan": PLAN}


def printed(capsys: pytest.CaptureFixture[str], cpu: dict | None) -> list[str]:
    _print_cpu(SimpleNamespace(term=Terminal()), cpu)  # type: ignore[arg-type]
    return capsys.readouterr().out.splitlines()


def test_the_plan_the_policy_and_the_threads_held_fit_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, CPU) == ["CPU: 2 cores (physical cores; no quota) · policy auto → exclusive, 1 engine at "
                                    "once, 2 threads each · busy 2/2 threads (peak 2)"]


def test_models_waiting_for_cores_follow_first_in_line_first(capsys: pytest.CaptureFixture[str]) -> None:
    cpu = {**CPU, "policy": "shared", "mode": "shared", "at_once": 2, "threads": 1, "waiting": ["b:chat", "c:chat"],
           "plan": {**PLAN, "cores": 1, "quota": 1.5, "limited_by": "cgroup quota"}, "cores": 1}
    first, second = printed(capsys, cpu)
    assert first.startswith("CPU: 1 core (cgroup quota; quota 1.5 cores) · policy shared → shared, 2 engines")
    assert second == "  waiting for cores: b:chat, c:chat (each gets them within 1s plus a request)"


def test_a_gpu_host_and_manager_without_a_plan_say_so_and_an_old_one_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, {**CPU, "mode": "gpu"}) == ["CPU: 2 cores (physical cores; no quota) · engines run on the "
                                                       "GPU: cores not budgeted"]
    assert printed(capsys, None) == []
    assert printed(capsys, {**CPU, "plan": None})[0].startswith("CPU: 2 cores (no CPU plan from the prober")
