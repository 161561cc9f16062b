"""The correlation engine's hot path against a pure-Python baseline of the same logic, measured in
the same run.

    python benchmarks/correlate.py [--json PATH] [--events N] [--seconds S]

A fixed-seed stream of enriched (semantic-path) events as a busy Kubernetes node sends them:
process churn (shells and their children, 5% of exits failing, in 200 containers), connects
(1% of them to 3 destinations that refuse, some collapsed with a count), accepts and closes, a few
fatal signals (5 in 10,000 events) and OOM kills (1 in 10,000); batches of 512 as wire bytes.
Best of several runs of the whole stream, from a fresh state each time:

  decode + correlate  ours: DecodedBatch.parse + Correlator.feed (the C process table, its trees
                      and the connection table), tick() every 20 batches;
                      baseline: the `protobuf` library's parse + the same logic in Python (dicts
                      and objects per process and destination), the same ticks;
  correlate           the same, from already decoded / parsed batches;
  engine (+ groups)   ours, what the server runs per batch: parse + CorrelationEngine.consume
                      (the above, plus group building in Python for failed exits, signals, OOM
                      kills, finished trees and degraded destinations, to a null sink); on the
                      stream above, and on a stormier one where 4% of connects fail (many more
                      connectivity groups, each re-read as it grows).

Both implementations must agree on what they found (trees emitted, destinations that crossed the
threshold, hot events): the run fails otherwise.
"""
import argparse
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


# ---- the pure-Python baseline: the same state logic as tapio/_fast/correlate.pyx ----------------

class PyProc:
    __slots__ = ("pid", "ppid", "parent", "children", "root", "state", "exec_seen", "placeholder",
                 "start_ns", "exit_ns", "code", "signal", "cgroup", "comm", "first_exec", "exit_ref",
                 "n_procs", "n_live", "n_failed", "closing", "close_at", "opened_ns")

    def __init__(self, pid):
        self.pid = pid
        self.parent = None
        self.children = []
        self.root = self
        self.state = "live"
        self.exec_seen = False
        self.placeholder = False
        self.first_exec = self.exit_ref = None
        self.n_procs = self.n_live = self.n_failed = 0
        self.closing = False
        self.close_at = self.start_ns = self.exit_ns = self.opened_ns = 0
        self.code = self.signal = self.ppid = self.cgroup = 0
        self.comm = ""


class PyConn:
    __slots__ = ("ring", "failures", "successes", "open", "first_ns", "last_fail_ns", "opened_ns",
                 "refs", "ok_refs", "by_result")

    def __init__(self, threshold):
        from collections import deque
        self.ring = deque(maxlen=threshold)
        self.failures = self.successes = 0
        self.open = False
        self.first_ns = self.last_fail_ns = self.opened_ns = 0
        self.refs = []
        self.ok_refs = []
        self.by_result = [0] * 6


class PyCorrelator:
    def __init__(self, cfg):
        self.cfg = cfg
        self.pids = {}
        self.roots = set()
        self.closing = []
        self.conns = {}
        self.grace = int(cfg.process_tree.grace * SEC)
        self.tree_max = int(cfg.process_tree.max_duration * SEC)
        self.threshold = cfg.connectivity.threshold
        self.window = int(cfg.connectivity.window * SEC)
        self.close_after = int(cfg.connectivity.close_after * SEC)
        self.fail_codes = set(cfg.connect_failure_codes())
        self.trees_emitted = self.conn_groups = self.hot = 0
        self.ordinal = 0

    def feed(self, request):
        self.ordinal += 1
        for index, e in enumerate(request.batch.events):
            which = e.WhichOneof("details")
            if which is None or which != events_pb2.EventType.Name(e.type)[len("EVENT_TYPE_"):].lower():
                continue
            ref = (e.id, self.ordinal, index)
            if e.type == CONNECT:
                self._connect(e, ref)
            elif e.type == EXEC:
                self._exec(e, ref)
            elif e.type == EXIT:
                self._exit(e, ref)
                if e.exit.exit_code or e.exit.signal:
                    self.hot += 1
            elif e.type in (SIGNAL, OOM):
                self.hot += 1

    def _live_parent(self, p, at):
        return p.state == "live" or p.exit_ns >= at

    def _link(self, parent, child):
        child.parent = parent
        child.root = parent.root
        parent.children.append(child)

    def _schedule(self, root, at):
        root.close_at = at + self.grace
        if not root.closing:
            root.closing = True
            self.closing.append(root)

    def _exec(self, e, ref):
        at = e.timestamp_ns
        p = self.pids.get(e.pid)
        if p is not None:
            if p.state == "live":
                if not p.exec_seen:
                    p.start_ns, p.first_exec, p.exec_seen, p.placeholder = at, ref, True, False
                p.comm = e.comm
                return
            if at <= p.exit_ns:
                if not p.exec_seen or at < p.start_ns:
                    p.start_ns, p.first_exec = at, ref
                p.exec_seen = True
                return
        parent = self.pids.get(e.ppid)
        if parent is not None and not self._live_parent(parent, at):
            parent = None
        if parent is None and len(e.process.ancestors) >= 2 and e.process.ancestors[0] == e.ppid:
            chain = list(e.process.ancestors)
            for i in range(1, len(chain)):
                known = self.pids.get(chain[i])
                if known is not None and self._live_parent(known, at):
                    if known.cgroup == e.cgroup_id:
                        for pid in reversed(chain[:i]):
                            ph = PyProc(pid)
                            ph.placeholder, ph.start_ns, ph.cgroup, ph.comm = True, at, known.cgroup, known.comm
                            self._link(known, ph)
                            ph.root.n_procs += 1
                            ph.root.n_live += 1
                            self.pids[pid] = ph
                            known = ph
                        parent = known
                    break
        if parent is not None and parent.cgroup != e.cgroup_id:
            parent = None
        p = PyProc(e.pid)
        p.ppid, p.start_ns, p.cgroup, p.comm, p.exec_seen, p.first_exec = e.ppid, at, e.cgroup_id, e.comm, True, ref
        if parent is not None:
            if parent.root.n_procs >= self.cfg.process_tree.max_processes:
                return
            self._link(parent, p)
        else:
            p.opened_ns = at
            self.roots.add(p)
        p.root.n_procs += 1
        p.root.n_live += 1
        self.pids[e.pid] = p

    def _exit(self, e, ref):
        at = e.timestamp_ns
        p = self.pids.get(e.pid)
        if p is not None and p.state == "live":
            root = p.root
            root.n_live -= 1
        else:
            parent = self.pids.get(e.ppid)
            if parent is not None and not self._live_parent(parent, at):
                parent = None
            p = PyProc(e.pid)
            p.ppid, p.cgroup, p.start_ns = e.ppid, e.cgroup_id, e.exit.start_time_ns or at
            if parent is not None:
                self._link(parent, p)
            else:
                p.opened_ns = at
                self.roots.add(p)
            root = p.root
            root.n_procs += 1
            self.pids[e.pid] = p
        p.state, p.exit_ns, p.code, p.signal, p.exit_ref, p.comm = "exited", at, e.exit.exit_code, e.exit.signal, ref, e.comm
        if e.exit.exit_code or e.exit.signal:
            root.n_failed += 1
        if root.n_live == 0 and root.state == "exited":
            self._schedule(root, at)

    def _connect(self, e, ref):
        t = e.tcp_connect
        key = (e.cgroup_id, t.family, t.daddr, t.dport)
        n = e.count or 1
        failed = t.result in self.fail_codes
        c = self.conns.get(key)
        if c is None:
            if not failed:
                return
            c = self.conns[key] = PyConn(self.threshold)
        c.by_result[t.result if t.result < 6 else 5] += n
        if not failed:
            c.successes += n
            if c.open and len(c.ok_refs) < 8:
                c.ok_refs.append(ref)
            return
        c.failures += n
        c.first_ns = c.first_ns or e.timestamp_ns
        c.last_fail_ns = e.timestamp_ns
        if len(c.refs) < 32:
            c.refs.append(ref)
        if c.open:
            return
        c.ring.extend([e.timestamp_ns] * min(n, self.threshold))
        if len(c.ring) == self.threshold and e.timestamp_ns - c.ring[0] <= self.window:
            c.open = True
            c.opened_ns = e.timestamp_ns
            self.conn_groups += 1

    def _close_tree(self, root, out, emit=True):
        self.roots.discard(root)
        nodes, stack = [], [root]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children)
        tree = self.cfg.process_tree
        if emit and (root.n_procs >= tree.min_processes
                     or (root.n_failed and root.n_procs >= tree.min_processes_failed)):
            self.trees_emitted += 1
            out.append([(n.pid, n.ppid, n.comm, n.start_ns, n.exit_ns, n.code, n.signal) for n in nodes])
        for node in nodes:
            if self.pids.get(node.pid) is node:
                del self.pids[node.pid]

    def tick(self, now, force=False):
        """As Correlator.tick: with force (shutdown), finished trees close and unfinished ones
        are dropped."""
        out = []
        keep = []
        for root in self.closing:
            if root.n_live > 0 or root.state != "exited":
                root.closing = False
            elif root.close_at <= now or force:
                root.closing = False
                self._close_tree(root, out)
            else:
                keep.append(root)
        self.closing = keep
        for root in [r for r in self.roots if force or now - r.opened_ns >= self.tree_max]:
            self._close_tree(root, out, emit=not force)
        for key, c in list(self.conns.items()):
            if c.open and now >= c.last_fail_ns + self.close_after:
                del self.conns[key]
            elif not c.open and c.last_fail_ns + self.window < now:
                del self.conns[key]
        return out


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
        py = PyCorrelator(cfg)
        trees = 0
        start = time.perf_counter()
        for i, raw in enumerate(wire):
            request = stream_pb2.TapioStreamEventsRequest.FromString(raw) if decode else parsed[i]
            py.feed(request)
            if i % TICK_EVERY == TICK_EVERY - 1:
                trees += len(py.tick(batch_max[i]))
        trees += len(py.tick(last_ts + 3600 * SEC, force=True))
        elapsed = time.perf_counter() - start
        found["baseline"] = {"trees": trees, "destinations": py.conn_groups, "hot": py.hot}
        return elapsed

    rows = []
    for operation, decode in (("decode + correlate", True), ("correlate", False)):
        rate_ours, runs_ours = best_rate(lambda: ours(decode), len(events), seconds)
        rate_base, runs_base = best_rate(lambda: baseline(decode), len(events), seconds, min_runs=2)
        if found["ours"] != found["baseline"]:
            raise SystemExit(f"the implementations disagree: ours {found['ours']}, baseline {found['baseline']}")
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
    print(f"correlate: {report['events']} events in batches of {BATCH}, one core; both found "
          f"{f['trees']} process trees, {f['destinations']} degraded destinations, {f['hot']} hot events; "
          f"{report['machine']['cpu_count']} CPUs")
    print_table(["operation", "implementation", "events/s", "vs baseline"],
                [(r["operation"], r["implementation"], f"{r['events_per_s']:,}", f"{r['vs_baseline']}x")
                 for r in report["measurements"]])
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
