"""Collector -> server over loopback gRPC, end to end, at fixed offered rates.

    python benchmarks/e2e.py [--json PATH] [--quick] [--rates 10000,100000]

Real `tapio-collector --source synthetic` (the same arena -> processor -> codec -> gRPC path as
eBPF events take) streams to a real `tapio-server` on 127.0.0.1. For each path (raw, semantic)
and offered rate (10k/s up to 1M/s, 5 s each) it reports: events delivered per second, events
dropped (counted by the collector: when more is offered than the pipeline carries, the source
sheds load as the kernel's ring buffer would, and so may the bounded send buffer), event latency
p50/p99 (timestamp at the source -> decoded at the server, from the server's histogram), and the
collector's and the server's CPU seconds and peak RSS (from wait4). The highest offered rate
delivered with zero loss is the sustained throughput.

Baseline, in the same run: the original's way of sending, one protobuf-library message per event
(`TapioStreamEventsRequest{event}`) on the same grpcio stream to the same server, as fast as it
goes: what a per-event message design can carry here.
"""
import argparse
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from _common import machine, print_table, wait4, write_json

BIN = os.path.dirname(sys.executable)
RATES = [10_000, 100_000, 300_000, 600_000, 1_000_000]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir, port):
    log = open(os.path.join(workdir, f"server-{port}.log"), "wb")
    proc = subprocess.Popen([os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1",
                             "--grpc-port", str(port), "--http-port", "0", "--ingest-queue", "1024",
                             "--db", ":memory:"],
                            stdout=subprocess.DEVNULL, stderr=log)
    path = log.name
    deadline = time.monotonic() + 30
    while b"Tapio server listening" not in open(path, "rb").read():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"benchmark: tapio-server did not start:\n{open(path).read()}")
        time.sleep(0.02)
    return proc, path


def stop_server(proc, path):
    if proc.poll() is not None:
        raise SystemExit(f"benchmark: tapio-server exited early:\n{open(path).read()[-2000:]}")
    proc.send_signal(signal.SIGTERM)
    cpu, rss = wait4(proc, 60)
    text = open(path).read()
    m = re.search(r"Stopped after (\d+) events.*p50 ([\d.]+) ms p99 ([\d.]+) ms", text)
    if not m:
        raise SystemExit(f"benchmark: no summary from tapio-server:\n{text[-2000:]}")
    return {"received": int(m.group(1)), "p50_ms": float(m.group(2)), "p99_ms": float(m.group(3)),
            "server_cpu_s": round(cpu, 2), "server_rss_mb": round(rss / 1024, 1)}


def run_collector(workdir, port, path, rate, count):
    log_path = os.path.join(workdir, f"collector-{path}-{rate}.log")
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", str(rate),
            "--count", str(count), "--server", f"127.0.0.1:{port}", "--correlation", path,
            "--buffer-size", "4096", "--batch-size", "4096", "--semantic-batch-size", "4096",
            "--flush-interval", "2ms", "--metrics-interval", "0", "--http-port", "0",
            "--max-memory", "64MiB", "--enable-systemd=false"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        cpu, rss = wait4(proc, 600)
        ended = time.time()          # every event delivered and acked
    text = open(log_path).read()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: tapio-collector failed:\n{text[-2000:]}")
    started = _log_time(text, "Synthetic source")
    m = re.search(r"(\d+) events seen, (\d+) dropped in the kernel.*?(\d+) delivered, (\d+) dropped", text)
    delivered = int(m.group(3))
    # the synthetic source drops like the kernel's ring buffer when the collector falls behind
    dropped = int(m.group(2)) + int(m.group(4))
    return {"delivered": delivered, "dropped": dropped, "seconds": ended - started,
            "collector_cpu_s": round(cpu, 2), "collector_rss_mb": round(rss / 1024, 1)}


def _parse_time(stamp):
    t = time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    return time.mktime(t) - time.timezone + float("0" + stamp[19:-1])


def _log_time(text, marker):
    line = next(line for line in text.splitlines() if marker in line)
    return _parse_time(line.split()[0])


def baseline(port, seconds):
    """The protobuf library + grpcio, one message per event, as fast as it goes."""
    import grpc
    from tapio.v1 import events_pb2, stream_pb2
    sent = 0
    stop = time.monotonic() + seconds
    acks = queue.SimpleQueue()

    def requests():
        nonlocal sent
        yield stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
            collector_id="baseline", node_name="bench")).SerializeToString()
        while time.monotonic() < stop:
            sent += 1
            yield stream_pb2.TapioStreamEventsRequest(event=events_pb2.Event(
                id=f"ebpf-{sent}", type=3, timestamp_ns=time.time_ns(), pid=sent, tid=sent,
                ppid=1, uid=1000, gid=1000, cgroup_id=3, comm="synthetic",
                tcp_connect=events_pb2.TcpDetails(family=4, saddr=b"\n\0\0\1", daddr=b"\n\0\0\2",
                                                  sport=40000, dport=443))).SerializeToString()

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(requests())
        start = time.monotonic()
        reader = threading.Thread(target=lambda: [acks.put(1) for _ in call])
        reader.start()
        reader.join(seconds + 30)
        elapsed = time.monotonic() - start
    return acks.qsize(), elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/e2e.json")
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--rates", type=lambda t: [int(r) for r in t.split(",")], default=RATES,
                        help="offered rates, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    seconds = 2 if args.quick else 5
    rows, results = [], []
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = start_server(workdir, port)
        try:
            acked, elapsed = baseline(port, seconds)
        except BaseException:
            server[0].kill()
            raise
        base = stop_server(*server)
        base_rate = acked / elapsed
        results.append({"path": "baseline: one library message per event", "offered": "max",
                        "delivered_per_s": round(base_rate), **base})
        rows.append(["baseline (1 msg/event)", "max", f"{base_rate:,.0f}", "0", "1.0x",
                     base["p50_ms"], base["p99_ms"], "-", "-", base["server_cpu_s"], base["server_rss_mb"]])
        for path in ("raw", "semantic"):
            for rate in args.rates:
                count = rate * seconds
                port = free_port()
                server = start_server(workdir, port)
                try:
                    col = run_collector(workdir, port, path, rate, count)
                except BaseException:
                    server[0].kill()             # a failed run leaves no server behind
                    raise
                srv = stop_server(*server)
                per_s = col["delivered"] / col["seconds"] if col["seconds"] > 0 else 0
                results.append({"path": path, "offered": rate, "delivered_per_s": round(per_s),
                                "ratio_vs_baseline": round(per_s / base_rate, 1), **col, **srv})
                rows.append([path, f"{rate:,}", f"{per_s:,.0f}",
                             f"{per_s / base_rate:.1f}x", srv["p50_ms"], srv["p99_ms"],
                             col["collector_cpu_s"], col["collector_rss_mb"], srv["server_cpu_s"],
                             srv["server_rss_mb"]])
                rows[-1].insert(3, f"{col['dropped']:,}")
                if srv["received"] != col["delivered"]:
                    rows[-1][0] += f" (server got {srv['received']})"
    sustained = {}
    for r in results[1:]:
        if not r["dropped"] and r["received"] == r["delivered"]:
            sustained[r["path"]] = max(sustained.get(r["path"], 0), r["offered"])
    print_table(["path", "offered/s", "delivered/s", "dropped", "vs baseline", "p50 ms", "p99 ms",
                 "collector CPU s", "collector RSS MB", "server CPU s", "server RSS MB"], rows)
    for path, rate in sustained.items():
        print(f"{path}: sustained with zero loss up to {rate:,} events/s offered")
    write_json(args.json, {"benchmark": "e2e", "machine": machine(), "results": results,
                           "sustained_zero_loss": sustained})


if __name__ == "__main__":
    main()
