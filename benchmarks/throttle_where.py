"""Where a per-cgroup budget is cheapest: in the BPF program, or in the collector's C processor.

    sudo python benchmarks/throttle_where.py [--json PATH] [--rounds N] [--seconds S]

The kernel side, measured: two BPF programs on the tracepoint Tapio's TCP program uses
(sock:inet_sock_set_state), written with bpftrace, during the overhead benchmark's connect storm
(pinned to CPU 0): one only counts its runs (the baseline), the other also keeps a token bucket
per cgroup in a hash map (the generic cell rate algorithm, as tapio/_fast/throttle.pxd: one
lookup, one update or one count per run). Their difference in run_time_ns / run_cnt
(`kernel.bpf_stats_enabled`) is what a budget in BPF adds to every event, in the workload's own
context. Interleaved rounds, medians with the spread.

The collector side is in `benchmarks/codec.py` ("cgroup budget"): the same check as records enter
the arena, on the collector's CPU.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import machine, print_table, write_json
from overhead import Stats, build_storm, prog_ids, prog_stats, run_storm, WATCHER_CPU

TRACEPOINT = "tracepoint:sock:inet_sock_set_state"
PROGRAMS = {
    "count only": TRACEPOINT + " { @runs = count(); }",
    # 100 events/s per cgroup, bursts of 100: tat <= now + tau lets one through
    "count + per-cgroup budget": TRACEPOINT + """ {
        @runs = count();
        $now = nsecs;
        $tat = @tat[cgroup];
        if ($tat <= $now + 990000000) {
            @tat[cgroup] = ($tat > $now ? $tat : $now) + 10000000;
        } else {
            @held[cgroup, args->newstate] = count();
        }
    }""",
}


def measure(storm, script, seconds):
    """ns per run of the script's program during a connect storm of `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".bt", delete=False) as f:
        f.write(script)
    proc = subprocess.Popen(["taskset", "-c", WATCHER_CPU, "bpftrace", f.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        ids = set()
        while not ids:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"benchmark: bpftrace did not attach: {proc.stderr.read().decode()}")
            time.sleep(0.1)
            ids = prog_ids(proc.pid)
        time.sleep(0.3)
        before = prog_stats(ids)
        run_storm(storm, "connect", seconds)
        after = prog_stats(ids)
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(f.name)
    runtime = sum(after[i][1] - before[i][1] for i in after)
    runs = sum(after[i][2] - before[i][2] for i in after)
    return runtime / runs if runs else None, runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmark: needs root (BPF)")
    samples = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory() as work, Stats():
        storm = build_storm(work)
        for r in range(args.rounds):
            order = list(PROGRAMS) if r % 2 == 0 else list(reversed(PROGRAMS))
            for name in order:
                ns, runs = measure(storm, PROGRAMS[name], args.seconds)
                samples[name].append(ns)
    base = statistics.median(samples["count only"])
    rows, results = [], []
    for name, values in samples.items():
        med = statistics.median(values)
        results.append({"program": name, "ns_per_run_median": round(med, 1),
                        "ns_per_run_min": round(min(values), 1), "ns_per_run_max": round(max(values), 1),
                        "added_ns": round(med - base, 1)})
        rows.append((name, f"{med:.0f} ({min(values):.0f} ... {max(values):.0f})", f"{med - base:+.0f}"))
    print(f"per-cgroup budget in BPF: {TRACEPOINT} under a connect storm, {args.rounds} rounds of "
          f"{args.seconds:g} s")
    print_table(["BPF program", "ns per run, median (min ... max)", "added ns"], rows)
    if args.json:
        write_json(args.json, {"benchmark": "throttle_where", "machine": machine(),
                               "rounds": args.rounds, "seconds": args.seconds, "results": results})


if __name__ == "__main__":
    main()
