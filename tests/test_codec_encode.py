"""BatchEncoder: kernel records in an arena -> TapioStreamEventsRequest bytes, byte for byte what
the protobuf library writes for the message the contract describes."""
import time
from array import array

import pytest
from hypothesis import given, settings, strategies as st

from tapio._fast import codec
from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch, encode_field
from tapio.v1 import events_pb2, stream_pb2

from tests.test_codec_support import (
    EXEC, EXIT, LEDGER_FIELDS, OOM_KILL, PAGE_SIZE, SIGNAL, TCP_ACCEPT, TCP_CLOSE, TCP_CONNECT,
    U64_MAX, arena_of, collapsed_totals, contexts, expected_dict, expected_event, kernel_events,
    ledgers, pack, processes,
)

B2W = 1_700_000_000_000_000_000


def expected_request(records, extras, order, *, batch_id, first_seq, b2w, created, node="node-1",
                     collector="collector-1", path=2, drops=(0, 0, 0), last_seq=0, ledger=None):
    events = []
    for slot in order:
        repeat, ctx, proc, totals = extras[slot]
        # an event's id follows its slot, not its place in the batch
        events.append(expected_event(records[slot], first_seq + slot, b2w, repeat, ctx, proc, totals))
    if last_seq == 0:  # the batch accounts for every slot of the arena
        last_seq = max(first_seq + len(records) - 1, 0)
    batch = stream_pb2.EventBatch(
        batch_id=batch_id, collector_id=collector, events=events, created_at_ns=created,
        kernel_drops=drops[0], processor_drops=drops[1], buffer_drops=drops[2], path=path,
        node_name=node, first_seq=first_seq, last_seq=last_seq)
    if ledger is not None:
        batch.ledger.SetInParent()
        batch.ledger.MergeFrom(stream_pb2.Ledger(**dict(zip(LEDGER_FIELDS, ledger))))
    return stream_pb2.TapioStreamEventsRequest(batch=batch)


def encode_records(records, extras=None, order=None, **kw):
    """Encode records (with per-slot (repeat, context, process, totals) extras) the way the
    collector does."""
    a = arena_of(records)
    blobs = []  # the arena borrows them: keep them alive until encode() returns
    for slot, (repeat, ctx, proc, totals) in enumerate(extras or []):
        c = encode_field(12, ctx.SerializeToString()) if ctx is not None else None
        p = encode_field(13, proc.SerializeToString()) if proc is not None else None
        blobs += [c, p]
        codec._annotate_slot(a, slot, repeat, c, p, totals)
    enc = BatchEncoder(kw.pop("collector", "collector-1"), kw.pop("node", "node-1"), kw.pop("b2w", B2W))
    return enc.encode(a, order=order, **kw)


extras_strategy = st.tuples(st.sampled_from([1, 1, 0, 2, 7, 2**32 - 1]),
                            st.none() | contexts(), st.none() | processes(),
                            collapsed_totals)


@st.composite
def batches(draw):
    records = draw(st.lists(kernel_events(), max_size=6))
    extras = [draw(extras_strategy) for _ in records]
    order = None
    if records and draw(st.booleans()):  # any slots, in any order, repeats allowed
        order = draw(st.lists(st.integers(0, len(records) - 1), max_size=8))
    return records, extras, order


@settings(max_examples=250, deadline=None)
@given(batches(), st.integers(0, 2**64 - 1), st.integers(0, 2**63), st.integers(0, 2**63 - 1),
       st.integers(1, 2**64 - 1), st.sampled_from([0, 1, 2]), st.tuples(*[st.integers(0, 2**64 - 1)] * 3),
       st.one_of(st.just(0), st.integers(0, 2**64 - 1)), st.none() | ledgers)
def test_encode_matches_the_library_byte_for_byte(batch, batch_id, first_seq, b2w, created, path, drops,
                                                   last_seq, ledger):
    records, extras, order = batch
    data = encode_records(records, extras, array("I", order) if order is not None else None,
                          batch_id=batch_id, first_seq=first_seq, b2w=b2w, created_at_ns=created,
                          path=path, kernel_drops=drops[0], processor_drops=drops[1],
                          buffer_drops=drops[2], last_seq=last_seq, ledger=ledger)
    want = expected_request(records, extras, order if order is not None else range(len(records)),
                            batch_id=batch_id, first_seq=first_seq, b2w=b2w, created=created,
                            path=path, drops=drops, last_seq=last_seq, ledger=ledger)
    got = stream_pb2.TapioStreamEventsRequest.FromString(data)
    assert got == want
    assert want.SerializeToString() == data


@settings(max_examples=150, deadline=None)
@given(batches())
def test_round_trip_through_the_decoder(batch):
    records, extras, order = batch
    data = encode_records(records, extras, array("I", order) if order is not None else None,
                          batch_id=9, first_seq=1,
                          created_at_ns=5)
    decoded = DecodedBatch.parse(data)
    slots = order if order is not None else range(len(records))
    assert len(decoded) == len(slots)
    for k, slot in enumerate(slots):
        repeat, ctx, proc, totals = extras[slot]
        event = expected_event(records[slot], 1 + slot, B2W, repeat, ctx, proc, totals)
        assert decoded.event_dict(k) == expected_dict(event, "node-1", "collector-1", 9)
        assert decoded.event_wire(k) == event.SerializeToString()


# ---- the mapping, case by case ----

def details_of(record, **kw):
    event = stream_pb2.TapioStreamEventsRequest.FromString(
        encode_records([record], batch_id=1, first_seq=1, **kw)).batch.events[0]
    return event, getattr(event, event.WhichOneof("details"))


@pytest.mark.parametrize("args, size, want", [
    (b"", 0, []),
    (b"\0", 1, [""]),
    (b"ls\0-l\0", 6, ["ls", "-l"]),
    (b"a\0\0b\0", 5, ["a", "", "b"]),      # empty argv elements are kept
    (b"sh\0-c\0echo hi", 13, ["sh", "-c", "echo hi"]),  # the kernel's copy cut the last one off
    (b"ls\0-l\0junk", 6, ["ls", "-l"]),     # only args_size bytes count
    (b"x" * 256, 1000, ["x" * 256]),       # args_size past the buffer: the buffer's 256 bytes
    (b"\xff\0\xc3\xa9\0", 5, ["?", "é"]),
])
def test_exec_argv(args, size, want):
    _, d = details_of({"type": EXEC, "args": args, "args_size": size, "args_count": len(want)})
    assert list(d.args) == want


def test_exec_fields():
    e, d = details_of({"type": EXEC, "filename": b"/usr/bin/" + b"f" * 247, "args_count": 9000,
                       "flags": 1, "comm": b"c" * 16, "pid": 7})
    assert d.filename == "/usr/bin/" + "f" * 247  # 256 bytes, no NUL
    assert d.args_count == 9000 and d.args_truncated
    assert e.comm == "c" * 16 and e.pid == 7 and e.type == EXEC


def test_strings_are_scrubbed_to_valid_utf8():
    e, d = details_of({"type": SIGNAL, "comm": b"ok\xe2\x82\xac\xed\xa0\x80", "sender_comm": b"\xc3"})
    assert e.comm == "ok€???"
    assert d.sender_comm == "?"


@pytest.mark.parametrize("error, result", [
    (0, events_pb2.CONNECT_RESULT_OK), (111, events_pb2.CONNECT_RESULT_REFUSED),
    (110, events_pb2.CONNECT_RESULT_TIMED_OUT), (104, events_pb2.CONNECT_RESULT_RESET),
    (113, events_pb2.CONNECT_RESULT_UNREACHABLE), (101, events_pb2.CONNECT_RESULT_UNREACHABLE),
    (103, events_pb2.CONNECT_RESULT_OTHER), (-5, events_pb2.CONNECT_RESULT_OTHER),
])
def test_connect_results(error, result):
    _, d = details_of({"type": TCP_CONNECT, "family": 2, "error": error})
    assert d.result == result and d.error == error


def test_tcp_addresses_and_direction():
    v6 = bytes(range(16))
    _, d = details_of({"type": TCP_ACCEPT, "family": 10, "saddr": v6, "daddr": v6[::-1],
                       "sport": 443, "dport": 50000, "direction": 2, "error": 111})
    assert (d.family, d.saddr, d.daddr, d.sport, d.dport) == (events_pb2.IP_FAMILY_IPV6, v6, v6[::-1], 443, 50000)
    assert d.passive and d.result == events_pb2.CONNECT_RESULT_OK  # result is for connects only
    _, d = details_of({"type": TCP_CLOSE, "family": 2, "saddr": b"\x7f\0\0\1" + b"\xee" * 12,
                       "bytes_sent": 10, "bytes_received": 20, "direction": 1})
    assert d.saddr == b"\x7f\0\0\1" and d.daddr == b"\0\0\0\0" and not d.passive
    assert (d.bytes_sent, d.bytes_received) == (10, 20)


def test_oom_pages_become_bytes_and_saturate():
    _, d = details_of({"type": OOM_KILL, "rss_pages": 3, "memcg_limit_pages": 2**63,
                       "memcg_name": b"n" * 64, "trigger_comm": b"stress"})
    assert d.rss_bytes == 3 * PAGE_SIZE
    assert d.memcg_limit_bytes == U64_MAX
    assert d.memcg_name == "n" * 64 and d.trigger_comm == "stress"


def test_exit_times_and_negative_codes():
    e, d = details_of({"type": EXIT, "exit_code": -1, "signal": 11, "core_dumped": 4,
                       "start_ns": 5, "duration_ns": 6, "timestamp_ns": 10}, b2w=100)
    assert (d.exit_code, d.signal, d.core_dumped, d.start_time_ns, d.duration_ns) == (-1, 11, True, 105, 6)
    assert e.timestamp_ns == 110


def test_empty_details_are_still_present():
    e, d = details_of({"type": SIGNAL})
    assert e.WhichOneof("details") == "signal" and d.ByteSize() == 0


def test_ids_and_order():
    records = [{"type": SIGNAL, "pid": p} for p in (10, 11, 12)]
    data = encode_records(records, order=array("I", [2, 0, 2]), batch_id=1, first_seq=99)
    events = stream_pb2.TapioStreamEventsRequest.FromString(data).batch.events
    # an event is named by its slot: the same kernel event has the same id in every batch
    assert [(e.id, e.pid) for e in events] == [("ebpf-101", 12), ("ebpf-99", 10), ("ebpf-101", 12)]
    for first in (9, 99_999, 10**19 - 1, 2**64 - 3):  # ids carry into one more digit
        data = encode_records(records, batch_id=1, first_seq=first)
        events = stream_pb2.TapioStreamEventsRequest.FromString(data).batch.events
        assert [e.id for e in events] == [f"ebpf-{first + k}" for k in range(3)]
    data = encode_records(records, order=memoryview(array("I")), batch_id=1, first_seq=1)
    assert len(stream_pb2.TapioStreamEventsRequest.FromString(data).batch.events) == 0


def test_bad_arguments():
    a = arena_of([{"type": SIGNAL}])
    enc = BatchEncoder("c", "n", 0)
    with pytest.raises(ValueError, match="order\\[1\\] is slot 1"):
        enc.encode(a, 1, 1, order=array("I", [0, 1]))
    with pytest.raises(ValueError, match="path"):
        enc.encode(a, 1, 1, path=3)
    enc.encode(a, 1, U64_MAX)  # the last id there is
    with pytest.raises(ValueError, match="2\\*\\*64"):
        enc.encode(arena_of([{"type": SIGNAL}] * 2), 1, U64_MAX)
    with pytest.raises(ValueError, match="boot_to_wall_ns"):
        enc.boot_to_wall_ns = -1
    with pytest.raises(ValueError, match="encode_field\\(12"):
        codec._annotate_slot(a, 0, 1, b"\x62\x05abc")
    with pytest.raises(ValueError, match="totals"):
        codec._annotate_slot(a, 0, 2)
    with pytest.raises(ValueError, match="seven counts"):
        enc.encode(a, 1, 1, ledger=(1, 2, 3))


def test_encoder_state():
    enc = BatchEncoder("c", "n", 5)
    enc.boot_to_wall_ns = 7
    assert enc.boot_to_wall_ns == 7
    big = arena_of([{"type": EXEC, "args": b"a\0" * 100, "args_size": 200}] * 600)
    small = arena_of([{"type": SIGNAL, "pid": 1}])
    first = enc.encode(big, 1, 1)
    before = time.time_ns()
    second = enc.encode(small, 2, 601)
    after = time.time_ns()
    assert len(stream_pb2.TapioStreamEventsRequest.FromString(first).batch.events) == 600
    batch = stream_pb2.TapioStreamEventsRequest.FromString(second).batch
    assert before <= batch.created_at_ns <= after
    assert [e.id for e in batch.events] == ["ebpf-601"]
    empty = enc.encode(EventArena(1), 3, 1, created_at_ns=0, path=0)
    assert empty == stream_pb2.TapioStreamEventsRequest(  # accounts for no sequence number
        batch=stream_pb2.EventBatch(batch_id=3, collector_id="c", node_name="n",
                                    first_seq=1)).SerializeToString()


def test_encode_field():
    msg = events_pb2.Context(pod_name="p").SerializeToString()
    assert encode_field(12, msg) == b"\x62" + bytes([len(msg)]) + msg
    assert encode_field(13, b"") == b"\x6a\x00"
    assert encode_field(2**29 - 1, b"x") == b"\xfa\xff\xff\xff\x0f\x01x"
    with pytest.raises(ValueError):
        encode_field(0, b"")


def test_arena_records_are_what_the_kernel_writes():
    record = {"type": TCP_CONNECT, "pid": 1}
    a = arena_of([record])
    assert a.slot_bytes(0) == pack(record)
