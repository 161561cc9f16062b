"""Resident memory of a real tapio-server: per collector id that sent one batch, and while ids
come and go. Collector ids are free to invent, so what one costs decides what --max-collectors
means in bytes.

    python benchmarks/server_memory.py [--json PATH] [--ids N] [--baseline-pythonpath DIR]

Each case runs against a fresh tapio-server on 127.0.0.1, fed over the gRPC stream as collectors
speak it (hello, one batch, all acked before the next stream):

  per id, 23 events     after 5 warm-up ids, N ids (50) each send one batch: 10 execs, their
                        exits, 3 failed connects; the server's RSS growth / N
  per id, 403 events    the same with 200 execs, their exits, 3 failed connects
  churn                 100 ids, each one 3 MiB batch (200 execs with 16 KiB command lines),
                        --max-collectors 10, 16 MiB for each of the two recent-event budgets; the
                        RSS growth at the end: what stays of ids forgotten

by this checkout's server as it ships (glibc's mmap threshold pinned, tapio/server/app.py) and
with the pin switched off; with --baseline-pythonpath DIR (a directory holding another build's
`tapio` package, e.g. a copy of an older checkout's after `./build.sh build`) by that build's
server too, in the same run.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

from _common import machine, print_table, write_json
import grpc
from tapio.v1 import events_pb2, stream_pb2

MiB = 1 << 20
SEC = 1_000_000_000
UNPINNED = ("import tapio.server.app as app; app.pin_mmap_threshold = lambda *a, **k: False; "
            "from tapio.server.cli import main; main()")
PINNED = "from tapio.server.cli import main; main()"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"benchmark: no VmRSS for {pid}")


class Server:
    def __init__(self, workdir, pythonpath, pinned, flags=()):
        self.address = f"127.0.0.1:{free_port()}"
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.log_path = os.path.join(workdir, f"server-{self.address.rsplit(':', 1)[1]}.log")
        self.log = open(self.log_path, "wb")
        argv = [sys.executable, "-c", PINNED if pinned else UNPINNED, "--host", "127.0.0.1",
                "--grpc-port", self.address.rsplit(":", 1)[1], "--http-port", "0", "--db", ":memory:",
                *flags]
        # cwd: not the checkout, whose tapio would come before PYTHONPATH's
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, env=env,
                                     cwd=workdir)
        deadline = time.monotonic() + 30
        while b"Tapio server listening" not in open(self.log_path, "rb").read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"benchmark: tapio-server did not start:\n{open(self.log_path).read()}")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(self.address)

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def one_batch(self, cid, batch_id, events):
        messages = [stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
                        collector_id=cid, node_name="n")).SerializeToString(),
                    stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
                        batch_id=batch_id, collector_id=cid, node_name="n",
                        events=events)).SerializeToString()]
        call = self.channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
        replies = list(call(iter(messages), timeout=60))
        ack = stream_pb2.TapioStreamEventsResponse.FromString(replies[-1]).ack
        if ack.status != stream_pb2.EventAck.STATUS_OK:
            raise SystemExit(f"benchmark: batch of {cid} not acked: {ack}")

    def stop(self):
        if hasattr(self, "channel"):
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def events(n_procs, command_line=None):
    """n_procs execs and their exits (or only execs, with command lines), 3 failed connects."""
    now = 1_764_000_000 * SEC
    out = []

    def event(type_, pid, comm, **fields):
        e = events_pb2.Event(id=f"ebpf-{len(out) + 1}", type=type_, timestamp_ns=now, pid=pid,
                             tid=pid, ppid=1, cgroup_id=100, comm=comm, **fields)
        out.append(e)
        return e

    for i in range(n_procs):
        e = event(events_pb2.EVENT_TYPE_EXEC, 1000 + i, "sh", process=events_pb2.Process(
            executable="/bin/sh", command_line=command_line or "sh", user="root", ancestors=[1]))
        e.exec.filename = "/bin/sh"
    if command_line:
        return out
    for i in range(n_procs):
        e = event(events_pb2.EVENT_TYPE_EXIT, 1000 + i, "sh")
        e.exit.exit_code = 1 if i == 0 else 0
    for _ in range(3):
        e = event(events_pb2.EVENT_TYPE_TCP_CONNECT, 1000, "curl")
        e.tcp_connect.family = 4
        e.tcp_connect.daddr = bytes([10, 0, 0, 1])
        e.tcp_connect.dport = 80
        e.tcp_connect.result = 1         # refused
    return out


def core_module(workdir, pythonpath):
    """Where a server started like this finds its correlation core (which build is measured)."""
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    return subprocess.run([sys.executable, "-c", "import tapio._fast.correlate as c; print(c.__file__)"],
                          env=env, cwd=workdir, capture_output=True, text=True, check=True).stdout.strip()


def per_id(workdir, pythonpath, pinned, n_ids, n_procs):
    """KiB of resident memory per collector id that sent one batch."""
    server = Server(workdir, pythonpath, pinned, ["--max-collectors", str(n_ids + 100)])
    try:
        batch = events(n_procs)
        start = time.time_ns() // 1000
        for k in range(5):                          # what the first streams allocate once
            server.one_batch(f"warm-{k}", start + k, batch)
        before = server.rss_kib()
        for k in range(n_ids):
            server.one_batch(f"node-{k}", start + 100 + k, batch)
        return (server.rss_kib() - before) / n_ids
    finally:
        server.stop()


def churn(workdir, pythonpath, pinned):
    """MiB the server grew by after 100 ids with a 3 MiB batch each, 10 tracked."""
    config = os.path.join(workdir, "correlation.toml")
    with open(config, "w") as f:
        f.write('[limits]\nrecent_memory = "16MiB"\n')
    server = Server(workdir, pythonpath, pinned, ["--recent-events-memory", "16MiB",
                                                  "--max-collectors", "10", "--correlation-config", config])
    try:
        batch = events(200, command_line="x" * 16000)
        before = server.rss_kib()
        start = time.time_ns() // 1000
        for k in range(100):
            server.one_batch(f"churn-{k}", start + k, batch)
        return (server.rss_kib() - before) / 1024
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    ap.add_argument("--ids", type=int, default=50, help="collector ids per per-id case (default %(default)s)")
    ap.add_argument("--baseline-pythonpath", metavar="DIR", help="another build's tapio package is in DIR")
    args = ap.parse_args()
    if args.ids < 1:
        ap.error("--ids must be at least 1")
    builds = [("this checkout", None)]
    if args.baseline_pythonpath:
        if not os.path.isdir(os.path.join(args.baseline_pythonpath, "tapio")):
            ap.error(f"no tapio package in {args.baseline_pythonpath}")
        builds.insert(0, ("baseline", args.baseline_pythonpath))
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="tapio-memory-") as workdir:
        for build, pythonpath in builds:
            for pinned in (True, False):
                r = {"build": build, "core": core_module(workdir, pythonpath),
                     "mmap_threshold": "pinned" if pinned else "not pinned",
                     "kib_per_id_23_events": round(per_id(workdir, pythonpath, pinned, args.ids, 10), 1),
                     "kib_per_id_403_events": round(per_id(workdir, pythonpath, pinned, args.ids, 200), 1),
                     "churn_growth_mib": round(churn(workdir, pythonpath, pinned), 1)}
                results.append(r)
                rows.append([build, r["mmap_threshold"], f"{r['kib_per_id_23_events']:.0f}",
                             f"{r['kib_per_id_403_events']:.0f}", f"{r['churn_growth_mib']:.0f}"])
    print(f"server_memory: resident memory of tapio-server, {args.ids} collector ids per per-id case")
    print_table(["build", "mmap threshold", "KiB/id (23 events)", "KiB/id (403 events)",
                 "churn: MiB grown"], rows)
    if args.json:
        write_json(args.json, {"benchmark": "server_memory", "ids": args.ids, "results": results,
                               "machine": machine()})


if __name__ == "__main__":
    main()
