"""CPU plan: cgroup quota parsing and walk, sysfs topology counting, the plan, and a `taskset` run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from manager.protocol import CpuPlan, HardwareSnapshot
from prober.probes.cpu_plan import (
    cpu_plan,
    parse_cfs,
    parse_cpu_list,
    parse_cpu_max,
    physical_cores_of,
    read_cgroup_quota,
    read_cpu_plan,
)

ROOT = Path(__file__).parents[4]


def _write(path: Path, **files: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("__", ".")).write_text(text)


def _self_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "self_cgroup"
    path.write_text(text)
    return path


def _topology(root: Path, cores: dict[int, tuple[int, int]], siblings: bool = True) -> Path:
    """A sysfs cpu tree: `cores` maps each CPU to its (package, core_id)."""
    for cpu, (package, core) in cores.items():
        files = {"physical_package_id": f"{package}\n", "core_id": f"{core}\n"}
        if siblings:
            mates = sorted(n for n, where in cores.items() if where == (package, core))
            files["thread_siblings_list"] = ",".join(map(str, mates)) + "\n"
        _write(root / f"cpu{cpu}" / "topology", **files)
    return root


# Two hyperthreaded cores numbered as Linux numbers them: siblings are N and N+2.
HT_2_CORES = {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}


@pytest.mark.parametrize(
    ("text", "cores"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("200000\n", 2.0),
     ("50000 100000\n", 0.5), ("garbage\n", None), ("abc 100000\n", None), ("", None)],
)  # fmt: skip
def test_cpu_max_is_read_as_cores(text, cores):
    assert parse_cpu_max(text) == cores


def test_v1_cfs_quota_minus_one_means_no_quota():
    assert parse_cfs("-1\n", "100000\n") is None


def test_v1_cfs_quota_over_period_is_cores():
    assert parse_cfs("250000\n", "100000\n") == 2.5


def test_v1_cfs_quota_without_a_period_file_uses_the_default_period():
    assert parse_cfs("50000\n", None) == 0.5


def test_cpu_list_ranges_and_singles():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}


def test_no_quota_and_the_whole_machine_is_limited_by_physical_cores():
    plan = cpu_plan(8, 16, None, logical_cpus=16)
    assert plan == CpuPlan(cores=8, physical_cores=8, affinity=16, limited_by="physical cores")


def test_fractional_quota_is_rounded_down():
    plan = cpu_plan(4, 8, 1.5, logical_cpus=8)
    assert (plan.cores, plan.quota, plan.limited_by) == (1, 1.5, "cgroup quota")


def test_quota_below_one_core_still_leaves_one():
    plan = cpu_plan(4, 4, 0.3, logical_cpus=4)
    assert (plan.cores, plan.limited_by) == (1, "cgroup quota")


def test_quota_bigger_than_the_cores_cuts_nothing():
    plan = cpu_plan(4, 4, 6.0, logical_cpus=4)
    assert (plan.cores, plan.quota, plan.limited_by) == (4, 6.0, "physical cores")


def test_quota_equal_to_the_cores_cuts_nothing():
    assert cpu_plan(2, 2, 2.0, logical_cpus=2).limited_by == "physical cores"


def test_narrow_affinity_is_what_limits():
    plan = cpu_plan(2, 2, None, logical_cpus=64)
    assert (plan.cores, plan.affinity, plan.limited_by) == (2, 2, "affinity")


def test_quota_under_a_narrow_affinity_is_what_limits():
    plan = cpu_plan(4, 4, 2.0, logical_cpus=64)
    assert (plan.cores, plan.limited_by) == (2, "cgroup quota")


def test_v2_quota_on_a_parent_binds_the_child(tmp_path):
    self_cgroup = _self_cgroup(tmp_path, "0::/user.slice/app.scope\n")
    root = tmp_path / "fs"
    _write(root / "user.slice", cpu__max="150000 100000\n")
    _write(root / "user.slice" / "app.scope", cpu__max="max 100000\n")
    assert read_cgroup_quota(root, self_cgroup) == 1.5


def test_v2_tightest_quota_across_levels_wins(tmp_path):
    self_cgroup = _self_cgroup(tmp_path, "0::/a/b\n")
    root = tmp_path / "fs"
    _write(root / "a", cpu__max="400000 100000\n")
    _write(root / "a" / "b", cpu__max="100000 50000\n")
    assert read_cgroup_quota(root, self_cgroup) == 2.0


def test_v2_unlimited_everywhere_is_no_quota(tmp_path):
    self_cgroup = _self_cgroup(tmp_path, "0::/a\n")
    _write(tmp_path / "fs" / "a", cpu__max="max 100000\n")
    assert read_cgroup_quota(tmp_path / "fs", self_cgroup) is None


def test_v1_joined_cpu_cpuacct_hierarchy_is_read(tmp_path):
    self_cgroup = _self_cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    mount = tmp_path / "fs" / "cpu,cpuacct"
    _write(mount, cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    _write(mount / "docker", cpu__cfs_quota_us="300000\n", cpu__cfs_period_us="100000\n")
    _write(mount / "docker" / "abc", cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    assert read_cgroup_quota(tmp_path / "fs", self_cgroup) == 3.0


def test_v1_container_without_cgroup_namespace_reads_the_mount_root(tmp_path):
    # Inside the container /proc/self/cgroup names the host path, which is not mounted.
    self_cgroup = _self_cgroup(tmp_path, "3:cpu,cpuacct:/docker/abc\n")
    _write(tmp_path / "fs" / "cpu", cpu__cfs_quota_us="150000\n", cpu__cfs_period_us="100000\n")
    assert read_cgroup_quota(tmp_path / "fs", self_cgroup) == 1.5


def test_v1_split_cpu_controller_without_quota_is_no_quota(tmp_path):
    # As on the machine these tests were written on: 2:cpuacct:/ and 1:cpu:/, no quota.
    self_cgroup = _self_cgroup(tmp_path, "4:memory:/box\n2:cpuacct:/\n1:cpu:/\n0::/\n")
    _write(tmp_path / "fs" / "cpu", cpu__cfs_quota_us="-1\n", cpu__cfs_period_us="100000\n")
    _write(tmp_path / "fs" / "cpuacct", cpuacct__usage="1\n")
    assert read_cgroup_quota(tmp_path / "fs", self_cgroup) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert read_cgroup_quota(tmp_path / "fs", tmp_path / "missing") is None


def test_hyperthread_siblings_count_as_one_core(tmp_path):
    topology = _topology(tmp_path, HT_2_CORES)
    assert physical_cores_of({0, 1, 2, 3}, topology) == 2


def test_affinity_on_two_siblings_is_one_core(tmp_path):
    topology = _topology(tmp_path, HT_2_CORES)
    assert physical_cores_of({0, 2}, topology) == 1


def test_affinity_on_one_thread_of_each_core_is_two_cores(tmp_path):
    topology = _topology(tmp_path, HT_2_CORES)
    assert physical_cores_of({0, 1}, topology) == 2


def test_same_core_id_in_two_packages_is_two_cores(tmp_path):
    topology = _topology(tmp_path, {0: (0, 0), 1: (1, 0)})
    assert physical_cores_of({0, 1}, topology) == 2


def test_sibling_lists_name_the_core_where_core_id_is_missing(tmp_path):
    topology = _topology(tmp_path, HT_2_CORES)
    for cpu in HT_2_CORES:
        (topology / f"cpu{cpu}" / "topology" / "core_id").unlink()
    assert physical_cores_of({0, 1, 2, 3}, topology) == 2


def test_unreadable_topology_is_unknown(tmp_path):
    assert physical_cores_of({0, 1}, tmp_path / "missing") is None


def test_plan_reads_topology_and_quota_from_the_given_trees(tmp_path):
    # Every CPU this process may use is put on one core, under a half-core quota.
    cpus = sorted(os.sched_getaffinity(0))
    topology = _topology(tmp_path / "cpu", {cpu: (0, 0) for cpu in cpus})
    self_cgroup = _self_cgroup(tmp_path, "0::/box\n")
    _write(tmp_path / "fs" / "box", cpu__max="50000 100000\n")
    plan = read_cpu_plan(tmp_path / "fs", self_cgroup, topology)
    assert (plan.cores, plan.physical_cores, plan.affinity) == (1, 1, len(cpus))
    assert (plan.quota, plan.limited_by) == (0.5, "cgroup quota")


def test_plan_of_this_machine_is_sane():
    plan = read_cpu_plan()
    assert 1 <= plan.cores <= plan.physical_cores <= plan.affinity
    assert plan.affinity == len(os.sched_getaffinity(0))
    assert plan.limited_by in ("physical cores", "affinity", "cgroup quota")


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to narrow to one")
def test_once_under_taskset_plans_one_core_limited_by_affinity(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    env = {**os.environ, "LMFORGE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "prober", "--once"],
        capture_output=True, env=env, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    plan = msgspec.json.decode(done.stdout, type=HardwareSnapshot).cpu_plan
    assert plan is not None
    assert (plan.cores, plan.affinity, plan.limited_by) == (1, 1, "affinity")
