"""Helpers for tests that run real processes: bounded waits, collector/server processes."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
REQUIRE_EBPF = os.environ.get("TAPIO_REQUIRE_EBPF") == "1"

# Processes the tests start serve no HTTP unless a test asks for it with --http-port: the default
# ports (8080, 9091) would collide between processes running side by side.
os.environ.setdefault("TAPIO_HTTP_PORT", "0")


def require_ebpf():
    """Skip without the privilege real eBPF needs; under TAPIO_REQUIRE_EBPF=1, fail instead."""
    why = None
    if os.geteuid() != 0:
        why = "needs root (or CAP_BPF+CAP_PERFMON) for real eBPF"
    elif not os.path.exists("/sys/kernel/btf/vmlinux"):
        why = "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if why is None:
        return
    if REQUIRE_EBPF:
        pytest.fail(f"TAPIO_REQUIRE_EBPF=1 but {why}")
    pytest.skip(why)


def wait_until(predicate, timeout=10.0, interval=0.02, what="the condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (linux/tcp.h)


def tcp_bytes_acked(sock):
    """tcpi_bytes_acked: what the peer has acknowledged, SYN included on the side that connected."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES_ACKED + 8)
    return struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]


def recv_exactly(sock, n):
    """Read exactly n bytes (discarded); fail if the peer closes first."""
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        assert chunk, f"the peer closed after {got} of {n} bytes"
        got += len(chunk)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10.0, headers=None, method=None, data=None):
    """(status, headers, body bytes) of a request (GET by default); HTTP error statuses are
    returned, not raised."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def http_json(url, timeout=10.0):
    """(status, parsed JSON body) of a GET."""
    status, _, body = http_get(url, timeout)
    return status, json.loads(body)


def _http_flags(http):
    """--http-port for a test process: 0 (off), or a free port on 127.0.0.1 when `http`."""
    if not http:
        return None, ["--http-port", "0"]
    port = free_port()
    return f"http://127.0.0.1:{port}", ["--http-port", str(port), "--http-host", "127.0.0.1"]


def read_json_lines(path):
    """Every complete JSON line of a file that another process may still be writing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


class ManagedProcess:
    """A child process whose stderr goes to a file, stopped (and if need be killed) at the end."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text, timeout=30.0):
        def seen():
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"process exited with {self.proc.returncode} before logging "
                            f"{text!r}:\n{self.log()}")
            return False
        try:
            wait_until(seen, timeout, what=f"{text!r} in {self.log_path}")
        except BaseException:
            self.stop()          # never leave a process (or its log file) behind
            raise

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal the process, wait (bounded), kill it if it does not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class CollectorProcess(ManagedProcess):
    """`tapio-collector --enable-ebpf --output FILE [flags]`."""

    def __init__(self, output, flags=(), env=None, http=False):
        self.output = output
        self.http_url, http_flags = _http_flags(http)
        argv = [os.path.join(BIN, "tapio-collector"), "--enable-ebpf", "--output", str(output),
                *http_flags, *flags]
        super().__init__(argv, str(output) + ".log", env)

    def wait_attached(self):
        self.wait_log("eBPF probes attached")

    def events(self):
        return read_json_lines(self.output)

    def wait_for(self, predicate, timeout=15.0, what="an event"):
        """The events matching `predicate`, once at least one has arrived."""
        return wait_until(lambda: [e for e in self.events() if predicate(e)], timeout, what=what)


class ServerProcess(ManagedProcess):
    """`tapio-server --host 127.0.0.1 --grpc-port PORT --events-out FILE [flags]`."""

    def __init__(self, tmp_path, flags=(), port=None, env=None, name="server", http=False):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.events_out = tmp_path / f"{name}-events.jsonl"
        self.http_url, http_flags = _http_flags(http)
        # the groups database goes with the test too, unless the test names its own
        db = [] if "--db" in flags else ["--db", str(tmp_path / f"{name}.db")]
        argv = [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", str(self.port),
                "--events-out", str(self.events_out), *db, *http_flags, *flags]
        super().__init__(argv, str(tmp_path / f"{name}.log"), env)

    def wait_listening(self):
        self.wait_log("Tapio server listening")
        if self.http_url:
            self.wait_log("Dashboard on")
        return self

    def events(self):
        return read_json_lines(self.events_out)

    def wait_for(self, predicate, timeout=20.0, what="an event at the server"):
        return wait_until(lambda: [e for e in self.events() if predicate(e)], timeout, what=what)


class StreamingCollector(ManagedProcess):
    """`tapio-collector --server ADDRESS --enable-ebpf [flags]`."""

    def __init__(self, tmp_path, servers, flags=(), env=None, name="collector", http=False):
        self.http_url, http_flags = _http_flags(http)
        argv = [os.path.join(BIN, "tapio-collector"), "--enable-ebpf", "--server", servers,
                "--flush-interval", "50ms", "--metrics-interval", "0", *http_flags, *flags]
        super().__init__(argv, str(tmp_path / f"{name}.log"), env)

    def wait_http(self, timeout=30.0):
        """Until the collector serves HTTP (after its probes are attached)."""
        self.wait_log("HTTP on", timeout)
        return self


def read_in_background(call):
    """Collect a server-streaming gRPC call's responses in a daemon thread. Returns (the list
    they go into, an Event set when the call has ended)."""
    import grpc
    import threading
    got, done = [], threading.Event()

    def read():
        try:
            for response in call:
                got.append(response)
        except grpc.RpcError:
            pass            # cancelled or ended by the server: the test looks at what came
        finally:
            done.set()
    threading.Thread(target=read, daemon=True).start()
    return got, done
