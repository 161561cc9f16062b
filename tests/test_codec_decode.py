"""DecodedBatch: whatever the protobuf library writes (or accepts) -> records -> the JSON shape."""
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from tapio import vocab
from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.v1 import events_pb2, stream_pb2

from tests.test_codec_support import (
    batch_fields, expected_dict, library_batches, library_events, noncanonical, tag, varint,
)


def check_batch(data, batch):
    decoded = DecodedBatch.parse(data)
    assert decoded.kind == "batch"
    assert {name: getattr(decoded, name) for name in batch_fields(batch)} == batch_fields(batch)
    assert len(decoded) == len(batch.events)
    want = [expected_dict(e, batch.node_name, batch.collector_id, batch.batch_id) for e in batch.events]
    assert [decoded.event_dict(i) for i in range(len(decoded))] == want
    assert [decoded.event_id(i) for i in range(len(decoded))] == [e.id for e in batch.events]
    for i, event in enumerate(batch.events):  # each event's own bytes, as they arrived
        got = events_pb2.Event.FromString(decoded.event_wire(i))
        got.DiscardUnknownFields()
        assert got == event
    assert decoded.type_counts() == Counter(d["type"] for d in want)
    lines = decoded.to_json_lines()
    assert lines.count(b"\n") == len(want) and (not lines or lines.endswith(b"\n"))
    assert [json.loads(line) for line in lines.splitlines()] == want
    return decoded


@settings(max_examples=150, deadline=None)
@given(library_batches())
def test_canonical_batches(batch):
    decoded = check_batch(stream_pb2.TapioStreamEventsRequest(batch=batch).SerializeToString(), batch)
    assert [decoded.event_wire(i) for i in range(len(decoded))] == [
        e.SerializeToString() for e in batch.events]


@settings(max_examples=150, deadline=None)
@given(library_batches(max_events=5), st.randoms(use_true_random=False))
def test_what_the_library_accepts_but_does_not_write(batch, rnd):
    """Any field order, unknown fields everywhere, unpacked or split packed ancestors, singular
    fields sent twice, messages split in two occurrences, oneof members replaced."""
    request = stream_pb2.TapioStreamEventsRequest(batch=batch)
    data = noncanonical(request, rnd)
    parsed = stream_pb2.TapioStreamEventsRequest.FromString(data)
    parsed.DiscardUnknownFields()
    assert parsed == request  # what the library makes of these bytes
    check_batch(data, batch)


@settings(max_examples=100, deadline=None)
@given(library_events())
def test_a_single_event(event):
    decoded = DecodedBatch.parse(stream_pb2.TapioStreamEventsRequest(event=event).SerializeToString())
    assert (decoded.kind, len(decoded), decoded.batch_id, decoded.node_name) == ("event", 1, 0, "")
    assert decoded.event_dict(0) == expected_dict(event)
    assert decoded.event_wire(0) == event.SerializeToString()
    assert (decoded.first_seq, decoded.last_seq, decoded.ledger) == (0, 0, None)
    assert decoded.event_dict(-1) == decoded.event_dict(0)
    assert decoded.event_id(-1) == event.id
    with pytest.raises(IndexError):
        decoded.event_dict(1)
    with pytest.raises(IndexError):
        decoded.event_id(-2)
    with pytest.raises(IndexError):
        decoded.event_wire(1)


def test_an_event_sent_in_pieces_is_served_merged():
    one = events_pb2.Event(id="a", pid=1, process=events_pb2.Process(ancestors=[1, 2]))
    two = events_pb2.Event(pid=2, collapsed=events_pb2.Collapsed(bytes_sent=5),
                           process=events_pb2.Process(ancestors=[3]))
    three = events_pb2.Event(comm="c", collapsed=events_pb2.Collapsed(sport_max=9))
    data = b"".join(request_bytes(event=e) for e in (one, two, three))
    want = stream_pb2.TapioStreamEventsRequest.FromString(data).event
    decoded = DecodedBatch.parse(data)
    assert events_pb2.Event.FromString(decoded.event_wire(0)) == want
    assert decoded.event_dict(0) == expected_dict(want)
    assert decoded.event_dict(0)["collapsed"]["bytes_sent"] == 5
    # a batch in between starts the event over
    data = request_bytes(event=one) + request_bytes(batch=stream_pb2.EventBatch()) + request_bytes(event=two)
    assert DecodedBatch.parse(data).event_wire(0) == two.SerializeToString()


def test_sequence_range_and_ledger():
    ledger = stream_pb2.Ledger(seen=10, filtered=2, collapsed=3, dropped_kernel=1, dropped_buffer=4)
    batch = stream_pb2.EventBatch(first_seq=5, last_seq=14, ledger=ledger)
    decoded = DecodedBatch.parse(request_bytes(batch=batch))
    assert (decoded.first_seq, decoded.last_seq) == (5, 14)
    assert decoded.ledger == {"seen": 10, "filtered": 2, "collapsed": 3, "dropped_kernel": 1,
                              "dropped_processor": 0, "dropped_buffer": 4, "throttled": 0}
    empty = DecodedBatch.parse(request_bytes(batch=stream_pb2.EventBatch(ledger=stream_pb2.Ledger())))
    assert empty.ledger == dict.fromkeys(empty.ledger, 0) and len(empty.ledger) == 7
    # two ledger occurrences merge, as protobuf merges them: the last value of each field wins
    second = stream_pb2.EventBatch(ledger=stream_pb2.Ledger(seen=11))
    merged = DecodedBatch.parse(request_bytes(batch=batch) + request_bytes(batch=second))
    assert merged.ledger["seen"] == 11 and merged.ledger["filtered"] == 2


def test_hello_and_control_come_as_library_messages():
    hello = stream_pb2.Hello(collector_id="c1", node_name="n", version="1", event_types=[1, 3],
                             last_acked_batch_id=7)
    decoded = DecodedBatch.parse(stream_pb2.TapioStreamEventsRequest(hello=hello).SerializeToString())
    assert (decoded.kind, len(decoded), decoded.message) == ("hello", 0, hello)
    control = stream_pb2.StreamControl(action=stream_pb2.StreamControl.ACTION_HEARTBEAT)
    decoded = DecodedBatch.parse(stream_pb2.TapioStreamEventsRequest(control=control).SerializeToString())
    assert (decoded.kind, decoded.message, decoded.to_json_lines()) == ("control", control, b"")
    batch = DecodedBatch.parse(b"\x12\x00")
    assert (batch.kind, len(batch), batch.message) == ("batch", 0, None)


def request_bytes(**members):
    return stream_pb2.TapioStreamEventsRequest(**members).SerializeToString()


def test_the_request_oneof_and_merging_batches():
    a = stream_pb2.EventBatch(batch_id=1, collector_id="a", events=[events_pb2.Event(id="x")])
    b = stream_pb2.EventBatch(batch_id=2, events=[events_pb2.Event(id="y")])
    event = events_pb2.Event(id="solo", pid=5)
    # a batch twice: one merged batch (scalars: the last set value; events: all of them)
    decoded = DecodedBatch.parse(request_bytes(batch=a) + request_bytes(batch=b))
    assert (decoded.batch_id, decoded.collector_id) == (2, "a")
    assert [decoded.event_dict(i)["id"] for i in range(len(decoded))] == ["x", "y"]
    # another member replaces what was there
    decoded = DecodedBatch.parse(request_bytes(batch=a) + request_bytes(event=event))
    assert (decoded.kind, len(decoded), decoded.batch_id, decoded.event_dict(0)["pid"]) == ("event", 1, 0, 5)
    decoded = DecodedBatch.parse(request_bytes(event=event) + request_bytes(batch=b))
    assert (decoded.kind, len(decoded), decoded.batch_id) == ("batch", 1, 2)
    decoded = DecodedBatch.parse(request_bytes(batch=a) + request_bytes(hello=stream_pb2.Hello(version="9")))
    assert (decoded.kind, len(decoded), decoded.message.version) == ("hello", 0, "9")


def test_merged_exec_details_keep_every_argument():
    """argv is re-read from the ExecDetails bodies on demand: all occurrences, in order."""
    first = events_pb2.ExecDetails(filename="/a", args=["1", "2"]).SerializeToString()
    second = events_pb2.ExecDetails(args=["3"], args_count=3).SerializeToString()
    third = events_pb2.ExecDetails(filename="/b", args=["", "5"]).SerializeToString()
    body = b"".join(tag(16, 2) + varint(len(m)) + m for m in (first, second, third))
    data = tag(1, 2) + varint(len(body)) + body
    want = stream_pb2.TapioStreamEventsRequest.FromString(data).event.exec
    assert list(want.args) == ["1", "2", "3", "", "5"]
    got = DecodedBatch.parse(data).event_dict(0)["exec"]
    assert got == {"filename": "/b", "args": list(want.args), "args_count": 3, "args_truncated": False}
    # switching to another member and back starts over
    exit_ = events_pb2.ExitDetails(exit_code=1).SerializeToString()
    body = b"".join(tag(n, 2) + varint(len(m)) + m for n, m in ((16, first), (17, exit_), (16, second)))
    got = DecodedBatch.parse(tag(1, 2) + varint(len(body)) + body).event_dict(0)
    assert "exit" not in got and got["exec"]["args"] == ["3"] and got["exec"]["filename"] == ""


def test_merged_contexts_keep_every_label():
    one = events_pb2.Context(pod_name="p", labels=[events_pb2.Label(key="a", value="1")])
    two = events_pb2.Context(namespace="ns", labels=[events_pb2.Label(key="b", value="2"),
                                                     events_pb2.Label(key="a", value="3")])
    body = b"".join(tag(12, 2) + varint(len(m)) + m for m in (one.SerializeToString(), two.SerializeToString()))
    got = DecodedBatch.parse(tag(1, 2) + varint(len(body)) + body).event_dict(0)["context"]
    assert got == {"pod_name": "p", "namespace": "ns", "labels": {"a": "3", "b": "2"}}


def test_ancestors_past_sixteen_are_not_kept():
    process = events_pb2.Process(ancestors=list(range(1, 21)))
    got = DecodedBatch.parse(request_bytes(event=events_pb2.Event(process=process))).event_dict(0)
    assert got["process"]["ancestors"] == list(range(1, 17))


def test_invalid_utf8_is_shown_replaced_not_refused():
    comm = b"ab\xff\xc3"
    body = tag(10, 2) + varint(len(comm)) + comm
    decoded = DecodedBatch.parse(tag(1, 2) + varint(len(body)) + body)
    assert decoded.event_dict(0)["comm"] == "ab\ufffd\ufffd"


def test_checksum_reads_every_record():
    rnd = random.Random(3)
    events = [events_pb2.Event(id=f"e{i}", pid=i, comm="x" * i,
                               signal=events_pb2.SignalDetails(signal=rnd.randint(1, 9)))
              for i in range(10)]
    data = request_bytes(batch=stream_pb2.EventBatch(batch_id=4, events=events))
    decoded = DecodedBatch.parse(data)
    want = 4 + sum(len(e.id) + e.pid + len(e.comm) + e.signal.signal for e in events)
    assert decoded.checksum() == want


def test_the_json_line():
    event = events_pb2.Event(
        id="ebpf-12", type=1, timestamp_ns=1795741323123456789, pid=10, tid=10, ppid=1,
        cgroup_id=123, comm="sh", count=3,
        exec=events_pb2.ExecDetails(filename="/usr/bin/ls", args=["ls", "-l"], args_count=2))
    batch = stream_pb2.EventBatch(node_name="host-a", events=[event])
    line = DecodedBatch.parse(request_bytes(batch=batch)).to_json_lines()
    assert line == (
        b'{"id":"ebpf-12","type":"exec","timestamp_ns":1795741323123456789,'
        b'"time":"2026-11-27T01:02:03.123456Z","pid":10,"tid":10,"ppid":1,"uid":0,"gid":0,'
        b'"cgroup_id":123,"comm":"sh","count":3,"node":"host-a","exec":{"filename":"/usr/bin/ls",'
        b'"args":["ls","-l"],"args_count":2,"args_truncated":false}}\n')


@pytest.mark.parametrize("helper, value, want", [
    (vocab.event_type_name, 6, "oom_kill"),
    (vocab.event_type_name, 0, "unspecified"),
    (vocab.event_type_name, 42, "unknown_42"),
    (vocab.ip_family_name, 6, "ipv6"),
    (vocab.connect_result_name, 2, "timed_out"),
    (vocab.signal_name, 11, "SIGSEGV"),
    (vocab.signal_name, 0, None),
    (vocab.format_time, 0, "1970-01-01T00:00:00.000000Z"),
    (vocab.format_time, 2**64 - 1, "2554-07-21T23:34:33.709551Z"),
    (vocab.format_addr, b"\x7f\0\0\1", "127.0.0.1"),
    (vocab.format_addr, b"\0" * 15 + b"\1", "::1"),
    (vocab.format_addr, b"\1\2", "0102"),
])
def test_json_leaves(helper, value, want):
    assert helper(value) == want


def test_parse_wants_bytes():
    with pytest.raises(TypeError):
        DecodedBatch.parse(bytearray(b"\x12\x00"))
    with pytest.raises(TypeError):
        DecodedBatch()
    assert issubclass(DecodeError, ValueError)
