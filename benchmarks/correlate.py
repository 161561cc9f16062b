"""The correlation engine's hot path against a plain-Python baseline doing the same job the simple
way (the Baseline class below: less work than ours), measured in the same run.

    python benchmarks/correlate.py [--json PATH] [--events N] [--seconds S]

A fixed-seed stream of enriched (semantic-path) events as a busy Kubernetes node sends them:
process churn (shells and their children, 5% of exits failing, in 200 containers), connects
(1% of them to 3 destinations that refuse, some collapsed with a count), accepts and closes, a few
fatal signals (5 in 10,000 events) and OOM kills (1 in 10,000); batches of 512 as wire bytes.
Best of several runs of the whole stream, from a fresh state each time:

  decode + correlate  ours: DecodedBatch.parse + Correlator.feed (the C process table, its trees
                      and the connection table), tick() every 20 batches;
                      baseline: the `protobuf` library's parse + the plain-Python Baseline below
                      (a dict update per event, fewer rules than ours), the same ticks;
  correlate           the same, from already decoded / parsed batches;
  engine (+ groups)   ours, what the server runs per batch: parse + CorrelationEngine.consume
                      (the above, plus group building in Python for failed exits, signals, OOM
                      kills, finished trees and degraded destinations, to a null sink); on the
                      stream above, and on a stormier one where 4% of connects fail (many more
                      connectivity groups, each re-read as it grows).

Ours and the baseline must agree on the hot events and the destinations that crossed the threshold
(the run fails otherwise); the baseline's tree count follows its simpler rules and is only shown.
"""
import argparse
import collections
import random
import time

from _common import best_rate, machine, print_table, write_json
from tapio._fast.codec import DecodedBatch
from tapio._fast.correlate import Correlator
from tapio.server.correlation import CorrelationConfig, CorrelationEngine
from tapio.v1 import events_pb2, stream_pb2

BATCH = 512
TICK_EVERY = 20
SEC = 1_000_000_000
T0 = 1_764_000_000 * SEC
EXEC, EXIT, CONNECT, ACCEPT, CLOSE, OOM, SIGNAL = range(1, 8)
COMMANDS = [("/bin/sh", "sh"), ("/usr/bin/curl", "curl"), ("/usr/bin/python3.11", "python3"),
            ("/usr/local/bin/node", "node"), ("/usr/bin/git", "git"), ("/usr/bin/ls", "ls"),
            ("/usr/bin/grep", "grep"), ("/usr/bin/kubectl", "kubectl")]


# ---- the stream ---------------------------------------------------------------------------------

class Node:
    """Generates the events of a busy node, in time order."""

    def __init__(self, seed=42, failing_connects=0.01):
        self.rnd = random.Random(seed)
        self.failing_connects = failing_connects
        self.children = {}      # pid -> live children
        self.now = T0
        self.seq = 0
        self.next_pid = 10_000
        self.contexts = [events_pb2.Context(
            container_id=f"{self.rnd.getrandbits(256):064x}", container_runtime="containerd",
            pod_uid=f"{self.rnd.getrandbits(128):032x}", pod_name=f"app-{i}-7d9f", namespace="default",
            container_name=f"app-{i}", qos_class="Burstable", cgroup_path=f"/kubepods.slice/pod{i}")
            for i in range(200)]
        self.live = []          # (pid, ppid, comm, cgroup index, children left, start)
        self.servers = [bytes([10, 0, i // 256, i % 256]) for i in range(50)]
        self.refusing = self.servers[:3]

    def _event(self, type_, pid, ppid, comm, cg, count=1):
        self.seq += 1
        self.now += self.rnd.randint(2_000, 20_000)
        e = events_pb2.Event(id=f"ebpf-{self.seq}", type=type_, timestamp_ns=self.now, pid=pid, tid=pid,
                             ppid=ppid, uid=0, gid=0, cgroup_id=1000 + cg, comm=comm)
        if count > 1:
            e.count = count
        e.context.CopyFrom(self.contexts[cg])
        return e

    def _exec(self, ppid, cg, ancestors):
        pid = self.next_pid
        self.next_pid += 1
        path, comm = self.rnd.choice(COMMANDS)
        e = self._event(EXEC, pid, ppid, comm, cg)
        e.exec.filename = path
        e.exec.args.extend([comm, "--flag", "value"])
        e.exec.args_count = 3
        e.process.executable = path
        e.process.command_line = f"{comm} --flag value"
        e.process.user = "root"
        e.process.ancestors.extend(ancestors)
        e.process.start_time_ns = self.now
        return pid, comm, e

    def events(self, n):
        out = []
        rnd = self.rnd
        while len(out) < n:
            x = rnd.random()
            if x < 0.12 and len(self.live) < 400:                 # a new tree or a child
                parents = [p for p in self.live if p[4] > 0]
                if parents and rnd.random() < 0.7:
                    i = self.live.index(rnd.choice(parents))
                    ppid, _, _, cg, left, _ = self.live[i]
                    self.live[i] = self.live[i][:4] + (left - 1,) + self.live[i][5:]
                    pid, comm, e = self._exec(ppid, cg, [ppid, 1])
                    self.live.append((pid, ppid, comm, cg, 0, self.now))
                    self.children[ppid] = self.children.get(ppid, 0) + 1
                else:
                    cg = rnd.randrange(len(self.contexts))
                    pid, comm, e = self._exec(1, cg, [1])
                    self.live.append((pid, 1, comm, cg, rnd.choice([0, 1, 2, 3]), self.now))
                out.append(e)
            elif x < 0.24 and self.live:                           # an exit: leaves first
                leaves = [p for p in self.live if not self.children.get(p[0])]
                pid, ppid, comm, cg, _, start = rnd.choice(leaves or self.live)
                self.live = [p for p in self.live if p[0] != pid]
                if self.children.get(ppid):
                    self.children[ppid] -= 1
                e = self._event(EXIT, pid, ppid, comm, cg)
                failed = rnd.random() < 0.05
                e.exit.exit_code = 1 if failed else 0
                e.exit.start_time_ns = start
                e.exit.duration_ns = self.now - start
                out.append(e)
            elif x < 0.80:                                         # connect
                cg = rnd.randrange(len(self.contexts))
                pid = 5_000 + cg
                bad = rnd.random() < self.failing_connects
                e = self._event(CONNECT, pid, 1, "app", cg, count=rnd.choice([1, 1, 1, 4]) if bad else 1)
                t = e.tcp_connect
                t.family = 4
                t.saddr = bytes([10, 1, cg // 256, cg % 256])
                t.daddr = rnd.choice(self.refusing if bad else self.servers)
                t.sport = rnd.randint(30_000, 60_000)
                t.dport = 5432 if bad else 443
                t.result = 1 if bad else 0
                t.error = 111 if bad else 0
                t.duration_ns = rnd.randint(20_000, 500_000)
                out.append(e)
            elif x < 0.9994:                                       # accept / close
                cg = rnd.randrange(len(self.contexts))
                kind = ACCEPT if rnd.random() < 0.3 else CLOSE
                e = self._event(kind, 5_000 + cg, 1, "app", cg)
                t = e.tcp_accept if kind == ACCEPT else e.tcp_close
                t.family = 4
                t.saddr = bytes([10, 1, cg // 256, cg % 256])
                t.daddr = rnd.choice(self.servers)
                t.sport, t.dport = 443, rnd.randint(30_000, 60_000)
                if kind == CLOSE:
                    t.bytes_sent, t.bytes_received = rnd.randint(0, 1 << 20), rnd.randint(0, 1 << 20)
                    t.duration_ns = rnd.randint(1_000_000, 10 * SEC)
                else:
                    t.passive = True
                out.append(e)
            elif x < 0.9999:                                       # a fatal signal
                cg = rnd.randrange(len(self.contexts))
                e = self._event(SIGNAL, 9_000_000 + self.seq, 1, "crashy", cg)
                e.signal.signal, e.signal.code, e.signal.sender_pid = 11, 1, e.pid
                out.append(e)
            else:                                                  # an OOM kill
                cg = rnd.randrange(len(self.contexts))
                e = self._event(OOM, 9_500_000 + self.seq, 1, "java", cg)
                o = e.oom_kill
                o.memcg_limit_bytes, o.memcg_usage_bytes, o.rss_bytes = 512 << 20, 512 << 20, 500 << 20
                o.memcg_name = f"pod{cg}"
                out.append(e)
        return out[:n]


def wire_batches(events):
    out = []
    for i in range(0, len(events), BATCH):
        request = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
            batch_id=i // BATCH + 1, collector_id="node-a", node_name="node-a",
            events=events[i:i + BATCH], created_at_ns=events[i].timestamp_ns, path=2))
        out.append(request.SerializeToString())
    return out


# ---- the baseline ---------------------------------------------------------------------------------

class Baseline:
    """The same job done the plain way in Python, as the yardstick: the `protobuf` library's
    parse, then per event a dict update. Processes: pid -> root pid, and per root the tree's
    pids, live count and failures; a tree closes when its last process exits and is a group at
    min_processes (or min_processes_failed with a failure). Connects: per (cgroup, destination)
    the newest `threshold` failure times; a group opens when they span at most `window` and
    closes after `close_after` without a failure. It leaves out what the compiled core also does
    (placeholders from ancestor lists, early exits matched to late execs, cgroup moves, grace
    periods, bounded tables, event references), so it is less work than ours: a generous
    baseline. Hot events and degraded destinations must come out the same as ours."""

    def __init__(self, cfg):
        self.tree, self.conn = cfg.process_tree, cfg.connectivity
        self.fail_codes = set(cfg.connect_failure_codes())
        self.root_of = {}           # pid -> root pid
        self.trees = {}             # root pid -> [pids, live, failed]
        self.failing = {}           # destination -> [deque of failure times, open, last failure]
        self.trees_emitted = self.conn_groups = self.hot = 0

    def feed(self, request):
        for e in request.batch.events:
            if e.type == EXEC and e.HasField("exec"):
                root = self.root_of.get(e.ppid, e.pid)
                tree = self.trees.setdefault(root, [[], 0, 0])
                if e.pid not in self.root_of:
                    tree[0].append(e.pid)
                    tree[1] += 1
                    self.root_of[e.pid] = root
            elif e.type == EXIT and e.HasField("exit"):
                failed = bool(e.exit.exit_code or e.exit.signal)
                self.hot += failed
                root = self.root_of.get(e.pid)
                if root is None:
                    continue
                tree = self.trees[root]
                tree[1] -= 1
                tree[2] += failed
                if tree[1] == 0:
                    del self.trees[root]
                    for pid in tree[0]:
                        self.root_of.pop(pid, None)
                    n = len(tree[0])
                    self.trees_emitted += (n >= self.tree.min_processes
                                           or (tree[2] > 0 and n >= self.tree.min_processes_failed))
            elif e.type == CONNECT and e.HasField("tcp_connect"):
                t = e.tcp_connect
                if t.result not in self.fail_codes:
                    continue
                key = (e.cgroup_id, t.daddr, t.dport)
                state = self.failing.get(key)
                if state is None:
                    state = self.failing[key] = [collections.deque(maxlen=self.conn.threshold), False, 0]
                state[2] = e.timestamp_ns
                if not state[1]:
                    state[0].extend([e.timestamp_ns] * min(e.count or 1, self.conn.threshold))
                    if (len(state[0]) == self.conn.threshold
                            and e.timestamp_ns - state[0][0] <= self.conn.window * SEC):
                        state[1] = True
                        self.conn_groups += 1
            elif e.type in (SIGNAL, OOM):
                self.hot += 1

    def tick(self, now):
        for key, (ring, opened, last) in list(self.failing.items()):
            if now >= last + (self.conn.close_after if opened else self.conn.window) * SEC:
                del self.failing[key]


# ---- measurements ---------------------------------------------------------------------------------

def engine_rate(cfg, wire, seconds):
    """Events/s of what the server runs per batch: parse + CorrelationEngine.consume, ticks."""
    class State:
        collector_id = "node-a"
        node_name = "node-a"
    groups = [0]

    def run_once():
        eng = CorrelationEngine(cfg, on_group=lambda g, closed: groups.__setitem__(0, groups[0] + 1),
                                timer=False)
        start = time.perf_counter()
        for i, raw in enumerate(wire):
            eng.consume(DecodedBatch.parse(raw), State)
            if i % TICK_EVERY == TICK_EVERY - 1:
                eng.tick()
        eng.close()
        return time.perf_counter() - start
    n = sum(len(DecodedBatch.parse(raw)) for raw in wire)
    rate, runs = best_rate(run_once, n, seconds)
    return rate, runs, groups[0] // max(1, runs)


def run(n_events, seconds):
    cfg = CorrelationConfig()
    node = Node()
    events = node.events(n_events)
    wire = wire_batches(events)
    storm = wire_batches(Node(seed=7, failing_connects=0.04).events(n_events))
    last_ts = events[-1].timestamp_ns
    decoded = [DecodedBatch.parse(b) for b in wire]
    parsed = [stream_pb2.TapioStreamEventsRequest.FromString(b) for b in wire]
    batch_max = [max(e.timestamp_ns for e in p.batch.events) for p in parsed]

    def new_core():
        tree, conn = cfg.process_tree, cfg.connectivity
        return Correlator(max_processes=cfg.limits.max_processes, max_tree_processes=tree.max_processes,
                          min_processes=tree.min_processes, min_processes_failed=tree.min_processes_failed,
                          tree_grace_s=tree.grace, tree_max_s=tree.max_duration,
                          max_connections=cfg.limits.max_destinations, conn_threshold=conn.threshold,
                          conn_window_s=conn.window, conn_close_after_s=conn.close_after,
                          conn_max_s=conn.max_duration, conn_failures=cfg.connect_failure_codes())

    found = {}

    def ours(decode):
        core = new_core()
        hot = trees = 0
        start = time.perf_counter()
        for i, raw in enumerate(wire):
            batch = DecodedBatch.parse(raw) if decode else decoded[i]
            _, h, _, _ = core.feed(batch)
            hot += len(h) if h else 0
            if i % TICK_EVERY == TICK_EVERY - 1:
                trees += len(core.tick(batch_max[i])[0])
        trees += len(core.tick(last_ts + 3600 * SEC, True)[0])
        elapsed = time.perf_counter() - start
        found["ours"] = {"trees": trees, "destinations": core.stats()["connectivity_groups"], "hot": hot}
        return elapsed

    def baseline(decode):
        base = Baseline(cfg)
        start = time.perf_counter()
        for i, raw in enumerate(wire):
            base.feed(stream_pb2.TapioStreamEventsRequest.FromString(raw) if decode else parsed[i])
            if i % TICK_EVERY == TICK_EVERY - 1:
                base.tick(batch_max[i])
        elapsed = time.perf_counter() - start
        found["baseline"] = {"destinations": base.conn_groups, "hot": base.hot,
                             "trees (simpler rules)": base.trees_emitted}
        return elapsed

    rows = []
    for operation, decode in (("decode + correlate", True), ("correlate", False)):
        rate_ours, runs_ours = best_rate(lambda: ours(decode), len(events), seconds)
        rate_base, runs_base = best_rate(lambda: baseline(decode), len(events), seconds, min_runs=2)
        same = ("destinations", "hot")
        if any(found["ours"][k] != found["baseline"][k] for k in same):
            raise SystemExit(f"ours and the baseline disagree: ours {found['ours']}, baseline {found['baseline']}")
        rows.append({"operation": operation, "implementation": "ours (Cython, C state)",
                     "events_per_s": int(rate_ours), "runs": runs_ours,
                     "vs_baseline": round(rate_ours / rate_base, 1)})
        rows.append({"operation": operation, "implementation": "baseline (pure Python)",
                     "events_per_s": int(rate_base), "runs": runs_base, "vs_baseline": 1.0})
    group_counts = {}
    for mix, stream in (("1% failing connects", wire), ("4% failing connects", storm)):
        rate, runs, n_groups = engine_rate(cfg, stream, seconds)
        group_counts[mix] = n_groups
        rows.append({"operation": f"engine (+ groups), {mix}", "implementation": "ours",
                     "events_per_s": int(rate), "runs": runs,
                     "vs_baseline": round(rate / rows[1]["events_per_s"], 1)})
    return {
        "benchmark": "correlate", "events": len(events), "batch": BATCH, "tick_every_batches": TICK_EVERY,
        "found": found["ours"], "group_versions_per_engine_run": group_counts,
        "measurements": rows, "machine": machine(), "target_events_per_s": 500_000,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    ap.add_argument("--events", type=int, default=BATCH * 200, help="events in the stream (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default %(default)s)")
    args = ap.parse_args()
    if args.events < BATCH or args.seconds <= 0:
        ap.error(f"--events must be at least {BATCH} and --seconds positive")
    report = run(args.events, args.seconds)
    f = report["found"]
    print(f"correlate: {report['events']} events in batches of {BATCH}, one core; ours found "
          f"{f['trees']} process trees, {f['destinations']} degraded destinations, {f['hot']} hot events "
          f"(the baseline the same destinations and hot events); {report['machine']['cpu_count']} CPUs")
    print_table(["operation", "implementation", "events/s", "vs baseline"],
                [(r["operation"], r["implementation"], f"{r['events_per_s']:,}", f"{r['vs_baseline']}x")
                 for r in report["measurements"]])
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
