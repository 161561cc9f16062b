"""The event layout is written once (bpf/tapio_events.h) and compiled twice: clang for BPF, the
host compiler for Cython. Both must agree on every size and offset, and the sizes must be the
ABI we ship (a change here is a wire-visible change to the ring buffer's records)."""
import pytest

from tapio._fast.arena import SLOT_SIZE
from tapio._fast.kernel import DEFAULT_OBJECT
from tapio._fast.layout import bpf_layout, host_layout

# The ABI of the ring-buffer records. Change it only together with bpf/tapio_events.h.
SIZES = {"tapio_header": 56, "tapio_exec": 584, "tapio_exit": 88, "tapio_tcp": 128,
         "tapio_oom": 184, "tapio_signal": 88, "tapio_throttled": 120, "tapio_config": 24, "tapio_event": 584}
HEADER = {"timestamp_ns": (0, 8), "cgroup_id": (8, 8), "type": (16, 4), "pid": (20, 4),
          "tid": (24, 4), "ppid": (28, 4), "uid": (32, 4), "gid": (36, 4), "comm": (40, 16)}

HOST = host_layout()
BPF = bpf_layout(DEFAULT_OBJECT, list(HOST))


def test_sizes_are_the_shipped_abi():
    assert {name: t["size"] for name, t in HOST.items()} == SIZES
    assert SLOT_SIZE == SIZES["tapio_event"]


def test_every_struct_is_a_multiple_of_8_so_arena_slots_stay_aligned():
    assert all(t["size"] % 8 == 0 for t in HOST.values())


def test_every_member_of_the_event_union_is_checked_here():
    """A struct added to union tapio_event must be listed in tapio/_fast/layout.pyx (and SIZES),
    or nothing compares what clang and the host compiler made of it."""
    members = BPF["tapio_event"]["fields"]       # hdr, exec, exit, ... as clang laid out the union
    checked = [name for name in HOST if name not in ("tapio_config", "tapio_event")]
    assert len(members) == len(checked), (sorted(members), checked)


def test_header_layout():
    assert HOST["tapio_header"]["fields"] == HEADER


@pytest.mark.parametrize("name", sorted(n for n in SIZES if n != "tapio_event"))
def test_bpf_and_host_compilers_agree(name):
    host, bpf = HOST[name], BPF[name]
    assert bpf["size"] == host["size"]
    assert bpf["fields"] == {field: offset for field, (offset, _) in host["fields"].items()}


@pytest.mark.parametrize("name", sorted(n for n in SIZES if n not in ("tapio_header", "tapio_config", "tapio_event")))
def test_every_event_starts_with_the_header_and_has_no_hidden_padding(name):
    fields = sorted(HOST[name]["fields"].values())
    assert fields[0] == (0, SIZES["tapio_header"])
    end = 0
    for offset, size in fields:
        assert offset == end, f"{name}: implicit padding before offset {offset}"
        end = offset + size
    assert end == HOST[name]["size"]
