"""Bounded work per request in the decoder: time linear in the input, whatever it repeats, and
strings no longer than a collector can make."""
import time

import pytest

from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.v1 import events_pb2, stream_pb2


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag_byte, body):
    return bytes([tag_byte]) + varint(len(body)) + body


def event_request(event_body):
    return field(0x0A, event_body)


# Event bodies that repeat one thing n times: each occurrence of a message merges into the one
# before it (protobuf's rule), which is where a decoder can go quadratic.
SHAPES = {
    "empty Context, repeated": lambda n: b"\x62\x00" * n,
    "Context with one label, repeated": lambda n: b"\x62\x02\x5a\x00" * n,
    "Context string field, repeated": lambda n: b"\x62\x02\x0a\x00" * n,
    "ExecDetails, repeated": lambda n: b"\x82\x01\x00" * n,
    "ExecDetails with an argument, repeated": lambda n: b"\x82\x01\x02\x12\x00" * (n // 2),
    "Process, repeated": lambda n: b"\x6a\x02\x20\x01" * n,
    "Collapsed, repeated": lambda n: b"\x72\x00" * n,
    "the event itself, repeated": None,     # a request that sets `event` again and again
}


def request_for(shape, n):
    if SHAPES[shape] is None:
        return event_request(b"\x10\x01") * n
    return event_request(SHAPES[shape](n))


def decode_and_read(data):
    try:
        batch = DecodedBatch.parse(data)
    except DecodeError:
        return      # a bound was hit: refusing is linear too
    batch.checksum()
    for i in range(len(batch)):
        batch.event_dict(i)
        batch.event_wire(i)


def best_time(data, runs=5):
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        decode_and_read(data)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_decoding_time_grows_linearly(shape):
    small, large = request_for(shape, 20_000), request_for(shape, 200_000)
    assert 9 * len(small) < len(large) < 11 * len(small)
    t_small, t_large = best_time(small), best_time(large)
    # linear: about 10x; quadratic would be about 100x. The margin is for a busy machine.
    assert t_large < 30 * max(t_small, 1e-5), f"{shape}: {t_small:.5f}s -> {t_large:.5f}s"


def batch_with(**event_fields):
    event = events_pb2.Event(**{"id": "ebpf-1", "type": 1, **event_fields})
    return stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=1, collector_id="c", events=[event])).SerializeToString()


@pytest.mark.parametrize("fields,at_cap,over", [
    ("comm", "x" * 64, "x" * 65),
    ("id", "e" * 128, "e" * 129),
])
def test_event_strings_are_bounded(fields, at_cap, over):
    assert len(DecodedBatch.parse(batch_with(**{fields: at_cap}))) == 1
    with pytest.raises(DecodeError, match="longer than a collector makes"):
        DecodedBatch.parse(batch_with(**{fields: over}))


def test_argv_is_bounded_in_elements_and_bytes():
    ok = events_pb2.ExecDetails(filename="/bin/sh", args=["a" * 3] * 256)
    assert DecodedBatch.parse(batch_with(exec=ok)).event_dict(0)["exec"]["args"] == ["aaa"] * 256
    for bad in (events_pb2.ExecDetails(args=["a"] * 257),          # more elements than argv can have
                events_pb2.ExecDetails(args=["a" * 600, "b" * 600]),   # more bytes
                events_pb2.ExecDetails(filename="/" * 1025)):
        with pytest.raises(DecodeError, match="longer than a collector makes"):
            DecodedBatch.parse(batch_with(exec=bad))


def test_context_and_process_strings_are_bounded():
    assert DecodedBatch.parse(batch_with(process=events_pb2.Process(command_line="x" * 16384)))
    with pytest.raises(DecodeError, match="field 2 of Process"):
        DecodedBatch.parse(batch_with(process=events_pb2.Process(command_line="x" * 16385)))
    with pytest.raises(DecodeError, match="Context"):
        DecodedBatch.parse(batch_with(context=events_pb2.Context(cgroup_path="p" * 16385)))
    labels = [events_pb2.Label(key="k", value="v")] * 1025
    with pytest.raises(DecodeError, match="Context"):
        DecodedBatch.parse(batch_with(context=events_pb2.Context(labels=labels)))
    with pytest.raises(DecodeError, match="Label"):
        DecodedBatch.parse(batch_with(context=events_pb2.Context(
            labels=[events_pb2.Label(key="k", value="v" * 1025)])))


def test_a_collector_id_longer_than_a_name_is_refused():
    data = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=1, collector_id="c" * 1025)).SerializeToString()
    with pytest.raises(DecodeError, match="EventBatch"):
        DecodedBatch.parse(data)
