"""ProcessTable: /proc snapshot of real process trees, exec/exit updates, bounds and bad data.

Malformed /proc contents are tested with a proc-like directory in tmp_path (the table takes its
/proc root as a parameter); everything else runs against the real /proc.
"""
import os
import signal
import subprocess
import time

import pytest

from tapio.collector.clock import boot_to_wall_ns
from tapio.collector.enrich.proc import ProcessTable, parse_stat, read_process, text_from_kernel_bytes
from tapio.v1 import events_pb2
from tests.helpers import wait_until

S = 1_000_000_000


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def children_of(pid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = parse_stat(f.read())
            except OSError:
                continue
            if stat is not None and stat.ppid == pid:
                found.append(int(name))
    return sorted(found)


@pytest.fixture
def process_tree():
    """sh with two sleeping children, started before the table looks; all killed afterwards."""
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        children = wait_until(lambda: len(children_of(shell.pid)) == 2 and children_of(shell.pid),
                              what="sh to start both sleeps")
        yield shell.pid, children
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shell.wait(timeout=10)


def fake_proc(root, pid, *, stat=None, status=None, cmdline=b"", exe="/usr/bin/fake", cgroup=b"0::/\n"):
    directory = root / str(pid)
    directory.mkdir(parents=True)
    if stat is None:
        stat = f"{pid} (fake) S 1 {pid} {pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0".encode()
    if status is None:
        status = b"Name:\tfake\nUid:\t1000\t1000\t1000\t1000\nGid:\t0\t0\t0\t0\n"
    (directory / "stat").write_bytes(stat)
    (directory / "status").write_bytes(status)
    (directory / "cmdline").write_bytes(cmdline)
    (directory / "cgroup").write_bytes(cgroup)
    if exe is not None:
        (directory / "exe").symlink_to(exe)
    return directory


# -- parsing --------------------------------------------------------------------------------------

STAT_CASES = [
    ("plain", b"42 (sleep) S 7 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0", ("sleep", 7, 12345)),
    ("comm with spaces and parens", b"42 (a b) (c)) R 8 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0",
     ("a b) (c)", 8, 99)),
    ("comm that is not UTF-8", b"42 (\xff\xfe) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0", ("??", 1, 5)),
    ("truncated", b"42 (sleep) S 7 42 42", None),
    ("not numbers", b"42 (sleep) S x 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 y 0", None),
    ("no parens", b"42 sleep S 7", None),
    ("empty", b"", None),
    ("not bytes", "42 (sleep) S 7 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 0", None),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in STAT_CASES], ids=[c[0] for c in STAT_CASES])
def test_parse_stat(raw, expected):
    stat = parse_stat(raw)
    if expected is None:
        assert stat is None
    else:
        assert (stat.comm, stat.ppid, stat.start_ticks) == expected


@pytest.mark.parametrize("raw,text", [
    (b"plain", "plain"),
    ("grüße".encode(), "grüße"),
    (b"bad\xffbyte", "bad?byte"),
    ("ü".encode()[:1] + b"x", "?x"),   # a cut multi-byte character: each byte is one '?'
])
def test_text_from_kernel_bytes(raw, text):
    assert text_from_kernel_bytes(raw) == text


# -- the snapshot of real processes ---------------------------------------------------------------

def test_snapshot_gives_processes_started_before_it_a_complete_ancestor_chain(process_tree):
    shell, children = process_tree
    table = ProcessTable(boot_to_wall_ns())
    assert table.snapshot() >= 4
    for child in children:
        chain = table.ancestors(child)
        assert chain[:2] == [shell, os.getpid()]
        assert chain[-1] == 1
        process = table.info(child)
        assert process.executable.endswith("sleep")
        assert process.command_line == "sleep 30"
        assert process.user == table.user_name(os.getuid())
        assert list(process.ancestors) == chain
        # The start time went through ticks -> boot ns -> wall ns: it must be about now.
        assert abs(process.start_time_ns - time.time_ns()) < 120 * S
    assert table.info(shell).command_line == "sh -c sleep 30 & sleep 30 & wait"
    stats = table.stats()
    assert stats["snapshot_processes"] >= 4 and stats["misses"] == 0


def test_a_process_the_table_has_not_seen_is_read_from_proc_once(process_tree):
    shell, children = process_tree
    table = ProcessTable(boot_to_wall_ns())
    assert len(table) == 0
    assert table.info(children[0]).command_line == "sleep 30"
    assert table.stats()["misses"] == 1 and table.stats()["proc_reads"] >= 1
    assert table.info(children[0]) is not None
    assert table.stats()["hits"] == 1


def test_a_pid_that_does_not_exist_is_a_counted_miss_and_not_reread():
    table = ProcessTable(boot_to_wall_ns())
    missing = 4_000_000   # above pid_max's ceiling (2^22)
    assert table.info(missing) is None
    assert table.process_bytes(missing) is None
    stats = table.stats()
    assert stats["misses"] == 2 and stats["proc_read_failures"] == 1


def test_cgroup_paths_of_snapshotted_processes(process_tree):
    shell, _ = process_tree
    table = ProcessTable(boot_to_wall_ns())
    table.snapshot()
    with open(f"/proc/{shell}/cgroup") as f:
        line = [x for x in f.read().splitlines() if x.startswith("0::")][0]
    assert (shell, line[3:]) in table.cgroup_paths()


# -- events ---------------------------------------------------------------------------------------

def test_exec_and_exit_events_keep_the_table_current(tmp_path):
    clock = FakeClock()
    offset = 1_700_000_000 * S
    table = ProcessTable(offset, proc_root=str(tmp_path), exit_grace_s=30, clock=clock)
    table.on_exec(500, 1, 0, "/bin/bash", ["bash", "-l"], 10 * S)
    table.on_exec(501, 500, 1000, "/usr/bin/curl", ["curl", "-s", "http://x"], 11 * S)
    process = table.info(501)
    assert process == events_pb2.Process(executable="/usr/bin/curl", command_line="curl -s http://x",
                                         user=table.user_name(1000), ancestors=[500, 1],
                                         start_time_ns=offset + 11 * S)
    # The same process exec'ing again keeps its start time and gets its new image.
    table.on_exec(501, 500, 1000, "/usr/bin/env", ["env"], 12 * S)
    assert table.info(501).executable == "/usr/bin/env"
    assert table.info(501).start_time_ns == offset + 11 * S
    # After the exit the entry stays for the grace period: late events still find it.
    table.on_exit(500)
    clock.now += 29
    table.on_exit(12345)
    assert table.info(500) is not None and table.ancestors(501) == [500, 1]
    clock.now += 2
    table.on_exit(12346)   # any event runs the expiry
    assert table.info(500) is None
    assert table.ancestors(501) == [500]
    assert table.stats()["expired"] == 1


def test_a_reused_pid_is_a_new_process(tmp_path):
    clock = FakeClock()
    table = ProcessTable(0, proc_root=str(tmp_path), exit_grace_s=30, clock=clock)
    table.on_exec(700, 1, 0, "/bin/old", ["old"], 1 * S)
    table.on_exit(700)
    table.on_exec(700, 2, 0, "/bin/new", ["new"], 5 * S)
    clock.now += 60
    table.on_exit(1)
    # The old entry's expiry must not remove the new process that reused its pid.
    assert table.info(700).executable == "/bin/new"
    assert table.info(700).start_time_ns == 5 * S


def test_process_bytes_is_cached_until_the_process_execs(tmp_path):
    table = ProcessTable(0, proc_root=str(tmp_path))
    table.on_exec(10, 1, 0, "/bin/a", ["a"], S)
    first = table.process_bytes(10)
    assert events_pb2.Process.FromString(first).executable == "/bin/a"
    assert table.process_bytes(10) is first
    table.on_exec(10, 1, 0, "/bin/b", ["b"], S)
    assert events_pb2.Process.FromString(table.process_bytes(10)).executable == "/bin/b"


def test_ancestors_survive_loops_and_respect_the_limit(tmp_path):
    table = ProcessTable(0, proc_root=str(tmp_path))
    table.on_exec(10, 11, 0, "/a", [], S)
    table.on_exec(11, 10, 0, "/b", [], S)   # a loop no real kernel makes, but data can
    assert table.ancestors(10) == [11]
    for pid in range(100, 140):
        table.on_exec(pid, pid + 1, 0, "/c", [], S)
    assert table.ancestors(100) == list(range(101, 117))
    assert table.ancestors(100, limit=3) == [101, 102, 103]
    assert table.ancestors(99999) == []


def test_a_parent_pid_reused_by_a_younger_process_ends_the_chain(tmp_path):
    table = ProcessTable(0, proc_root=str(tmp_path))
    table.on_exec(100, 1, 0, "/bin/old-parent", [], 5 * S)
    table.on_exec(200, 100, 0, "/bin/child", [], 10 * S)
    table.on_exit(100)
    table.on_exec(100, 7, 0, "/bin/unrelated", [], 20 * S)   # pid 100 again, a stranger now
    assert table.ancestors(200) == [100]


def test_the_table_is_bounded_least_recently_used_first(tmp_path):
    table = ProcessTable(0, proc_root=str(tmp_path), max_entries=3)
    for pid in (1, 2, 3):
        table.on_exec(pid, 0, 0, "/x", [], S)
    table.info(1)                       # 1 is now the most recently used
    table.on_exec(4, 0, 0, "/x", [], S)
    assert 2 not in table and 1 in table and 4 in table
    assert table.stats()["evictions"] == 1 and len(table) == 3


def test_command_lines_are_bounded(tmp_path):
    table = ProcessTable(0, proc_root=str(tmp_path), max_command_line=64)
    table.on_exec(5, 1, 0, "/bin/echo", ["echo"] + ["x" * 50] * 10, S)
    assert len(table.info(5).command_line) == 64
    table.on_exec(6, 1, 0, "/bin/true", [], S)
    assert table.info(6).command_line == "/bin/true"   # no argv: the file name stands in


def endless_args():
    while True:
        yield "again"


@pytest.mark.parametrize("args", [None, 42, "one string", [b"bytes\xff", "text", 3, None],
                                  (a for a in ["gen", "args"]), endless_args()])
def test_exec_events_with_odd_arguments_never_raise(tmp_path, args):
    table = ProcessTable(0, proc_root=str(tmp_path))
    table.on_exec(5, 1, 0, b"/bin/\xffx", args, S)
    assert table.info(5).executable == "/bin/?x"
    table.on_exec("junk", None, "x", None, None, None)
    table.on_exit(None)
    table.on_exit("junk")
    table.on_exit(["unhashable"])
    assert table.info(None) is None and table.info("junk") is None and table.ancestors(-1) == []


# -- bad /proc data -------------------------------------------------------------------------------

def test_malformed_proc_entries_are_skipped_not_fatal(tmp_path):
    fake_proc(tmp_path, 10, cmdline=b"/usr/bin/fake\0--flag\0value\0")
    fake_proc(tmp_path, 11, stat=b"garbage")
    fake_proc(tmp_path, 12, status=b"Name:\tnouid\n")
    fake_proc(tmp_path, 13, exe=None, cmdline=b"")   # a kernel thread: no exe, no argv
    fake_proc(tmp_path, 14, cmdline=b"\xff" * 10000)
    (tmp_path / "15").mkdir()                         # vanished half-way
    (tmp_path / "self").symlink_to("10")
    table = ProcessTable(0, proc_root=str(tmp_path), max_command_line=100)
    assert table.snapshot() == 3
    assert table.info(10).command_line == "/usr/bin/fake --flag value"
    assert table.info(10).user == table.user_name(1000)
    assert table.info(13).executable == "" and table.info(13).command_line == ""
    assert table.info(14).command_line == "?" * 100
    assert table.info(11) is None and table.info(12) is None and table.info(15) is None
    assert table.info(10).start_time_ns == 500 * S // os.sysconf("SC_CLK_TCK")


def test_read_process_of_a_missing_directory(tmp_path):
    assert read_process(1, str(tmp_path)) is None


def test_snapshot_of_an_unreadable_proc_root(tmp_path):
    assert ProcessTable(0, proc_root=str(tmp_path / "nothing")).snapshot() == 0


def test_user_names():
    table = ProcessTable(0)
    assert table.user_name(0) == "root"
    assert table.user_name(3_999_999) == "3999999"
    assert table.user_name(3_999_999) == "3999999"
    assert table.user_name(-1) == "-1"
    assert table.stats()["user_lookups"] == 3   # the repeated uid came from the cache
