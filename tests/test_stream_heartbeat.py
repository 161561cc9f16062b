"""A collector on a quiet node keeps its stream: the real tapio-server ends streams silent for
--stream-idle-timeout (2 s here), and the real tapio-collector (real eBPF, OOM kills only:
nothing to send) sends a heartbeat every --heartbeat-interval, which the server's idle clock
counts. Without heartbeats the same quiet collector is cut, and so is a raw client that says
hello and then nothing."""
import os
import threading
import time

import grpc

from tapio.v1 import stream_pb2
from tests.helpers import (BIN, ManagedProcess, ServerProcess, free_port, http_json, require_ebpf,
                           wait_until)

IDLE = 2.0
QUIET_FOR = 6.0


def quiet_collector(tmp_path, server, name, heartbeat):
    """A real eBPF collector of OOM kills only, on a host where nothing is OOM-killed: a quiet
    node. (The synthetic source is never quiet: it exits once its --count is reached.)"""
    port = free_port()
    argv = [os.path.join(BIN, "tapio-collector"), "--enable-ebpf", "--events", "oom_kill",
            "--correlation", "raw", "--server", server.address, "--collector-id", name,
            "--flush-interval", "50ms", "--metrics-interval", "0", "--heartbeat-interval", heartbeat,
            "--backoff-initial", "100ms", "--backoff-max", "500ms",
            "--http-port", str(port), "--http-host", "127.0.0.1"]
    process = ManagedProcess(argv, str(tmp_path / f"{name}.log"))
    process.url = f"http://127.0.0.1:{port}"
    return process


def server_stats(server):
    status, body = http_json(server.http_url + "/api/v1/stats")
    assert status == 200
    return body


def connections(server, name):
    status, body = http_json(server.http_url + "/api/v1/collectors")
    assert status == 200
    return {c["id"]: c for c in body["collectors"]}.get(name, {}).get("connections", 0)


def test_a_quiet_collector_keeps_its_stream_and_a_silent_client_is_cut(tmp_path):
    require_ebpf()
    server = ServerProcess(tmp_path, flags=["--stream-idle-timeout", f"{IDLE:g}s"], http=True)
    quiet = silent = None
    try:
        server.wait_listening()
        quiet = quiet_collector(tmp_path, server, "quiet", "500ms")
        quiet.wait_log("Connected to Tapio server")
        wait_until(lambda: connections(server, "quiet") == 1, 10, what="the quiet collector's stream")
        time.sleep(QUIET_FOR)           # three idle timeouts long, without an event
        streams = server_stats(server)["streams"]
        assert streams["idle_timeouts"] == 0, streams
        assert connections(server, "quiet") == 1
        status, stats = http_json(quiet.url + "/api/v1/stats")
        assert status == 200 and stats["connected"] and stats["reconnects"] == 0
        assert stats["heartbeats"] >= QUIET_FOR / 0.5 / 2, stats["heartbeats"]
        # (an OOM kill elsewhere on this host, another test's, may still reach the server: the
        # collector below, without heartbeats, shows what quiet costs)

        # a raw client that says hello and then nothing is still cut
        channel = grpc.insecure_channel(server.address)
        ended, errors = threading.Event(), []

        def requests():
            yield stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
                collector_id="mute", node_name="n")).SerializeToString()
            ended.wait(30)

        def read():
            try:
                for _ in channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(requests(), timeout=30):
                    pass
            except grpc.RpcError as e:
                errors.append(e)
            finally:
                ended.set()
        threading.Thread(target=read, daemon=True).start()
        try:
            assert ended.wait(IDLE * 5), "a stream that sends nothing after hello was not ended"
            assert errors[0].code() == grpc.StatusCode.UNAVAILABLE
            assert f"idle for {IDLE:g}s" in errors[0].details()
        finally:
            ended.set()
            channel.close()
        assert server_stats(server)["streams"]["idle_timeouts"] == 1

        # the same quiet collector without heartbeats: its stream is cut, and it reconnects
        silent = quiet_collector(tmp_path, server, "silent", "0")
        silent.wait_log("Connected to Tapio server")
        wait_until(lambda: connections(server, "silent") >= 2, IDLE * 5,
                   what="the collector without heartbeats to be cut and to reconnect")
        assert server_stats(server)["streams"]["idle_timeouts"] >= 2
        # and the one with heartbeats is still on its first stream
        assert connections(server, "quiet") == 1
        status, stats = http_json(quiet.url + "/api/v1/stats")
        assert stats["reconnects"] == 0
    finally:
        for process in (silent, quiet):
            if process is not None:
                process.stop()
        server.stop()
