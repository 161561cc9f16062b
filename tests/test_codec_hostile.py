"""Malformed and hostile bytes: DecodeError (a ValueError) saying what and where; never a crash,
never a read past the end of the input."""
import os
import random
import subprocess
import sys
import time

import pytest

from tapio._fast.codec import DecodedBatch, DecodeError

from tests.test_codec_support import sample_requests, tag, varint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_batch(body):
    return tag(2, 2) + varint(len(body)) + body


def in_event(body):
    event = tag(3, 2) + varint(len(body)) + body
    return in_batch(event)


BAD = [
    # (what, bytes, words the message must contain)
    ("empty request", b"", "none of event, batch"),
    ("only unknown fields", tag(9, 0) + b"\x01", "none of event, batch"),
    ("length past the end", b"\x12\x05\x08\x01", "a length runs past the end"),
    ("length past the end, nested", in_batch(b"\x12\x7fabc"), "field 2 of EventBatch"),
    ("truncated varint", in_batch(b"\x08\x80"), "runs past the end"),
    ("truncated tag", b"\x12\x01\x80", "in a tag of EventBatch"),
    ("11-byte varint", in_batch(b"\x08" + b"\xff" * 10 + b"\x01"), "longer than 10 bytes"),
    ("11-byte length", b"\x12" + b"\x80" * 10 + b"\x00", "longer than 10 bytes"),
    ("tag over 32 bits", b"\x80\x80\x80\x80\x80\x01", "over 32 bits"),
    ("field number 0", b"\x00\x00", "field number 0"),
    ("field number 0, nested", in_event(b"\x02\x00"), "field number 0"),
    ("start group", tag(9, 3), "group"),
    ("end group", in_batch(tag(50, 4)), "group"),
    ("wire type 6", in_batch(tag(50, 6)), "wire type 6 or 7"),
    ("wire type 7", in_event(tag(50, 7)), "wire type 6 or 7"),
    ("batch as a varint", b"\x10\x01", "field 2 of TapioStreamEventsRequest"),
    ("batch_id as a string", in_batch(b"\x0a\x00"), "wrong wire type in field 1 of EventBatch"),
    ("timestamp as a varint", in_event(b"\x18\x01"), "field 3 of Event"),
    ("comm as fixed32", in_event(b"\x55\0\0\0\0"), "field 10 of Event"),
    ("details as a varint", in_event(tag(20, 0) + b"\x01"), "field 20 of Event"),
    ("fixed64 cut short", in_event(b"\x19\x01\x02"), "runs past the end"),
    ("garbage in exec", in_event(tag(16, 2) + b"\x02\x0a\x05"), "field 1 of ExecDetails"),
    ("args as a varint", in_event(tag(16, 2) + b"\x02\x10\x01"), "field 2 of ExecDetails"),
    ("tcp saddr as a varint", in_event(tag(18, 2) + b"\x02\x10\x01"), "field 2 of TcpDetails"),
    ("exit code as fixed64", in_event(tag(17, 2) + b"\x09\x09" + b"\0" * 8), "field 1 of ExitDetails"),
    ("oom name past the end", in_event(tag(21, 2) + b"\x02\x22\x09"), "OomKillDetails"),
    ("signal code cut", in_event(tag(22, 2) + b"\x02\x10\xff"), "SignalDetails"),
    ("label as a varint", in_event(b"\x62\x02\x58\x01"), "field 11 of Context"),
    ("bad label", in_event(b"\x62\x04\x5a\x02\x08\x01"), "field 1 of Label"),
    ("context field as fixed64", in_event(b"\x62\x09\x09" + b"\0" * 8), "field 1 of Context"),
    ("packed ancestors cut", in_event(b"\x6a\x04\x22\x02\x01\x80"), "field 4 of Process"),
    ("ancestor as fixed32", in_event(b"\x6a\x05\x25\0\0\0\0"), "field 4 of Process"),
    ("start time as a varint", in_event(b"\x6a\x02\x28\x01"), "field 5 of Process"),
    ("collapsed as a varint", in_event(b"\x70\x01"), "field 14 of Event"),
    ("collapsed stamp as a varint", in_event(b"\x72\x02\x08\x01"), "field 1 of Collapsed"),
    ("collapsed bytes cut", in_event(b"\x72\x02\x18\xff"), "Collapsed"),
    ("first_seq as a string", in_batch(b"\x52\x00"), "field 10 of EventBatch"),
    ("ledger as a varint", in_batch(b"\x60\x01"), "field 12 of EventBatch"),
    ("ledger count as fixed64", in_batch(b"\x62\x09\x09" + b"\0" * 8), "field 1 of Ledger"),
    ("ledger past the end", in_batch(b"\x62\x05\x08"), "field 12 of EventBatch"),
    ("hello the library refuses", tag(4, 2) + b"\x03\x0a\x01\xff", "malformed"),
]


@pytest.mark.parametrize("what, data, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused(what, data, words):
    with pytest.raises(DecodeError, match="malformed|none of") as e:
        DecodedBatch.parse(data)
    assert words in str(e.value)
    if data:
        assert "at byte" in str(e.value) or what.startswith(("only", "hello"))


def test_error_says_where():
    data = in_event(b"\x20\x05" + b"\x28\x06" + b"\x55\0\0\0\0")  # pid, tid, then a bad comm
    with pytest.raises(DecodeError) as e:
        DecodedBatch.parse(data)
    assert str(e.value) == ("malformed TapioStreamEventsRequest: a known field with the wrong "
                            f"wire type in field 10 of Event, at byte {len(data) - 5}")


def test_too_many_events():
    events = b"\x1a\x00" * 1_000_001
    with pytest.raises(DecodeError, match="more than 1000000 events"):
        DecodedBatch.parse(in_batch(events))
    assert len(DecodedBatch.parse(in_batch(events[2:]))) == 1_000_000


def test_many_occurrences_of_one_message_take_linear_time():
    """Every occurrence of a merged message is chained in O(1): 300000 pieces of one context,
    one event's details or the event itself parse at the pace of any other input."""
    n = 300_000
    pieces = [in_event(b"\x62\x00" * n), in_event((tag(16, 2) + b"\x00") * n), (tag(1, 2) + b"\x00") * n]
    for data in pieces:
        start = time.perf_counter()
        batch = DecodedBatch.parse(data)
        assert len(batch) == 1
        batch.to_json_lines()
        batch.event_wire(0)
        assert time.perf_counter() - start < 10  # a bound on complexity: quadratic takes minutes


def mutate(data, rnd):
    data = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        pos = rnd.randrange(len(data) + 1)
        if op == 0 and data:  # flip bits
            data[pos % len(data)] ^= 1 << rnd.randrange(8)
        elif op == 1:  # truncate
            del data[pos:]
        elif op == 2:  # insert random bytes
            data[pos:pos] = rnd.randbytes(rnd.randint(1, 4))
        elif op == 3:  # insert a random varint (maybe overlong, maybe huge)
            data[pos:pos] = varint(rnd.getrandbits(rnd.choice([7, 32, 64]))) + b"\xff" * rnd.randint(0, 11)
        elif op == 4 and data:  # overwrite a byte
            data[pos % len(data)] = rnd.randrange(256)
        else:  # cut a piece out
            del data[pos:pos + rnd.randint(1, 8)]
    return bytes(data)


def fuzz(rounds, seed=7):
    """Mutate valid requests; each must parse, or raise DecodeError. Returns (parsed, refused)."""
    rnd = random.Random(seed)
    samples = sample_requests()
    parsed = refused = 0
    for _ in range(rounds):
        data = mutate(rnd.choice(samples), rnd)
        try:
            batch = DecodedBatch.parse(data)
        except DecodeError:
            refused += 1
            continue
        parsed += 1
        batch.to_json_lines()  # the views must cope with whatever was accepted
        batch.checksum()
    return parsed, refused


def test_mutations_parse_or_raise_decode_error():
    parsed, refused = fuzz(20000)
    assert parsed and refused  # both outcomes happen: the mutations are neither all fatal nor all benign


def test_mutations_under_the_debug_allocator():
    """The same loop with PYTHONMALLOC=debug (guard bytes around every allocation, poisoned
    frees) and -X dev: an over-read or a use after free aborts the process."""
    code = "from tests.test_codec_hostile import fuzz; print(fuzz(10000, seed=11))"
    env = dict(os.environ, PYTHONMALLOC="debug")
    proc = subprocess.run([sys.executable, "-X", "dev", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
