"""What --read-interval trades: the collector's CPU against the latency of kernel events.

    sudo python benchmarks/read_interval.py [--intervals 5ms,10ms,20ms,25ms,50ms] [--runs 2]
                                            [--seconds 8] [--json PATH]

For each interval and run: a fresh `tapio-server` and `tapio-collector --enable-ebpf
--read-interval I` (default flags otherwise), both pinned to CPU 1, while the paced connect storm
of benchmarks/overhead.py (2,500 loopback connections/s, ~10 k kernel events/s) runs on CPU 0.
Reported: the collector's CPU (user + system, from /proc) as a share of one core over the storm,
the batches it sent, and the latency of its events from the kernel's timestamp to the server's
decode, p50 and p99, from the server's closing line (its histogram's buckets). A run counts only
when the collector took in all four events of every connection and the kernel dropped none (a
collector that lost events would look cheaper). The runs of the intervals are interleaved, so
that the machine's other work spreads over all of them.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from _common import machine, print_table, write_json
from overhead import (BIN, PACED_CONNECTS, WATCHER_CPU, build_storm, free_port, proc_cpu,
                      read_text, run_storm, stop, wait_for)


def spread(values, fmt="{:g}"):
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def one_run(workdir, storm, interval, seconds, n):
    port = free_port()
    server_log, collector_log = (os.path.join(workdir, f"{name}-{n}.log") for name in ("server", "collector"))
    with open(server_log, "wb") as slog, open(collector_log, "wb") as clog:
        server = subprocess.Popen(
            ["taskset", "-c", WATCHER_CPU, os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1",
             "--grpc-port", str(port), "--http-port", "0", "--db", ":memory:"],
            stdout=subprocess.DEVNULL, stderr=slog)
        collector = None
        try:
            wait_for(lambda: "Tapio server listening" in read_text(server_log) or server.poll() is not None,
                     60, "tapio-server")
            if server.poll() is not None:
                raise SystemExit(f"benchmark: tapio-server exited:\n{read_text(server_log)}")
            collector = subprocess.Popen(
                ["taskset", "-c", WATCHER_CPU, os.path.join(BIN, "tapio-collector"), "--enable-ebpf",
                 "--server", f"127.0.0.1:{port}", "--enable-k8s=false", "--metrics-interval", "0",
                 "--http-port", "0", "--read-interval", interval], stdout=subprocess.DEVNULL, stderr=clog)
            wait_for(lambda: "Connected to Tapio server" in read_text(collector_log) or collector.poll() is not None,
                     120, "the collector to connect")
            if collector.poll() is not None:
                raise SystemExit(f"benchmark: tapio-collector exited:\n{read_text(collector_log)}")
            cpu0 = proc_cpu(collector.pid)
            ((wall_rate, _, connections),) = run_storm(storm, "connect", seconds, PACED_CONNECTS).values()
            cpu = proc_cpu(collector.pid) - cpu0
        finally:
            if collector is not None:
                stop(collector)
            stop(server)
    closing = re.search(r"Stopped after (\d+) events in (\d+) batches .*?latency p50 ([\d.]+) ms p99 ([\d.]+) ms",
                        read_text(server_log))
    if not closing:
        raise SystemExit(f"benchmark: no closing line from tapio-server:\n{read_text(server_log)[-2000:]}")
    events, batches, p50, p99 = closing.groups()
    # a collector that lost or held back events would look cheaper: it must have taken in every
    # connect, accept and close (4 per connection), and the kernel dropped nothing
    ledger = re.search(r"(\d+) events seen, (\d+) dropped in the kernel", read_text(collector_log))
    if not ledger:
        raise SystemExit(f"benchmark: no closing line from tapio-collector:\n{read_text(collector_log)[-2000:]}")
    seen, kernel_drops = (int(x) for x in ledger.groups())
    if kernel_drops or seen < 4 * connections:
        raise SystemExit(f"benchmark: --read-interval {interval}: the collector saw {seen:,} events "
                         f"for {connections:,.0f} connections and {kernel_drops:,} dropped in the kernel")
    return {"interval": interval, "cpu_pct": 100 * cpu / (connections / wall_rate), "seen": seen,
            "delivered": int(events), "batches": int(batches), "p50_ms": float(p50), "p99_ms": float(p99)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", default="5ms,10ms,20ms,25ms,50ms")
    parser.add_argument("--runs", type=int, default=2, help="runs of each interval")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one storm")
    parser.add_argument("--json", default="benchmarks/results/read_interval.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmark: needs root (eBPF)")
    if not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("benchmark: needs CPUs 0 and 1 (the storm on one, Tapio on the other)")
    if shutil.which("taskset") is None:
        raise SystemExit("benchmark: needs taskset (util-linux)")
    intervals = [i for i in args.intervals.split(",") if i]
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        storm = build_storm(workdir)
        n = 0
        for r in range(args.runs):
            for interval in intervals:
                n += 1
                result = one_run(workdir, storm, interval, args.seconds, n)
                results.append(result)
                print(f"  run {r + 1} --read-interval {interval}: {result['cpu_pct']:.1f} % of a core, "
                      f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms", file=sys.stderr)
    rows = []
    for interval in intervals:
        mine = [r for r in results if r["interval"] == interval]
        cpu = [r["cpu_pct"] for r in mine]
        rows.append([interval, spread(cpu, "{:.1f}"),
                     f"{sum(r['batches'] for r in mine) / len(mine):,.0f}",
                     " / ".join(spread([r[k] for r in mine]) for k in ("p50_ms", "p99_ms"))])
    print(f"Paced connects ({PACED_CONNECTS:,}/s) on CPU 0, server and collector on CPU 1; "
          f"{args.runs} runs of {args.seconds:g} s each")
    print()
    print_table(["--read-interval", "collector CPU % of a core (min-max)", "batches per run",
                 "latency p50 / p99 ms"], rows)
    write_json(args.json, {"benchmark": "read_interval", "machine": machine(), "seconds": args.seconds,
                           "results": results})


if __name__ == "__main__":
    main()
