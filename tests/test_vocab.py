"""One vocabulary: every table of names elsewhere agrees with tapio.vocab, so a type or kind added
in one place and forgotten in another fails here."""
import pytest

from tapio import vocab
from tapio._fast import kernel
from tapio.collector.cli import EVENT_GROUPS, parse_events
from tapio.v1 import events_pb2

KNOWN_TYPES = {n: name for n, name in vocab.EVENT_TYPES.items() if n}
KERNEL_TYPES = {n: name for n, name in KNOWN_TYPES.items() if name not in vocab.COLLECTOR_EVENT_TYPES}


def test_kernel_event_types_are_the_wire_contracts():
    assert {number: name for name, number in kernel.EVENT_TYPES.items()} == KERNEL_TYPES
    assert set(vocab.COLLECTOR_EVENT_TYPES) <= set(KNOWN_TYPES.values())


def test_every_event_type_has_a_details_field_of_its_name():
    details = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["details"].fields}
    assert set(KNOWN_TYPES.values()) == details


def test_the_collector_accepts_every_kernel_type_and_the_alias():
    assert set(parse_events("all")) == set(KERNEL_TYPES.values())
    assert parse_events("oom") == parse_events("oom_kill") == ["oom_kill"]
    assert set(KERNEL_TYPES.values()) <= set(EVENT_GROUPS)


@pytest.mark.parametrize("name, number", [("oom", 6), ("oom_kill", 6), ("OOM_KILL", 6), ("exec", 1),
                                          ("tcp_close", 5)])
def test_event_type_number(name, number):
    assert vocab.event_type_number(name) == number


@pytest.mark.parametrize("bad", ["", "oomkill", "unknown_9", "7"])
def test_event_type_number_names_the_choices(bad):
    with pytest.raises(ValueError, match="use exec"):
        vocab.event_type_number(bad)


def test_group_kind_names_the_choices():
    assert vocab.group_kind("oom_kill") == "oom_kill"
    with pytest.raises(ValueError, match="use process_tree, crash_loop"):
        vocab.group_kind("oom")


@pytest.mark.parametrize("args, text", [
    ((0,), "exit code 0"), ((1, 0), "exit code 1"), ((0, 9), "killed by SIGKILL"),
    ((0, 11, True), "killed by SIGSEGV (core dumped)"), ((0, 77), "killed by signal 77"),
])
def test_exit_text(args, text):
    assert vocab.exit_text(*args) == text
