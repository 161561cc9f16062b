"""Real kernel events into the arena: what reading the ring buffer costs (needs root).

    python benchmarks/ringbuf.py [--json PATH] [--seconds S]

For a bounded time, real kernel load (stress-ng's processes exec'ing and exiting, a client
opening and closing loopback TCP connections as fast as it can), and this process reads Tapio's ring buffer the way the collector does: wait on
its epoll fd, consume into a preallocated arena in C. Reported: events/s consumed, events dropped
in the kernel, and the reader's CPU seconds per million events.

Baseline, in the same run and under the same load: the same reader, but turning each event into
a Python object (struct.unpack of its header and fields), as a reader without the C arena would.
"""
import argparse
import os
import resource
import select
import shutil
import struct
import subprocess
import sys
import time

from _common import machine, print_table, write_json
from tapio._fast.arena import EventArena
from tapio._fast.kernel import KernelProbes

HEADER = struct.Struct("<QQIIIIII16s")
DETAILS = {1: struct.Struct("<III4x256s256s"), 2: struct.Struct("<iII4xQQ"),
           3: struct.Struct("<16s16sHHHHi4xQQQ"), 4: struct.Struct("<16s16sHHHHi4xQQQ"),
           5: struct.Struct("<16s16sHHHHi4xQQQ"), 6: struct.Struct("<I4x16sQQQQQ64s"),
           7: struct.Struct("<IiI4x16s")}


CHURN = """
import os, socket, sys, time
server = socket.create_server(("127.0.0.1", 0), backlog=4096)
port = server.getsockname()[1]
if os.fork() == 0:                               # the client: connect and close, over and over
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        socket.create_connection(("127.0.0.1", port)).close()
    raise SystemExit
server.settimeout(1.0)
while True:                                      # the server: accept and close
    try:
        server.accept()[0].close()
    except OSError:
        break
"""


def load(seconds):
    """Real kernel work for `seconds`: stress-ng's exec and fork churn, and loopback TCP
    connections opened and closed as fast as one client can (4 events each)."""
    if shutil.which("stress-ng") is None:
        sys.exit("benchmark: stress-ng is needed (./build.sh bench installs it)")
    return [subprocess.Popen(["stress-ng", "--exec", "2", "--fork", "1", "--timeout", f"{seconds}s",
                              "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-c", CHURN, str(seconds)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)]


def read_for(probes, arena, seconds, per_event, coalesce):
    """Read until `seconds` pass; returns (events, wake-ups, cpu seconds). After each wake-up the
    reader lets `coalesce` seconds of events gather (the collector now reads on a timer instead:
    --read-interval)."""
    poller = select.epoll()
    poller.register(probes.epoll_fd, select.EPOLLIN)
    events = wakeups = 0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not poller.poll(0.1):
            continue
        wakeups += 1
        time.sleep(coalesce)
        while True:
            n = probes.consume(arena)
            events += n
            if per_event:
                for i in range(len(arena)):
                    raw = arena.slot_bytes(i)
                    header = HEADER.unpack_from(raw)
                    DETAILS[header[2]].unpack_from(raw, HEADER.size)
            arena.clear()
            if n < arena.capacity:
                break
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    poller.close()
    return events, wakeups, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def measure(per_event, seconds, coalesce):
    probes = KernelProbes.start(["exec", "exit", "tcp_connect", "tcp_accept", "tcp_close", "signal"],
                                ring_buffer_bytes=8 << 20)
    try:
        arena = EventArena(4096)
        workers = load(seconds + 1)
        try:
            time.sleep(0.5)                      # let the load ramp up
            probes.consume(arena)
            arena.clear()
            drops_before = sum(probes.kernel_drops().values())
            events, wakeups, cpu = read_for(probes, arena, seconds, per_event, coalesce)
            drops = sum(probes.kernel_drops().values()) - drops_before
        finally:
            for worker in workers:
                worker.wait(seconds + 30)
    finally:
        probes.close()
    return {"events": events, "events_per_s": round(events / seconds), "kernel_drops": drops,
            "events_per_wakeup": round(events / wakeups, 1) if wakeups else None,
            "cpu_s": round(cpu, 3), "cpu_s_per_million": round(cpu / events * 1e6, 3) if events else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/ringbuf.json")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--coalesce", type=float, default=0.001,
                        help="seconds events gather after a wake-up (the collector's default: 1ms)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmark: reading kernel events needs root (or CAP_BPF+CAP_PERFMON)")
    ours = measure(False, args.seconds, args.coalesce)
    baseline = measure(True, args.seconds, args.coalesce)
    ratio = (baseline["cpu_s_per_million"] / ours["cpu_s_per_million"]
             if ours["cpu_s_per_million"] and baseline["cpu_s_per_million"] else None)
    rows = [[name, f"{r['events_per_s']:,}", f"{r['kernel_drops']:,}", r["events_per_wakeup"],
             r["cpu_s_per_million"], vs]
            for name, r, vs in (("C arena (ours)", ours, f"{ratio:.1f}x less CPU" if ratio else "-"),
                                ("Python object per event", baseline, "1.0x"))]
    print_table(["reader", "events/s", "kernel drops", "events/wake-up", "CPU s per 1M events",
                 "vs baseline"], rows)
    write_json(args.json, {"benchmark": "ringbuf", "machine": machine(), "seconds": args.seconds,
                           "coalesce_s": args.coalesce,
                           "load": "stress-ng --exec 2 --fork 1 + loopback TCP connect/close churn", "ours": ours,
                           "baseline_python_object_per_event": baseline,
                           "cpu_ratio_baseline_over_ours": round(ratio, 2) if ratio else None})


if __name__ == "__main__":
    main()
