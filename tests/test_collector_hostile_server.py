"""A collector survives its server: a real collector process against a real gRPC server on
127.0.0.1 that answers with bytes no TapioStreamEventsResponse has (a broken or hostile server),
or that pauses it and never resumes."""
import os
import subprocess
import threading
from concurrent import futures

import grpc
import pytest

from tapio.v1 import stream_pb2
from tests.helpers import ServerProcess, StreamingCollector, free_port, http_get, wait_until

METHOD = "/tapio.v1.TapioService/StreamEvents"


class FakeServer:
    """grpcio with a generic handler on StreamEvents: `reply(stream_number)` gives the bytes it
    answers each request with (None: no answer). Counts streams and requests."""

    def __init__(self, reply):
        self.reply = reply
        self.streams = 0
        self.requests = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.stream_stream_rpc_method_handler(self._stream)   # raw bytes both ways
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "tapio.v1.TapioService", {"StreamEvents": handler})])
        self.server.add_insecure_port(self.address)

    def _stream(self, requests, context):
        with self._lock:
            self.streams += 1
            number = self.streams
        for _ in requests:
            with self._lock:
                self.requests += 1
            data = self.reply(number)
            if data is not None:
                yield data

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(grace=None).wait(5)


def undecodable(_stream):
    # field number 0 with wire type 7: no protobuf parser accepts it, whatever follows
    return b"\x07" + os.urandom(63)


@pytest.fixture
def exec_now():
    """Run a short real process (its exec and exit events give the collector something to send)."""
    def run():
        subprocess.run(["/bin/true"], check=True, timeout=10)
    return run


def test_collector_survives_undecodable_replies(ebpf, tmp_path, exec_now):
    with FakeServer(undecodable) as hostile:
        collector = StreamingCollector(tmp_path, hostile.address, http=True,
                                       flags=["--backoff-max", "1s"])
        try:
            collector.wait_http()

            def reconnected():
                exec_now()
                return hostile.streams >= 3
            # each stream ends at its first bad reply, and the collector connects again
            wait_until(reconnected, timeout=30, interval=0.2, what="three streams from the collector")
            assert collector.proc.poll() is None, collector.log()
            assert "Undecodable reply from" in collector.log()
            status, _, body = http_get(collector.http_url + "/metrics")
            assert status == 200
            bad = [line for line in body.decode().splitlines()
                   if line.startswith("tapio_collector_bad_replies_total")]
            assert bad and float(bad[0].split()[-1]) >= 2, bad
        finally:
            code = collector.stop()
        assert code == 0, collector.log()
        assert "tapio-collector:" in collector.log()      # the exit summary
        assert "Traceback" not in collector.log()


def test_pause_longer_than_pause_timeout_fails_over(ebpf, tmp_path, exec_now):
    pause = stream_pb2.TapioStreamEventsResponse(
        control=stream_pb2.StreamControl(action=stream_pb2.StreamControl.ACTION_PAUSE,
                                         reason="held")).SerializeToString()
    with FakeServer(lambda _stream: pause) as pausing:
        server = ServerProcess(tmp_path).wait_listening()
        collector = StreamingCollector(tmp_path, f"{pausing.address},{server.address}",
                                       flags=["--pause-timeout", "2s", "--server-order", "listed"])
        try:
            collector.wait_log("eBPF probes attached")
            wait_until(lambda: pausing.requests >= 1, timeout=20, what="the hello at the pausing server")
            collector.wait_log("Server asked to pause sending")
            marker = "/bin/true"

            def delivered():
                exec_now()
                return [e for e in server.events() if e.get("type") == "exec"
                        and (e.get("exec") or {}).get("filename") == marker]
            wait_until(delivered, timeout=30, interval=0.3, what="an exec at the second server")
            assert "paused us for longer than" in collector.log()
        finally:
            collector.stop()
            server.stop()
