"""Memory probe: cgroup v1/v2 parsing, clamping, and reading a recorded cgroup tree."""

from __future__ import annotations

from pathlib import Path

from prober.probes.memory import (
    CgroupMemory,
    cgroup_paths,
    clamp,
    parse_limit,
    parse_stat,
    read_cgroup_memory,
    read_memory,
)

GiB = 1 << 30

V2_SELF = "0::/system.slice/docker-abc.scope\n"
V1_SELF = (
    "12:pids:/docker/abc\n"
    "4:memory:/docker/abc\n"
    "3:cpu,cpuacct:/docker/abc\n"
    "1:name=systemd:/docker/abc\n"
    "0::/\n"
)


def _write(path: Path, **files: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("__", ".")).write_text(text)


def test_max_means_no_limit():
    assert parse_limit("max\n") is None


def test_v1_near_2_pow_63_means_no_limit():
    assert parse_limit("9223372036854771712\n") is None


def test_numeric_limit_is_bytes():
    assert parse_limit("4294967296\n") == 4 * GiB


def test_memory_stat_lines_become_a_dict():
    stats = parse_stat("anon 100\nfile 2000\ninactive_file 1500\n")
    assert stats == {"anon": 100, "file": 2000, "inactive_file": 1500}


def test_cgroup_paths_v2_only():
    assert cgroup_paths(V2_SELF) == ("/system.slice/docker-abc.scope", None)


def test_cgroup_paths_v1_memory_controller_and_empty_v2():
    assert cgroup_paths(V1_SELF) == ("/", "/docker/abc")


def test_cgroup_paths_memory_among_joined_controllers():
    assert cgroup_paths("5:cpuset,memory:/lxc/box\n") == (None, "/lxc/box")


def test_clamp_without_cgroup_changes_nothing():
    assert clamp(64 * GiB, 40 * GiB, None) == (64 * GiB, 40 * GiB)


def test_clamp_lowers_total_and_available_to_the_limit():
    cgroup = CgroupMemory(limit=8 * GiB, headroom=6 * GiB)
    assert clamp(64 * GiB, 40 * GiB, cgroup) == (8 * GiB, 6 * GiB)


def test_clamp_keeps_host_available_when_it_is_the_tighter_figure():
    cgroup = CgroupMemory(limit=32 * GiB, headroom=30 * GiB)
    assert clamp(64 * GiB, 5 * GiB, cgroup) == (32 * GiB, 5 * GiB)


def test_v2_container_limit_counts_inactive_cache_as_available(tmp_path):
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/\n")
    _write(
        tmp_path / "fs",
        memory__max=f"{4 * GiB}\n",
        memory__current=f"{3 * GiB}\n",
        memory__stat=f"anon {2 * GiB}\ninactive_file {1 * GiB}\n",
    )
    found = read_cgroup_memory(tmp_path / "fs", self_cgroup)
    assert found == CgroupMemory(limit=4 * GiB, headroom=2 * GiB)


def test_v2_limit_on_an_ancestor_binds_the_child(tmp_path):
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/user.slice/app.scope\n")
    root = tmp_path / "fs"
    _write(root / "user.slice", memory__max=f"{2 * GiB}\n", memory__current=f"{1 * GiB}\n")
    _write(root / "user.slice" / "app.scope", memory__max="max\n", memory__current="1000\n")
    found = read_cgroup_memory(root, self_cgroup)
    assert found == CgroupMemory(limit=2 * GiB, headroom=1 * GiB)


def test_v2_tightest_limit_and_least_headroom_win(tmp_path):
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/a/b\n")
    root = tmp_path / "fs"
    _write(root / "a", memory__max=f"{10 * GiB}\n", memory__current=f"{9 * GiB}\n")
    _write(root / "a" / "b", memory__max=f"{4 * GiB}\n", memory__current=f"{1 * GiB}\n")
    assert read_cgroup_memory(root, self_cgroup) == CgroupMemory(limit=4 * GiB, headroom=1 * GiB)


def test_v2_unlimited_everywhere_is_no_limit(tmp_path):
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/a\n")
    _write(tmp_path / "fs" / "a", memory__max="max\n", memory__current="123\n")
    assert read_cgroup_memory(tmp_path / "fs", self_cgroup) is None


def test_v1_container_without_cgroup_namespace_reads_the_mount_root(tmp_path):
    # Inside the container /proc/self/cgroup names the host path, which is not mounted.
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(V1_SELF)
    _write(
        tmp_path / "fs" / "memory",
        memory__limit_in_bytes=f"{6 * GiB}\n",
        memory__usage_in_bytes=f"{5 * GiB}\n",
        memory__stat=f"inactive_file 0\ntotal_inactive_file {2 * GiB}\n",
    )
    found = read_cgroup_memory(tmp_path / "fs", self_cgroup)
    assert found == CgroupMemory(limit=6 * GiB, headroom=3 * GiB)


def test_usage_above_the_limit_leaves_no_headroom(tmp_path):
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/\n")
    _write(tmp_path / "fs", memory__max="1000\n", memory__current="5000\n")
    assert read_cgroup_memory(tmp_path / "fs", self_cgroup) == CgroupMemory(limit=1000, headroom=0)


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert read_cgroup_memory(tmp_path / "fs", tmp_path / "missing") is None


def test_read_memory_on_this_machine_is_sane():
    total, available = read_memory()
    assert total > 0
    assert 0 < available <= total
