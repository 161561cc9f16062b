"""CgroupPaths: cgroup v2 id -> path on the real cgroup2 hierarchy, and mountinfo parsing."""
import os

import pytest

from tapio.collector.enrich.cgroup_paths import CgroupPaths, find_cgroup2_mount, parse_mountinfo_line
from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def tree():
    tree = CgroupTree(require_cgroup_root())
    try:
        yield tree
    finally:
        tree.cleanup()


# -- mountinfo ------------------------------------------------------------------------------------

SYSTEMD_HOST = ("35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
                "rw,nsdelegate,memory_recursiveprot")
HYBRID_HOST = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
V1_CONTROLLER = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"
BIND_OF_A_PART = ("900 800 0:30 /kubepods.slice /host/cgroup rw,relatime master:9 - cgroup2 cgroup2 rw")
ESCAPED = r"50 24 0:30 / /mnt/my\040cgroups rw - cgroup2 cgroup2 rw"


@pytest.mark.parametrize("line,expected", [
    (SYSTEMD_HOST, ("/", "/sys/fs/cgroup", "cgroup2")),
    (HYBRID_HOST, ("/", "/sys/fs/cgroup/unified", "cgroup2")),
    (V1_CONTROLLER, ("/", "/sys/fs/cgroup/cpu", "cgroup")),
    (ESCAPED, ("/", "/mnt/my cgroups", "cgroup2")),
    ("", None),
    ("garbage without separator", None),
    ("1 2 - cgroup2", None),
])
def test_parse_mountinfo_line(line, expected):
    assert parse_mountinfo_line(line) == expected


@pytest.mark.parametrize("lines,expected", [
    ([V1_CONTROLLER, HYBRID_HOST], ("/sys/fs/cgroup/unified", "/")),
    ([SYSTEMD_HOST], ("/sys/fs/cgroup", "/")),
    ([BIND_OF_A_PART, SYSTEMD_HOST], ("/sys/fs/cgroup", "/")),   # the whole hierarchy wins
    ([BIND_OF_A_PART], ("/host/cgroup", "/kubepods.slice")),
    ([V1_CONTROLLER, "junk", ""], None),
])
def test_find_cgroup2_mount(tmp_path, lines, expected):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    assert find_cgroup2_mount(str(mountinfo)) == expected


def test_find_cgroup2_mount_without_mountinfo(tmp_path):
    assert find_cgroup2_mount(str(tmp_path / "missing")) is None


# -- the real hierarchy ---------------------------------------------------------------------------

def test_ids_are_inode_numbers_and_resolve_to_proc_cgroup_paths(tree):
    cgroup_id = tree.mkdir("system.slice/tapio-probe.service")
    process = tree.spawn_in("system.slice/tapio-probe.service")
    with open(f"/proc/{process.pid}/cgroup") as f:
        reported = [line[3:] for line in f.read().splitlines() if line.startswith("0::")]
    assert reported == [tree.path("system.slice/tapio-probe.service")]
    with CgroupPaths() as paths:   # the mount found in /proc/self/mountinfo
        assert paths.mount == tree.mount
        assert paths.path(cgroup_id) == reported[0]
        assert paths.path(os.stat(tree.mount).st_ino) == "/"
        assert paths.stats()["hits"] == 2


@pytest.mark.parametrize("use_file_handles", [False, True], ids=["walk", "file-handles"])
def test_a_cgroup_created_later_is_found(tree, use_file_handles):
    clock = FakeClock()
    with CgroupPaths(tree.mount, use_file_handles=use_file_handles, rescan_interval=1.0, clock=clock) as paths:
        cgroup_id = tree.mkdir("late/child")
        found = paths.path(cgroup_id)
        if use_file_handles:
            # One open_by_handle_at, no walk.
            assert found == tree.path("late/child")
            assert paths.stats()["rescans"] == 1 and paths.stats()["handle_lookups"] == 1
        else:
            # The walk right after start-up is rate-limited...
            assert found is None
            assert paths.stats()["rescans_rate_limited"] == 1
            # ...and allowed again once the interval has passed.
            clock.now += 1.0
            assert paths.path(cgroup_id) == tree.path("late/child")
            assert paths.stats()["rescans"] == 2
        assert paths.path(cgroup_id) == tree.path("late/child")


def test_a_burst_of_unknown_ids_costs_one_walk_per_interval(tree):
    clock = FakeClock()
    with CgroupPaths(tree.mount, use_file_handles=False, clock=clock) as paths:
        clock.now += 5
        for unknown in range(10**12, 10**12 + 50):
            assert paths.path(unknown) is None
        stats = paths.stats()
        assert stats["rescans"] == 2 and stats["rescans_rate_limited"] == 49 and stats["unresolved"] == 50


@pytest.mark.parametrize("use_file_handles", [False, True], ids=["walk", "file-handles"])
def test_a_cgroup_removed_before_it_was_seen_cannot_be_resolved(tree, use_file_handles):
    clock = FakeClock()
    with CgroupPaths(tree.mount, use_file_handles=use_file_handles, clock=clock) as paths:
        cgroup_id = tree.mkdir("short-lived")
        tree.rmdir("short-lived")
        clock.now += 10
        assert paths.path(cgroup_id) is None
        assert paths.stats()["unresolved"] == 1


def test_a_cgroup_seen_before_it_was_removed_still_resolves(tree):
    cgroup_id = tree.mkdir("gone-later")
    with CgroupPaths(tree.mount, use_file_handles=False) as paths:
        assert paths.path(cgroup_id) == tree.path("gone-later")
        tree.rmdir("gone-later")
        # Late events of the removed cgroup: ids are never reused, so the path is still right.
        assert paths.path(cgroup_id) == tree.path("gone-later")


def test_the_cache_is_bounded(tree):
    ids = [tree.mkdir(f"many/c{i}") for i in range(5)]
    with CgroupPaths(tree.mount, use_file_handles=True, max_entries=3) as paths:
        assert paths.stats()["entries"] <= 3
        for cgroup_id in ids:
            assert paths.path(cgroup_id) is not None   # evicted ones come back by file handle
        assert paths.stats()["entries"] == 3 and paths.stats()["evictions"] > 0


@pytest.mark.parametrize("bad", [0, -1, None, "12", 1.5, [1], 2**70])
def test_bad_ids_never_raise(tree, bad):
    with CgroupPaths(tree.mount) as paths:
        assert paths.path(bad) is None
        assert paths.stats()["unresolved"] == 1


def test_a_missing_mount_resolves_nothing_and_never_raises(tmp_path):
    with CgroupPaths(str(tmp_path / "no-such-mount")) as paths:
        assert paths.path(1) is None
        assert paths.path(12345) is None
        assert paths.stats()["scan_errors"] >= 1
