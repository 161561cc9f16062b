"""Loading, configuring and unloading the BPF object for real; nothing may leak."""
import os
import select
import subprocess

import pytest

from tapio._fast.arena import EventArena
from tapio._fast.kernel import BpfError, KernelProbes

pytestmark = pytest.mark.kernel


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_load_and_close_50_times_leaks_no_fd(ebpf):
    probes = KernelProbes.start(ring_buffer_bytes=1 << 16)   # warm-up: libbpf's one-time probes
    probes.close()
    before = open_fds()
    for _ in range(50):
        probes = KernelProbes.start(ring_buffer_bytes=1 << 16)
        assert probes.epoll_fd >= 0
        probes.close()
        probes.close()   # idempotent
    assert open_fds() == before


def test_only_the_chosen_types_are_attached(ebpf):
    with KernelProbes.start(["exit"], ring_buffer_bytes=1 << 16) as probes:
        assert probes.event_types == {2}
        arena = EventArena(256)
        subprocess.run(["true"])
        probes.consume(arena)
        types = {arena.slot_bytes(i)[16] for i in range(len(arena))}
        assert types == {2}


def own_cgroup_id():
    """This process's cgroup v2 id: the inode of its cgroup directory."""
    with open("/proc/self/cgroup") as f:
        path = next(line.split("::", 1)[1].strip() for line in f if line.startswith("0::"))
    with open("/proc/self/mountinfo") as f:
        mount = next(line.split()[4] for line in f if " - cgroup2 " in line)
    return os.stat(mount + path).st_ino


@pytest.mark.parametrize("allowed", [True, False])
def test_cgroup_allow_list_filters_in_the_kernel(ebpf, allowed):
    allow = [own_cgroup_id()] if allowed else [own_cgroup_id() + 1_000_000]
    with KernelProbes.start(["exec"], ring_buffer_bytes=1 << 16, cgroup_allow=allow) as probes:
        arena = EventArena(256)
        subprocess.run(["true"])
        subprocess.run(["true"])
        assert (probes.consume(arena) >= 2) == allowed


def test_a_reader_that_promised_to_read_is_not_woken(ebpf):
    """read_within(): while the promise holds, events reach the ring buffer without waking
    epoll_fd (the wakeups cost the kernel microseconds per event); withdrawn, they wake it."""
    with KernelProbes.start(["exec"], ring_buffer_bytes=1 << 20) as probes, select.epoll() as poller:
        poller.register(probes.epoll_fd, select.EPOLLIN)
        arena = EventArena(4096)
        probes.read_within(60)
        probes.consume(arena)               # whatever came before the promise
        arena.clear()
        subprocess.run(["true"])
        assert poller.poll(0.5) == []
        assert probes.consume(arena) >= 1   # the exec is there all the same
        arena.clear()
        probes.read_within(0)
        probes.consume(arena)               # (a reader reads once more before it blocks)
        subprocess.run(["true"])
        assert poller.poll(5) != []


def test_closed_probes_refuse_use(ebpf):
    probes = KernelProbes.start(["exit"], ring_buffer_bytes=1 << 16)
    probes.close()
    with pytest.raises(ValueError, match="closed"):
        probes.consume(EventArena(4))


@pytest.mark.parametrize("size", [1000, 3 << 20, 0])
def test_bad_ring_buffer_size_is_refused_with_a_reason(size):
    with pytest.raises(BpfError, match="power of two"):
        KernelProbes.start(ring_buffer_bytes=size)


def test_unknown_event_type_is_refused():
    with pytest.raises(ValueError, match="unknown event type 'disk'"):
        KernelProbes.start(["disk"])


def test_missing_object_says_how_to_build_it():
    with pytest.raises(BpfError, match="./build.sh build"):
        KernelProbes.start(object_path="/nonexistent/tapio.bpf.o")
