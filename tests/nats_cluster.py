"""A real NATS JetStream cluster on loopback for tests: `with nats_cluster(3) as c: c.urls`.

Each node is a `nats-server` process with its own config file (written here), JetStream store
directory and random 127.0.0.1 ports (client, cluster route, HTTP monitoring). The context waits,
bounded, until the cluster has a JetStream meta leader (read from each node's /jsz), and on exit
kills every process and removes the directory, also when the test failed.

`kill(i)` sends SIGKILL to node i (the test's "kill -9"); `restart(i)` starts it again on the same
ports and store, so it rejoins the cluster with its data.

Without the `nats-server` binary the test is skipped; with TAPIO_REQUIRE_SERVERS=1 (CI) it fails.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

REQUIRE_SERVERS = os.environ.get("TAPIO_REQUIRE_SERVERS") == "1"


def nats_server_binary():
    """The nats-server path; skips (or fails under TAPIO_REQUIRE_SERVERS=1) without one."""
    path = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None)
    if path is None:
        why = "nats-server is not installed (Debian package nats-server; ./build.sh test installs it)"
        if REQUIRE_SERVERS:
            pytest.fail(f"TAPIO_REQUIRE_SERVERS=1 but {why}")
        pytest.skip(why)
    return path


def _free_ports(n):
    """n distinct free ports (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NatsCluster:
    def __init__(self, binary, root, n):
        self.binary = binary
        self.root = root
        self.n = n
        ports = _free_ports(3 * n)
        self.client_ports = ports[:n]
        self.route_ports = ports[n:2 * n]
        self.http_ports = ports[2 * n:]
        self.procs = [None] * n
        self.logs = [os.path.join(root, f"n{i}.log") for i in range(n)]

    @property
    def urls(self):
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def bus(self):
        """The --bus value naming every node."""
        return ",".join(self.urls)

    def _config(self, i):
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.route_ports)
                           if j != i)
        store = os.path.join(self.root, f"n{i}")
        os.makedirs(store, exist_ok=True)
        path = os.path.join(self.root, f"n{i}.conf")
        with open(path, "w") as f:
            f.write(f"""server_name: n{i}
listen: 127.0.0.1:{self.client_ports[i]}
http: 127.0.0.1:{self.http_ports[i]}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 2GB
}}
cluster {{
  name: tapio-test
  listen: 127.0.0.1:{self.route_ports[i]}
  routes: [{routes}]
}}
""")
        return path

    def start(self, i):
        config = self._config(i)
        log = open(self.logs[i], "ab")
        try:
            self.procs[i] = subprocess.Popen([self.binary, "-c", config], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def kill(self, i):
        """SIGKILL node i and reap it."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i, timeout=30.0):
        self.kill(i)
        self.start(i)
        self.wait_ready(timeout, nodes=[i])

    def alive(self):
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def jsz(self, i):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[i]}/jsz", timeout=2) as r:
            return json.loads(r.read())

    def meta_leader(self, i):
        """The JetStream meta leader node i knows of ("" when none yet)."""
        try:
            return (self.jsz(i).get("meta_cluster") or {}).get("leader") or ""
        except (OSError, ValueError):
            return ""

    def wait_ready(self, timeout=30.0, nodes=None):
        """Until every node in `nodes` (default: the live ones) knows a meta leader; fails after
        `timeout` seconds with the tail of their logs."""
        deadline = time.monotonic() + timeout
        nodes = self.alive() if nodes is None else nodes
        while time.monotonic() < deadline:
            for i in nodes:
                if self.procs[i] is None or self.procs[i].poll() is not None:
                    pytest.fail(f"nats-server n{i} exited: {self.log_tail(i)}")
            if all(self.meta_leader(i) for i in nodes):
                return
            time.sleep(0.1)
        pytest.fail(f"no JetStream meta leader after {timeout:.0f}s: "
                    + " | ".join(self.log_tail(i) for i in nodes))

    def log_tail(self, i, n=1500):
        try:
            with open(self.logs[i], "rb") as f:
                return f"n{i}: " + f.read()[-n:].decode(errors="replace")
        except OSError:
            return f"n{i}: no log"

    def stop(self):
        for i in range(self.n):
            self.kill(i)


@contextlib.contextmanager
def nats_cluster(n=3, timeout=30.0):
    binary = nats_server_binary()
    root = tempfile.mkdtemp(prefix="tapio-nats-")
    cluster = NatsCluster(binary, root, n)
    try:
        for i in range(n):
            cluster.start(i)
        cluster.wait_ready(timeout)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
