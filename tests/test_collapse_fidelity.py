"""A collapsed event tells the truth about what it stands for: the semantic path folds repeats of
one occurrence into the first event, with a count and the exact sums and ranges of what the
others said (tapio.v1.Collapsed), so totals per destination read off the wire are exact."""
import random

import pytest

from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio._fast.semantic import SemanticProcessor

from tests.test_codec_support import EXIT, SIGNAL, TCP_ACCEPT, TCP_CLOSE, TCP_CONNECT, pack

B2W = 1_700_000_000_000_000_000
DESTINATIONS = [(b"\x0a\x00\x00\x02", 8080), (b"\x0a\x00\x00\x03", 443)]


def semantic_events(processor, arena):
    """The arena through the semantic path and the codec: the decoded event dicts."""
    order, _ = processor.process(arena)
    data = BatchEncoder("c", "n", B2W).encode(arena, 1, 1, order=order)
    batch = DecodedBatch.parse(data)
    return [batch.event_dict(i) for i in range(len(batch))]


def fill(arena, records):
    arena.clear()
    for r in records:
        assert arena.push_bytes(pack(r))
    return arena


def processor():
    return SemanticProcessor(lambda cgroup_id: None, lambda pid: None)


def connections(kind, n, rnd):
    """n connections of one process, to two destinations in turn, each with its own port,
    payload bytes, duration and time."""
    ports = rnd.sample(range(32768, 61000), n)
    records = []
    for k in range(n):
        daddr, dport = DESTINATIONS[k % 2]
        records.append({
            "type": kind, "pid": 4242, "tid": 4242, "ppid": 1, "cgroup_id": 77, "comm": b"client",
            "timestamp_ns": 10**12 + k * 10**6 + rnd.randrange(10**6), "family": 2,
            "saddr": b"\x0a\x00\x00\x01", "daddr": daddr, "sport": ports[k], "dport": dport,
            "direction": 2 if kind == TCP_ACCEPT else 1, "duration_ns": rnd.randrange(1, 10**9),
            "bytes_sent": rnd.randrange(1, 100_000) if kind == TCP_CLOSE else 0,
            "bytes_received": rnd.randrange(1, 100_000) if kind == TCP_CLOSE else 0})
    return records


def members(event, key):
    """What a decoded event says about its members: (count, sums and ranges)."""
    details = event[key]
    c = event.get("collapsed")
    if c is None:
        return {"count": 1, "bytes_sent": details["bytes_sent"],
                "bytes_received": details["bytes_received"],
                "duration_min_ns": details["duration_ns"], "duration_max_ns": details["duration_ns"],
                "duration_total_ns": details["duration_ns"], "sport_min": details["sport"],
                "sport_max": details["sport"], "first_timestamp_ns": event["timestamp_ns"],
                "last_timestamp_ns": event["timestamp_ns"]}
    return {"count": event["count"], **c}


def per_destination(events, key):
    totals = {}
    for e in events:
        m = members(e, key)
        dest = (e[key]["daddr"], e[key]["dport"])
        t = totals.setdefault(dest, {"count": 0, "bytes_sent": 0, "bytes_received": 0,
                                     "duration_total_ns": 0, "duration_min_ns": [],
                                     "duration_max_ns": [], "sport_min": [], "sport_max": [],
                                     "first_timestamp_ns": [], "last_timestamp_ns": []})
        for name in ("count", "bytes_sent", "bytes_received", "duration_total_ns"):
            t[name] += m[name]
        for name in ("duration_min_ns", "duration_max_ns", "sport_min", "sport_max",
                     "first_timestamp_ns", "last_timestamp_ns"):
            t[name].append(m[name])
    for t in totals.values():
        for name in ("duration_min_ns", "sport_min", "first_timestamp_ns"):
            t[name] = min(t[name])
        for name in ("duration_max_ns", "sport_max", "last_timestamp_ns"):
            t[name] = max(t[name])
    return totals


def truth(records):
    totals = {}
    for r in records:
        dest = (".".join(map(str, r["daddr"])), r["dport"])
        totals.setdefault(dest, []).append(r)
    return {dest: {
        "count": len(rs), "bytes_sent": sum(r["bytes_sent"] for r in rs),
        "bytes_received": sum(r["bytes_received"] for r in rs),
        "duration_total_ns": sum(r["duration_ns"] for r in rs),
        "duration_min_ns": min(r["duration_ns"] for r in rs),
        "duration_max_ns": max(r["duration_ns"] for r in rs),
        "sport_min": min(r["sport"] for r in rs), "sport_max": max(r["sport"] for r in rs),
        "first_timestamp_ns": min(r["timestamp_ns"] for r in rs) + B2W,
        "last_timestamp_ns": max(r["timestamp_ns"] for r in rs) + B2W,
    } for dest, rs in totals.items()}


@pytest.mark.parametrize("kind, key", [(TCP_CLOSE, "tcp_close"), (TCP_CONNECT, "tcp_connect"),
                                       (TCP_ACCEPT, "tcp_accept")])
def test_fifty_connections_sum_exactly_per_destination(kind, key):
    records = connections(kind, 50, random.Random(kind))
    proc = processor()
    events = semantic_events(proc, fill(EventArena(64), records))
    assert len(events) == 2 and proc.collapsed == 48  # one event per destination
    assert per_destination(events, key) == truth(records)


def test_totals_do_not_leak_into_the_next_batch():
    """Slots are reused from batch to batch: each batch's totals start from its own events."""
    rnd = random.Random(5)
    proc = processor()
    arena = EventArena(64)
    for n in (50, 7, 2, 33):
        records = connections(TCP_CLOSE, n, rnd)
        events = semantic_events(proc, fill(arena, records))
        assert per_destination(events, "tcp_close") == truth(records)


def test_an_event_alone_carries_no_totals():
    records = connections(TCP_CLOSE, 2, random.Random(1))  # two destinations: nothing collapses
    events = semantic_events(processor(), fill(EventArena(4), records))
    assert [("count" in e, "collapsed" in e) for e in events] == [(False, False)] * 2


def test_exits_and_signals_keep_their_durations_and_times():
    rnd = random.Random(9)
    exits = [{"type": EXIT, "pid": 77, "tid": 77 + k, "cgroup_id": 3, "comm": b"worker",
              "exit_code": 1, "timestamp_ns": 5 * 10**9 + rnd.randrange(10**9),
              "duration_ns": rnd.randrange(1, 10**10)} for k in range(12)]
    signals = [{"type": SIGNAL, "pid": 78, "cgroup_id": 3, "comm": b"worker", "signal": 15,
                "sender_pid": 1, "timestamp_ns": rnd.randrange(10**9)} for _ in range(5)]
    events = semantic_events(processor(), fill(EventArena(32), exits + signals))
    by_type = {e["type"]: e for e in events}
    assert len(events) == 2
    durations = [r["duration_ns"] for r in exits]
    assert by_type["exit"]["count"] == 12
    assert by_type["exit"]["collapsed"] == {
        "first_timestamp_ns": min(r["timestamp_ns"] for r in exits) + B2W,
        "last_timestamp_ns": max(r["timestamp_ns"] for r in exits) + B2W,
        "bytes_sent": 0, "bytes_received": 0, "duration_min_ns": min(durations),
        "duration_max_ns": max(durations), "duration_total_ns": sum(durations),
        "sport_min": 0, "sport_max": 0}
    assert by_type["signal"]["count"] == 5
    assert by_type["signal"]["collapsed"] == {
        "first_timestamp_ns": min(r["timestamp_ns"] for r in signals) + B2W,
        "last_timestamp_ns": max(r["timestamp_ns"] for r in signals) + B2W,
        "bytes_sent": 0, "bytes_received": 0, "duration_min_ns": 0, "duration_max_ns": 0,
        "duration_total_ns": 0, "sport_min": 0, "sport_max": 0}


def test_byte_sums_saturate_instead_of_wrapping():
    records = connections(TCP_CLOSE, 4, random.Random(2))
    for r in records:
        r["daddr"], r["dport"], r["bytes_sent"] = DESTINATIONS[0] + (2**63,)
    events = semantic_events(processor(), fill(EventArena(4), records))
    assert events[0]["count"] == 4 and events[0]["collapsed"]["bytes_sent"] == 2**64 - 1
