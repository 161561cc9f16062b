"""Replicas on NATS JetStream and PostgreSQL, end to end: events/s delivered with 1, 2 and 3 replicas.

    python benchmarks/scale.py [--json PATH] [--quick]

One run starts a 3-node NATS JetStream cluster and a PostgreSQL instance on loopback (the test
fixtures tests/nats_cluster.py and tests/postgres.py: Debian's nats-server and postgresql), then
for each replica count starts that many `tapio-server --bus ... --db postgresql://...` and
COLLECTORS `tapio-collector --source synthetic` processes (each listing every replica; rendezvous
hashing spreads them), offering events as fast as they are taken. Delivered is what the
collectors' exit lines say was acked; the clock stops when the PostgreSQL history holds every
delivered event (ingest -> JetStream -> partition owner -> history: end to end). Publish-to-ack
latency (a batch handed to JetStream until JetStream acked it, R=3) is read from each replica.

Baseline in the same run: one `tapio-server` without a bus and with an in-memory SQLite store
(the embedded default), the same collectors. CPU seconds per component come from wait4 (tapio
processes) and /proc (nats-server, postgres and its backends), so events per CPU-second of each
component can be projected (docs/scaling.md).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from _common import machine, print_table, wait4, write_json

from tests.nats_cluster import nats_cluster          # noqa: E402 (after _common sets the path)
from tests.postgres import postgres_instance          # noqa: E402

BIN = os.path.dirname(sys.executable)
COLLECTORS = 4
LIGHT_RATE = 2_000      # events/s per collector in the light-load run
TICK = os.sysconf("SC_CLK_TCK")
DELIVERED = re.compile(r"(\d+) events seen, (\d+) dropped in the kernel.*?(\d+) delivered")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """User + system CPU seconds of a live process (and of its children it has waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICK


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def cpu_of(pids):
    return sum(proc_cpu(p) for p in pids)


def start_server(workdir, name, db, bus=None):
    grpc_port, http_port = free_port(), free_port()
    argv = [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--http-port", str(http_port), "--db", db, "--ingest-queue", "1024"]
    if bus:
        argv += ["--bus", bus, "--replica-id", name]
    log_path = os.path.join(workdir, f"{name}.log")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    deadline = time.monotonic() + 90
    while b"Dashboard on" not in open(log_path, "rb").read():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"benchmark: tapio-server did not start:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.05)
    return {"proc": proc, "log": log_path, "address": f"127.0.0.1:{grpc_port}",
            "http": f"http://127.0.0.1:{http_port}"}


def stats(server):
    with urllib.request.urlopen(server["http"] + "/api/v1/stats", timeout=10) as r:
        return json.loads(r.read())


def wait_spread(servers, partitions, timeout=60):
    """Until the replicas own every partition once, evenly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [set(stats(s)["store"]["bus"]["owner"]["partitions"]) for s in servers]
        if (sum(len(o) for o in owned) == len(set().union(*owned)) == partitions
                and max(len(o) for o in owned) - min(len(o) for o in owned) <= 1):
            return
        time.sleep(0.2)
    raise SystemExit("benchmark: the replicas did not share the partitions in time")


def history_count(dsn, prefix):
    import psycopg
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM tapio_events WHERE collector_id LIKE %s",
                            (prefix + "%",)).fetchone()[0]


def run(workdir, label, servers, count, dsn=None, rate=0):
    """COLLECTORS collectors, as fast as they go (or `rate` events/s each), to `servers`."""
    addresses = ",".join(s["address"] for s in servers)
    procs = []
    start = time.time()
    for i in range(COLLECTORS):
        argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", str(rate),
                "--count", str(count), "--server", addresses, "--collector-id", f"{label}-c{i}",
                "--node-name", f"{label}-node-{i}", "--correlation", "raw", "--batch-size", "2048",
                "--flush-interval", "5ms", "--metrics-interval", "0", "--http-port", "0",
                "--max-memory", "64MiB", "--enable-systemd=false"]
        log_path = os.path.join(workdir, f"{label}-c{i}.log")
        procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                       stderr=open(log_path, "wb")), log_path))
    delivered = dropped = 0
    collector_cpu = 0.0
    for proc, log_path in procs:
        collector_cpu += wait4(proc, 600)[0]
        text = open(log_path).read()
        m = DELIVERED.search(text)
        if proc.returncode != 0 or not m:
            raise SystemExit(f"benchmark: tapio-collector failed:\n{text[-2000:]}")
        delivered += int(m.group(3))
        dropped += int(m.group(2))
    acked = time.time()
    stored = acked
    if dsn is not None:
        deadline = time.monotonic() + 300
        while history_count(dsn, label + "-") < delivered:
            if time.monotonic() > deadline:
                raise SystemExit("benchmark: the history did not get every delivered event")
            time.sleep(0.1)
        stored = time.time()
    return {"delivered": delivered, "dropped_at_source": dropped,
            "seconds_to_ack": round(acked - start, 3), "seconds_to_history": round(stored - start, 3),
            "collector_cpu_s": round(collector_cpu, 2)}


def stop(server):
    if server["proc"].poll() is not None:
        raise SystemExit(f"benchmark: tapio-server exited early:\n{open(server['log']).read()[-3000:]}")
    server["proc"].send_signal(signal.SIGTERM)
    return wait4(server["proc"], 120)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/scale.json")
    parser.add_argument("--quick", action="store_true", help="fewer events (smoke test)")
    args = parser.parse_args()
    count = 20_000 if args.quick else 100_000
    from tapio.server.bus import subjects
    rows, results = [], []
    with tempfile.TemporaryDirectory() as workdir:
        # baseline: the embedded default, one process
        server = start_server(workdir, "embedded", ":memory:")
        try:
            before = proc_cpu(server["proc"].pid)
            r = run(workdir, "embedded", [server], count)
            cpu = proc_cpu(server["proc"].pid) - before
        finally:
            stop(server)
        base = r["delivered"] / r["seconds_to_ack"]
        results.append({"setup": "embedded (no bus, SQLite in memory)", "replicas": 1,
                        "delivered_per_s": round(base), "acked_per_s": round(base),
                        "server_cpu_s": round(cpu, 2), **r})
        rows.append(["embedded (no bus)", 1, f"{r['delivered']:,}", f"{base:,.0f}", f"{base:,.0f}",
                     "-", "-", "-", f"{cpu:.1f}", "-", "-"])
        with nats_cluster(3, timeout=60) as nats, postgres_instance() as pg:
            nats_pids = [p.pid for p in nats.procs]
            # as fast as the collectors go with 1, 2, 3 replicas; then 3 at a light load, for the
            # publish-to-ack latency of a bus that is not saturated
            for n, rate in ((1, 0), (2, 0), (3, 0), (3, LIGHT_RATE)):
                label = f"r{n}" + ("-light" if rate else "")
                servers = []
                try:
                    for i in range(n):
                        servers.append(start_server(workdir, f"{label}-replica{i}", pg.dsn, nats.bus))
                    wait_spread(servers, subjects.PARTITIONS)
                    replica_pids = [s["proc"].pid for s in servers]
                    replica_before = cpu_of(replica_pids)
                    nats_before = cpu_of(nats_pids)
                    pg_pids = [pg.proc.pid] + children(pg.proc.pid)
                    pg_before = cpu_of(pg_pids)
                    stored_before = nats.jsz(0).get("bytes", 0)
                    r = run(workdir, label, servers, LIGHT_RATE * 5 if rate else count, pg.dsn, rate)
                    stream_bytes = nats.jsz(0).get("bytes", 0) - stored_before
                    nats_cpu = cpu_of(nats_pids) - nats_before
                    replica_cpu = cpu_of(replica_pids) - replica_before
                    pg_cpu = cpu_of([pg.proc.pid] + children(pg.proc.pid)) - pg_before
                    relays = [stats(s)["store"]["bus"]["relay"]["publish_ack_ms"] for s in servers]
                finally:
                    for s in servers:
                        if s["proc"].poll() is None:
                            stop(s)
                per_s = r["delivered"] / r["seconds_to_history"]
                acked = r["delivered"] / r["seconds_to_ack"]
                p50 = max(x["p50"] or 0 for x in relays)
                p99 = max(x["p99"] or 0 for x in relays)
                load = f", {rate:,} events/s per collector" if rate else ""
                results.append({"setup": f"{n} replica(s), 3 NATS nodes (R=3), PostgreSQL{load}",
                                "offered_per_collector": rate or "max",
                                "replicas": n, "delivered_per_s": round(per_s),
                                "acked_per_s": round(acked),
                                "publish_ack_ms_p50": p50, "publish_ack_ms_p99": p99,
                                "replica_cpu_s": round(replica_cpu, 2), "nats_cpu_s": round(nats_cpu, 2),
                                "postgres_cpu_s": round(pg_cpu, 2),
                                "stream_bytes_per_event": round(stream_bytes / r["delivered"], 1),
                                "events_per_replica_cpu_s": round(r["delivered"] / max(replica_cpu, 1e-9)),
                                "events_per_nats_cpu_s": round(r["delivered"] / max(nats_cpu, 1e-9)),
                                "events_per_postgres_cpu_s": round(r["delivered"] / max(pg_cpu, 1e-9)),
                                **r})
                rows.append([f"bus, {n} replica(s)" + (f", {rate:,}/s each" if rate else ""), n, f"{r['delivered']:,}", f"{per_s:,.0f}",
                             f"{acked:,.0f}",
                             "-" if load else f"{per_s / results[1]['delivered_per_s']:.2f}x",
                             p50, p99, f"{replica_cpu:.1f}", f"{nats_cpu:.1f}", f"{pg_cpu:.1f}"])
    print_table(["setup", "replicas", "delivered", "events/s in history", "acked/s", "vs 1 replica",
                 "publish->ack p50 ms", "p99 ms", "tapio CPU s", "NATS CPU s", "PG CPU s"], rows)
    write_json(args.json, {"benchmark": "scale", "machine": machine(), "collectors": COLLECTORS,
                           "events_per_collector": count, "results": results})


if __name__ == "__main__":
    main()
