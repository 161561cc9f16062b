"""The per-cgroup budget (--cgroup-budget) without a kernel: records pushed into a real arena
through the real throttle, summaries encoded and decoded by the real codec, a real pump and ledger.
Each test knows what it pushed, so it knows what must pass and what must be counted."""
import argparse

import pytest
import trio

from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio._fast.throttling import Throttle
from tapio.collector.budget import CgroupBudget, parse_budget, parse_burst
from tapio.collector.ledger import Ledger
from tapio.collector.processor import DualPathProcessor, ProcessorConfig
from tapio.collector.pump import Pump
from tests.test_codec_support import (EXEC, EXIT, OOM_KILL, SIGNAL, TCP_ACCEPT, TCP_CLOSE,
                                      TCP_CONNECT, pack)
from tests.test_pump import RecordingSink

SECOND = 10**9
NOISY, QUIET = 7001, 7002


def event(type, ts, cgroup=NOISY, pid=100, comm=b"storm", **fields):
    return pack({"type": type, "timestamp_ns": ts, "cgroup_id": cgroup, "pid": pid, "comm": comm,
                 **fields})


def push_all(arena, records):
    """How many of the records the arena stored."""
    return sum(1 for r in records if arena.push_bytes(r))


def decode(arena):
    data = BatchEncoder("c", "n", 0).encode(arena, 1, 1)
    batch = DecodedBatch.parse(data)
    return [batch.event_dict(i) for i in range(len(batch))]


def test_a_burst_passes_then_the_rest_is_counted_by_type():
    arena = EventArena(1000)
    throttle = Throttle(10, SECOND, burst=10)
    throttle.attach(arena)
    kinds = [EXEC, TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE]
    records = [event(kinds[i % 4], 5 * SECOND) for i in range(100)]
    assert push_all(arena, records) == 10
    assert throttle.suppressed == 90 and throttle.pending == 90
    summary = throttle.emit(arena, now_ns=7 * SECOND)
    # the first ten (2.5 rounds of the four kinds) passed: execs 0,4,8 and connects 1,5,9
    assert summary == [(NOISY, (22, 22, 23, 23))]
    assert throttle.pending == 0 and len(arena) == 11


def test_exits_oom_kills_and_fatal_signals_always_pass_and_cost_nothing():
    arena = EventArena(1000)
    throttle = Throttle(1, SECOND, burst=1)
    throttle.attach(arena)
    ts = 3 * SECOND
    never = [event(EXIT, ts), event(EXIT, ts, exit_code=1), event(EXIT, ts, signal=11),
             event(SIGNAL, ts, signal=11), event(OOM_KILL, ts)] * 50
    assert push_all(arena, never) == len(never)
    # the budget is untouched: one exec still fits, the next does not
    assert push_all(arena, [event(EXEC, ts), event(EXEC, ts)]) == 1
    assert throttle.suppressed == 1


def test_a_cgroup_within_its_rate_loses_nothing_and_others_are_judged_apart():
    arena = EventArena(5000)
    throttle = Throttle(100, SECOND, burst=5)
    throttle.attach(arena)
    # 100/s exactly, for 10 s: never over
    steady = [event(EXEC, SECOND + i * SECOND // 100, cgroup=QUIET) for i in range(1000)]
    storm = [event(TCP_CONNECT, 2 * SECOND, cgroup=NOISY) for _ in range(500)]
    records = [r for pair in zip(steady, storm) for r in pair] + steady[500:]
    assert push_all(arena, records) == 1000 + 5
    summaries = dict(throttle.emit(arena, everything=True))
    assert summaries == {NOISY: (0, 495, 0, 0)}


def test_a_summary_waits_for_its_interval_to_end_and_carries_the_cgroup_and_the_last_process():
    arena = EventArena(100)
    throttle = Throttle(2, SECOND, burst=2)
    throttle.attach(arena)
    push_all(arena, [event(EXEC, 10 * SECOND + 100, pid=1 + i, comm=b"fork%d" % i) for i in range(6)])
    assert throttle.emit(arena, now_ns=10 * SECOND + 500) == []      # the interval runs to 11 s
    arena.clear()
    assert throttle.emit(arena, now_ns=11 * SECOND) == [(NOISY, (4, 0, 0, 0))]
    [d] = decode(arena)
    assert d["type"] == "throttled" and d["cgroup_id"] == NOISY
    assert (d["pid"], d["comm"]) == (6, "fork5")
    assert d["timestamp_ns"] == 11 * SECOND
    assert d["throttled"] == {"first_timestamp_ns": 10 * SECOND + 100,
                              "last_timestamp_ns": 10 * SECOND + 100, "exec": 4, "tcp_connect": 0,
                              "tcp_accept": 0, "tcp_close": 0, "budget": 2, "burst": 2,
                              "interval_ns": SECOND}
    assert throttle.emit(arena, now_ns=20 * SECOND) == []            # said once
    # an event of that interval read late (it waited in the ring buffer) goes into the next one
    arena.clear()
    arena.push_bytes(event(TCP_CLOSE, 10 * SECOND + 200))
    assert throttle.emit(arena, now_ns=11 * SECOND + 1) == []
    assert throttle.emit(arena, now_ns=12 * SECOND) == [(NOISY, (0, 0, 0, 1))]
    assert decode(arena)[0]["timestamp_ns"] == 12 * SECOND


def test_a_full_arena_keeps_summaries_for_the_next_round():
    arena = EventArena(4)
    throttle = Throttle(1, SECOND, burst=1)
    throttle.attach(arena)
    for cgroup in range(1, 7):
        arena.push_bytes(event(EXEC, SECOND, cgroup=cgroup))
        arena.clear()
        arena.push_bytes(event(EXEC, SECOND, cgroup=cgroup))
    assert throttle.suppressed == 6 and len(arena) == 0
    assert len(throttle.emit(arena, everything=True)) == 4
    arena.clear()
    assert len(throttle.emit(arena, everything=True)) == 2
    assert throttle.pending == 0


def test_a_full_table_lets_new_cgroups_pass_untracked_and_idle_ones_are_forgotten():
    arena = EventArena(1000)
    throttle = Throttle(1, SECOND, burst=1, cgroups=16)
    throttle.attach(arena)
    assert push_all(arena, [event(EXEC, SECOND, cgroup=c) for c in range(1, 21)]) == 20
    assert throttle.cgroups == 16 and throttle.untracked == 4
    # a round later every bucket is full again and nothing is pending: the table empties
    throttle.emit(arena, now_ns=5 * SECOND)
    assert throttle.cgroups == 0


@pytest.mark.parametrize("text, value", [("0", None), ("off", None), ("2000/s", (2000, SECOND)),
                                         ("2000", (2000, SECOND)), ("500/100ms", (500, SECOND // 10)),
                                         ("60/1m", (60, 60 * SECOND))])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["x/s", "-1/s", "10/2h", "10/0s", "5/ms/s", "2000/parsec"])
def test_parse_budget_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_budget(text)


@pytest.mark.parametrize("text", ["-1", "x", "1000000001", "1e3"])
def test_parse_burst_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_burst(text)


def test_a_burst_longer_than_the_table_can_count_is_refused():
    with pytest.raises(ValueError, match="burst"):
        Throttle(1, 3600 * SECOND, burst=10**9)


class ListSource:
    """The kernel's role, played by a list: records go through arena_push (and so the throttle)
    as the ring buffer's would."""
    event_types = frozenset()

    def __init__(self, records):
        self.records = list(records)

    @property
    def exhausted(self):
        return not self.records

    async def wait(self):
        await trio.sleep(0.01)

    def fill(self, arena):
        stored = 0
        while self.records and not arena.full:
            if arena.push_bytes(self.records.pop(0)):
                stored += 1
        return stored

    def kernel_drops_since_last(self):
        return 0


@pytest.mark.parametrize("path", ["raw", "semantic"])
async def test_the_pump_sends_summaries_and_the_ledger_closes(autojump_clock, path):
    storm = [event(EXEC if i % 2 else TCP_CONNECT, SECOND + i * 1000, pid=500 + i) for i in range(400)]
    quiet = [event(EXEC, SECOND + i * 1000, cgroup=QUIET, pid=9000 + i, comm=b"quiet")
             for i in range(30)]
    exits = [event(EXIT, SECOND + i * 1000, pid=500 + i) for i in range(400)]
    records = [r for pair in zip(storm, exits) for r in pair] + quiet
    config = ProcessorConfig(enable_raw_path=path == "raw", enable_semantic_path=path == "semantic",
                             collapse_repeats=False)
    processor = DualPathProcessor(config)
    sink = RecordingSink()
    budget = CgroupBudget(100, SECOND, burst=50)
    pump = Pump(ListSource(records), sink, BatchEncoder("c", "n", 0), processor, 200, 0.1,
                first_batch_id=1, read_interval=0.001, budget=budget)
    await pump.run()
    events = [b[2].event_dict(i) for b in sink.batches for i in range(len(b[2]))]
    by_type = {}
    for e in events:
        by_type[e["type"]] = by_type.get(e["type"], 0) + 1
    summaries = [e["throttled"] for e in events if e["type"] == "throttled"]
    assert by_type["exit"] == 400                      # every exit, though the cgroup was noisy
    assert sum(1 for e in events if e["comm"] == "quiet") == 30
    sent_noisy = sum(1 for e in events if e["cgroup_id"] == NOISY and e["type"] in ("exec", "tcp_connect"))
    held = sum(s["exec"] + s["tcp_connect"] for s in summaries)
    assert sent_noisy == 50 and sent_noisy + held == 400
    totals = Ledger(pump, processor, sink).totals()
    assert totals.throttled == 350 and totals.unaccounted == 0, totals.as_dict()
    assert budget.top(5)[0][:2] == (NOISY, 350)
