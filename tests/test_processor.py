"""The semantic path's per-event work (tapio/_fast/semantic.pyx through DualPathProcessor):
filtering, enrichment lookups, collapsing repeats, priority; and that a flood of routine events
never pushes out an OOM kill or a fatal signal."""
import os
from types import SimpleNamespace

import pytest

from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio.collector.delivery import DeliveryBuffer
from tapio.collector.processor import PATH_RAW, PATH_SEMANTIC, DualPathProcessor, ProcessorConfig
from tapio.v1 import events_pb2
from tests.test_codec_support import EXEC, EXIT, OOM_KILL, SIGNAL, TCP_CONNECT, THROTTLED, arena_of

ME = os.getpid()


def connect(pid=10, dport=80, error=111, comm=b"curl", cgroup=5, daddr=b"\x0a\0\0\x01"):
    return {"type": TCP_CONNECT, "pid": pid, "comm": comm, "cgroup_id": cgroup, "family": 2,
            "daddr": daddr, "dport": dport, "error": error, "direction": 1}


def exit_(pid=10, code=0, signal=0, comm=b"sh"):
    return {"type": EXIT, "pid": pid, "comm": comm, "exit_code": code, "signal": signal, "cgroup_id": 5}


def exec_(pid, ppid, comm=b"sh", filename=b"/bin/sh", args=b"sh\0-c\0true\0"):
    return {"type": EXEC, "pid": pid, "ppid": ppid, "comm": comm, "filename": filename,
            "args": args, "args_size": len(args), "args_count": args.count(b"\0"), "cgroup_id": 5}


class Recorder:
    """Enrichment that records what it was asked, and answers from dicts."""

    def __init__(self, contexts=None, processes=None, paths=None):
        self._contexts = contexts or {}
        self._processes = processes or {}
        self._paths = paths or {}
        self.asked_context, self.asked_process, self.execs, self.exits = [], [], [], []
        self.contexts = SimpleNamespace(context_bytes=self._context, context=lambda cg: None)
        self.processes = SimpleNamespace(process_bytes=self._process, on_exec=self._on_exec,
                                         on_exit=self.exits.append)
        self.cgroup_paths = SimpleNamespace(path=self._paths.get)
        self.restarts = None

    def _context(self, cgroup_id):
        self.asked_context.append(cgroup_id)
        msg = self._contexts.get(cgroup_id)
        return msg.SerializeToString() if msg else None

    def _process(self, pid):
        self.asked_process.append(pid)
        msg = self._processes.get(pid)
        return msg.SerializeToString() if msg else None

    def _on_exec(self, pid, ppid, uid, filename, argv, boot_ns):
        self.execs.append((pid, ppid, filename, argv))

    def on_pod_change(self, callback):
        pass


def run(records, enrichment=None, **config):
    """Process one arena; returns [(path, priority, [event dicts])] per batch."""
    cfg = ProcessorConfig(**{"semantic_batch_size": 1000, **config})
    processor = DualPathProcessor(cfg, enrichment or Recorder())
    arena = arena_of(records, capacity=max(1, len(records)))
    encoder = BatchEncoder("c", "n", 0)
    out = []
    for plan in processor.plans(arena):
        data = encoder.encode(arena, 1, 1, path=plan.path, order=plan.order)
        batch = DecodedBatch.parse(data)
        out.append((plan.path, plan.priority, [batch.event_dict(i) for i in range(len(batch))]))
    return out, processor


def semantic_events(batches):
    return [e for path, _, events in batches if path == PATH_SEMANTIC for e in events]


@pytest.mark.parametrize("records, config, kept_pids", [
    ([connect(pid=1), connect(pid=2, comm=b"noisy")], {"exclude_comms": ("noisy",)}, [1]),
    ([connect(pid=ME), connect(pid=3)], {}, [3]),                                  # the collector itself
    ([exec_(50, ME), connect(pid=50), connect(pid=4)], {}, [4]),                   # ...and its children
    ([connect(pid=1, cgroup=5), connect(pid=2, cgroup=6)], {"include_cgroups": ("/kubepods",)}, [1]),
])
def test_filters(records, config, kept_pids):
    enrichment = Recorder(paths={5: "/kubepods.slice/pod-a", 6: "/system.slice/cron.service"})
    batches, processor = run(records, enrichment, **config)
    assert [e["pid"] for e in semantic_events(batches)] == kept_pids
    assert processor.stats()["filtered"] == len(records) - len(kept_pids)


def test_identical_repeats_collapse_into_one_event_with_a_count():
    records = [connect() for _ in range(20)] + [connect(dport=81), connect(pid=11), exec_(12, 1),
                                                exec_(12, 1)]
    events = semantic_events(run(records)[0])
    assert [(e["pid"], e.get("count", 1)) for e in events if e["type"] == "tcp_connect"] == \
        [(10, 20), (10, 1), (11, 1)]
    assert len([e for e in events if e["type"] == "exec"]) == 2      # each exec is its own
    assert events[0]["id"] == "ebpf-1"                               # the first one stands for all


def test_collapse_can_be_switched_off():
    events = semantic_events(run([connect() for _ in range(5)], collapse_repeats=False)[0])
    assert len(events) == 5


def test_priority_events_go_first_in_their_own_batch():
    records = [connect(pid=1), exit_(pid=2), {"type": OOM_KILL, "pid": 3, "cgroup_id": 5},
               connect(pid=4, error=0), exit_(pid=5, code=1), {"type": SIGNAL, "pid": 6, "signal": 11},
               exit_(pid=7, signal=9)]
    batches = run(records)[0]
    (_, prio, first), (_, routine_flag, second) = batches
    assert prio and not routine_flag
    assert [e["pid"] for e in first] == [3, 5, 6, 7]
    assert [e["pid"] for e in second] == [1, 2, 4]


def test_throttled_summaries_are_routine_enriched_by_their_cgroup_and_never_collapse():
    ctx = events_pb2.Context(container_id="c" * 64, cgroup_path="/kubepods.slice/pod-a")
    summary = {"type": THROTTLED, "pid": 10, "comm": b"stress", "cgroup_id": 5, "exec": 900,
               "budget": 100, "burst": 100, "interval_ns": 10**9}
    batches = run([summary, summary, exit_(pid=11, code=1)], Recorder(contexts={5: ctx}))[0]
    (_, prio, first), (_, routine_flag, second) = batches
    assert [e["type"] for e in first] == ["exit"]
    assert [(e["type"], e.get("count", 1)) for e in second] == [("throttled", 1)] * 2
    assert second[0]["context"]["container_id"] == "c" * 64
    assert second[0]["throttled"]["exec"] == 900


def test_enrichment_is_asked_once_per_cgroup_and_process_and_exec_refreshes_it():
    ctx = events_pb2.Context(container_id="c" * 64, pod_uid="u-1")
    proc = events_pb2.Process(executable="/bin/sh", command_line="sh -c true")
    enrichment = Recorder(contexts={5: ctx}, processes={10: proc})
    records = [connect(pid=10), connect(pid=10, dport=90), exit_(pid=10), exec_(10, 1),
               connect(pid=10, dport=91)]
    events = semantic_events(run(records, enrichment)[0])
    assert enrichment.asked_context == [5]
    assert enrichment.asked_process == [10]          # the exec came first in the batch's pass
    assert enrichment.execs == [(10, 1, b"/bin/sh", [b"sh", b"-c", b"true"])]
    assert enrichment.exits == [10]
    assert all(e["context"]["pod_uid"] == "u-1" for e in events)
    assert all(e["process"]["executable"] == "/bin/sh" for e in events)


def test_raw_path_is_every_event_unenriched_and_both_paths_can_run():
    enrichment = Recorder(contexts={5: events_pb2.Context(pod_uid="u")})
    records = [connect(), connect(), connect(pid=ME)]
    batches, _ = run(records, enrichment, enable_raw_path=True, enable_semantic_path=True)
    raw = [events for path, _, events in batches if path == PATH_RAW]
    assert len(raw) == 1 and len(raw[0]) == 3
    assert not any("context" in e or "count" in e for e in raw[0])
    semantic = semantic_events(batches)
    assert [e.get("count", 1) for e in semantic] == [2]
    assert semantic[0]["id"] == raw[0][0]["id"]          # one kernel event, one id, both paths


def test_raw_rounds_are_cut_into_batches_of_batch_size():
    batches, _ = run([connect(pid=p) for p in range(1, 11)], enable_raw_path=True,
                     enable_semantic_path=False, batch_size=4)
    assert [len(events) for _, _, events in batches] == [4, 4, 2]
    assert [e["id"] for _, _, events in batches for e in events] == [f"ebpf-{i}" for i in range(1, 11)]


def test_a_flood_of_routine_events_never_pushes_out_an_oom_or_a_fatal_signal():
    """Rounds of 200 routine events (each round's connects differ, so nothing collapses), one in
    five with an OOM kill and a SIGSEGV, into a send buffer that holds a few batches only."""
    processor = DualPathProcessor(ProcessorConfig(semantic_batch_size=50), Recorder())
    encoder = BatchEncoder("c", "n", 0)
    buffer = DeliveryBuffer(max_bytes=20_000)
    priority_sent = 0
    batch_id = 0
    for round_ in range(50):
        records = [connect(pid=1000 + i, dport=round_ + 1) for i in range(200)]
        if round_ % 5 == 0:
            records += [{"type": OOM_KILL, "pid": 7, "cgroup_id": 5}, {"type": SIGNAL, "pid": 8, "signal": 11}]
        arena = arena_of(records)
        for plan in processor.plans(arena):
            batch_id += 1
            data = encoder.encode(arena, batch_id, 1, order=plan.order)
            buffer.add(batch_id, data, len(plan.order), plan.priority)
            priority_sent += plan.priority
    held = buffer.items()
    assert buffer.dropped_events > 0                              # the flood did overflow it
    assert sum(p.priority for p in held) == priority_sent == 10   # and no priority batch went
    assert all(p.priority for p in buffer.unsent()[:priority_sent])


def plan_slots(records, **config):
    cfg = ProcessorConfig(**config)
    processor = DualPathProcessor(cfg, Recorder())
    arena = arena_of(records, capacity=max(1, len(records)))
    return [(plan.path, plan.priority, plan.slots, list(plan.order) if plan.order is not None else None)
            for plan in processor.plans(arena)]


def test_raw_plans_partition_the_round_into_ranges():
    records = [connect(pid=100 + i, dport=1000 + i) for i in range(7)]
    plans = plan_slots(records, enable_raw_path=True, enable_semantic_path=False, batch_size=3)
    assert [p[2] for p in plans] == [(0, 2), (3, 5), (6, 6)]


def test_semantic_plans_partition_the_round_and_priority_batches_carry_no_range():
    records = [connect(pid=100 + i, dport=1000 + i) for i in range(5)]
    records.insert(2, exit_(pid=50, signal=11))                 # a fatal signal: priority
    records.append(connect(pid=ME))                              # our own: filtered, last slot
    plans = plan_slots(records, semantic_batch_size=2)
    priority = [p for p in plans if p[1]]
    routine = [p for p in plans if not p[1]]
    assert [(p[2], p[3]) for p in priority] == [(None, [2])]
    assert [(p[2], p[3]) for p in routine] == [((0, 1), [0, 1]), ((2, 4), [3, 4]), ((5, 6), [5])]


def test_a_round_with_nothing_routine_still_has_a_batch_for_its_range():
    records = [exit_(pid=50, signal=11), connect(pid=ME)]
    plans = plan_slots(records)
    assert [(p[1], p[2], p[3]) for p in plans] == [(True, None, [0]), (False, (0, 1), [])]
