"""The event history: events/s into PostgreSQL the way tapio-server writes them, against the
simple way and against SQLite, in the same run.

    python benchmarks/history.py [--json PATH] [--events N] [--runs N]

A real PostgreSQL 15 (started in a temp dir as the tests do: tests/postgres.py; default settings,
so fsync and synchronous commit are on) on 127.0.0.1, and the enriched events of a busy node
(benchmarks/correlate.py's stream: contexts, process details, ~210 bytes an event), in decoded
batches of 512, one transaction per batch as ingest writes them (unless said otherwise):

  copy (ours)          Store.record_events: the batch's rows made in C as COPY binary input,
                       copied into a staging table, then INSERT ... ON CONFLICT DO NOTHING
  copy, replayed       the same batches again: every row already there (a collector's re-send,
                       a replay from the bus): the cost of idempotence
  copy, 8 a commit     Store.record_many: 8 batches in one transaction (one WAL flush), as a
                       consumer that has several batches at hand (a bus consumer) can write
  executemany          the simple way: a tuple per event in Python (event_dict, event_wire),
                       psycopg's executemany of INSERT ... ON CONFLICT DO NOTHING (pipelined)
  sqlite (baseline)    the same rows, executemany of INSERT OR IGNORE into an SQLite file in WAL
                       mode with synchronous=NORMAL (the embedded default's settings)

And end to end: a real `tapio-server` (`--db :memory:`, the baseline, then `--db postgresql://`)
and a real `tapio-collector --source synthetic --correlation raw` sending N events as fast as it
can, with batches of 100 and of 1,000 events (--batch-size): events/s from the
collector's start to its exit, every event acked (its closing line says so, or the run fails).

Each run starts from an empty table; the best run is reported. CPU seconds are this process's
(the client: rows and the driver) and PostgreSQL's (the postmaster and its children, from
/proc); "events/s per core" is events / (client + server CPU seconds): what one core of either
side carries, the figure docs/scaling.md projects from.
"""
import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time

from _common import machine, print_table, write_json
from correlate import BATCH, Node, wire_batches

import psycopg

from tapio._fast.codec import DecodedBatch
from tapio.server.store import Store

GROUP = 8          # batches a transaction, for Store.record_many

COLUMNS = ("collector_id", "batch_id", "idx", "node", "event_id", "type", "pid", "timestamp_ns",
           "comm", "container_id", "container_name", "received_ns", "event")


def postgres_cpu(postmaster):
    """CPU seconds of every process of the PostgreSQL instance: the postmaster and its children
    (each of which is its own session)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == postmaster or int(fields[1]) == postmaster:     # field 4: the parent
            total += int(fields[11]) + int(fields[12])   # utime, stime
    return total / tick


def simple_rows(batch, collector, received):
    """A tuple per event, the plain way."""
    rows = []
    for i in range(len(batch)):
        e = batch.event_dict(i)
        ctx = e.get("context") or {}
        rows.append((collector, batch.batch_id, i, batch.node_name, e["id"], batch_type(e), e["pid"],
                     e["timestamp_ns"], e["comm"], ctx.get("container_id", ""),
                     ctx.get("container_name", ""), received, batch.event_wire(i)))
    return rows


_TYPES = {"exec": 1, "exit": 2, "tcp_connect": 3, "tcp_accept": 4, "tcp_close": 5, "oom_kill": 6,
          "signal": 7}


def batch_type(event):
    return _TYPES.get(event["type"], 0)


def end_to_end(db, count, batch_size, workdir):
    """Delivered events/s of a synthetic collector into a real server on `db`."""
    import socket
    import subprocess
    bin_dir = os.path.dirname(sys.executable)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(workdir, "server.log"), "ab")
    server = subprocess.Popen([os.path.join(bin_dir, "tapio-server"), "--host", "127.0.0.1",
                               "--grpc-port", str(port), "--http-port", "0", "--db", db],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:          # until it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        start = time.perf_counter()
        done = subprocess.run([os.path.join(bin_dir, "tapio-collector"), "--source", "synthetic",
                               "--server", f"127.0.0.1:{port}", "--correlation", "raw", "--count",
                               str(count), "--batch-size", str(batch_size), "--metrics-interval", "0"],
                              capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - start
        last = (done.stderr.strip().splitlines() or [""])[-1]
        if done.returncode != 0 or f"{count} delivered" not in last:
            sys.exit(f"benchmark: the collector did not deliver every event into {db}: {last}")
        return count / wall
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def measure(work, batches, postmaster):
    cpu0, pg0, t0 = time.process_time(), postgres_cpu(postmaster), time.perf_counter()
    for batch in batches:
        work(batch)
    wall = time.perf_counter() - t0
    return wall, time.process_time() - cpu0, postgres_cpu(postmaster) - pg0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    ap.add_argument("--events", type=int, default=BATCH * 200, help="events per run (default %(default)s)")
    ap.add_argument("--e2e-events", type=int, default=200_000,
                    help="events the collector sends end to end (default %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each, the best counts (default %(default)s)")
    args = ap.parse_args()
    try:
        from tests.postgres import PostgresInstance
        pg = PostgresInstance()
    except BaseException as e:          # pytest's skip when there is no PostgreSQL
        sys.exit(f"benchmark: needs PostgreSQL (apt install postgresql): {e}")
    events = Node().events(args.events)
    batches = [DecodedBatch.parse(w) for w in wire_batches(events)]
    wire_bytes = sum(len(b.event_wire(i)) for b in batches for i in range(len(b)))
    n = sum(len(b) for b in batches)
    results = []
    tmp = None
    try:
        pg.start()
        postmaster = pg.proc.pid
        pg.psql("CREATE DATABASE bench")
        dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/bench"
        store = Store(dsn)
        conn = psycopg.connect(dsn, autocommit=True)
        insert = (f"INSERT INTO tapio_events ({', '.join(COLUMNS)}) VALUES "
                  f"({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT DO NOTHING")

        def copy(batch):
            store.record_events(batch, "node-a")

        def copy_grouped(group):
            store.record_many([(batch, "node-a") for batch in group])

        def executemany(batch):
            rows = simple_rows(batch, "node-a", time.time_ns())
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany(insert, rows)

        tmp = tempfile.mkdtemp(prefix="tapio-bench-")
        lite = sqlite3.connect(os.path.join(tmp, "history.db"), isolation_level=None)
        lite.execute("PRAGMA journal_mode=WAL")
        lite.execute("PRAGMA synchronous=NORMAL")
        lite.execute("CREATE TABLE tapio_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                     + ", ".join(COLUMNS) + ", UNIQUE (collector_id, batch_id, idx))")
        lite_insert = (f"INSERT OR IGNORE INTO tapio_events ({', '.join(COLUMNS)}) VALUES "
                       f"({', '.join(['?'] * len(COLUMNS))})")

        def sqlite(batch):
            rows = simple_rows(batch, "node-a", time.time_ns())
            lite.execute("BEGIN")
            lite.executemany(lite_insert, rows)
            lite.execute("COMMIT")

        def empty_pg():
            conn.execute("TRUNCATE tapio_events")

        def empty_sqlite():
            lite.execute("DELETE FROM tapio_events")

        grouped = [batches[i:i + GROUP] for i in range(0, len(batches), GROUP)]
        cases = [("copy (ours)", copy, empty_pg, False), ("copy, replayed", copy, None, True),
                 (f"copy, {GROUP} batches a commit", copy_grouped, empty_pg, False),
                 ("executemany", executemany, empty_pg, False),
                 ("sqlite (baseline)", sqlite, empty_sqlite, False)]
        footprint = {}
        for name, work, empty, replay in cases:
            best = None
            for _ in range(args.runs):
                if replay:
                    empty_pg()
                    for batch in batches:
                        copy(batch)
                elif empty is not None:
                    empty()
                lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                wall, client, server = measure(work, grouped if work is copy_grouped else batches,
                                               postmaster)
                if best is None or wall < best[0]:
                    best = (wall, client, server)
                if name == "copy (ours)":
                    # what an event costs PostgreSQL's disk: the table with its indexes, and WAL
                    wal, size = conn.execute(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s),"
                        " pg_total_relation_size('tapio_events')", (lsn,)).fetchone()
                    footprint = {"wal_bytes_per_event": round(float(wal) / n, 1),
                                 "stored_bytes_per_event": round(size / n, 1)}
            if name == "sqlite (baseline)":
                stored = lite.execute("SELECT count(*) FROM tapio_events").fetchone()[0]
            else:
                stored = conn.execute("SELECT count(*) FROM tapio_events").fetchone()[0]
            if stored != n:
                sys.exit(f"benchmark: {name} left {stored} rows, not {n}")
            wall, client, server = best
            results.append({"method": name, "events": n, "seconds": round(wall, 4),
                            "events_per_s": round(n / wall), "client_cpu_s": round(client, 4),
                            "server_cpu_s": round(server, 4),
                            "events_per_core_s": round(n / (client + server)) if client + server else None})
        conn.close()
        store.close()
        lite.close()
        pg.psql("CREATE DATABASE e2e")
        e2e = []
        for batch_size in (100, 1000):
            memory = end_to_end(":memory:", args.e2e_events, batch_size, tmp)
            history = end_to_end(f"postgresql://postgres@127.0.0.1:{pg.port}/e2e", args.e2e_events,
                                 batch_size, tmp)
            e2e.append({"batch_size": batch_size, "memory_events_per_s": round(memory),
                        "postgresql_events_per_s": round(history)})
    finally:
        pg.remove()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    base = results[-1]["events_per_s"]
    print(f"{n} events in batches of {BATCH} ({wire_bytes / n:.0f} wire bytes an event), one "
          f"transaction per batch, best of {args.runs}")
    print_table(["method", "events/s", "vs sqlite", "client CPU s", "PostgreSQL CPU s", "events/s per core"],
                [[r["method"], r["events_per_s"], f"{r['events_per_s'] / base:.2f}x",
                  r["client_cpu_s"], r["server_cpu_s"], r["events_per_core_s"]] for r in results])
    print(f"copy (ours): {footprint['stored_bytes_per_event']:.0f} bytes an event in the table "
          f"and its indexes, {footprint['wal_bytes_per_event']:.0f} bytes of WAL an event")
    print()
    print(f"end to end: tapio-collector --source synthetic ({args.e2e_events} events, raw path) -> "
          f"tapio-server, every event acked")
    print_table(["collector batch", "--db :memory: events/s", "--db postgresql:// events/s", "ratio"],
                [[r["batch_size"], r["memory_events_per_s"], r["postgresql_events_per_s"],
                  f"{r['postgresql_events_per_s'] / r['memory_events_per_s']:.2f}x"] for r in e2e])
    report = {"benchmark": "history", "machine": machine(), "batch": BATCH, "runs": args.runs,
              "wire_bytes_per_event": round(wire_bytes / n, 1), **footprint, "results": results,
              "end_to_end": e2e}
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
