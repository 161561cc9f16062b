"""The HTTP surface of real tapio-collector and tapio-server processes: /healthz, /readyz with its
reasons, /api/v1/stats (the original's GetStatistics fields), /metrics, the --http-port flag
(0 disables; a taken port is one line and exit code 2), and a clean stop with HTTP serving.

Most run the collector's synthetic source (no eBPF needed); one runs real eBPF."""
import os
import signal
import socket
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (BIN, ManagedProcess, ServerProcess, StreamingCollector, free_port, http_get,
                           http_json, wait_until)

GET_STATISTICS = ("connected", "events_sent", "events_dropped", "reconnects", "last_sent",
                  "batches_acked", "buffer_bytes", "send_latency_ms")


def synthetic_collector(tmp_path, servers, *flags, name="collector"):
    """`tapio-collector --source synthetic` with HTTP on a free port; returns (process, url)."""
    port = free_port()
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", "500",
            "--server", servers, "--flush-interval", "20ms", "--metrics-interval", "0",
            "--connect-timeout", "1s", "--backoff-max", "1s",
            "--http-port", str(port), "--http-host", "127.0.0.1", *flags]
    proc = ManagedProcess(argv, str(tmp_path / f"{name}.log"))
    proc.wait_log("HTTP on", timeout=20)
    return proc, f"http://127.0.0.1:{port}"


def metrics(url):
    status, headers, body = http_get(url + "/metrics")
    assert status == 200, body
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families, family, name=None, **labels):
    """The value of the one sample of `family` (named `name`) with these labels."""
    found = [s.value for s in families[family].samples
             if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, labels, families[family].samples)
    return found[0]


def test_collector_serves_health_stats_and_metrics_while_streaming(tmp_path):
    server = ServerProcess(tmp_path, http=True).wait_listening()
    collector, url = synthetic_collector(tmp_path, server.address, "--collector-id", "c-http")
    try:
        status, body = http_json(url + "/healthz")
        assert status == 200 and body["program"] == "tapio-collector"

        def ready():
            status, body = http_json(url + "/readyz")
            return status == 200 and body
        body = wait_until(ready, 20, what="the collector's /readyz to answer ready")
        assert body["checks"]["stream"]["detail"] == f"streaming to {server.address}"
        assert body["checks"]["bpf"]["detail"] == "no BPF: SyntheticSource is the source"

        stats = wait_until(lambda: (lambda s: s["events_sent"] > 0 and s)(http_json(url + "/api/v1/stats")[1]),
                           20, what="events acked by the server")
        for field in GET_STATISTICS:
            assert field in stats, field
        assert stats["connected"] is True and stats["collector_id"] == "c-http"
        assert stats["events_dropped"] == {"kernel": 0, "processor": 0, "buffer": 0}
        assert stats["batches_acked"] > 0 and stats["send_latency_ms"]["p50"] is not None

        families = metrics(url)
        assert sample(families, "tapio_events_received", collector="c-http", source="synthetic") > 0
        assert sample(families, "tapio_events_sent", collector="c-http") > 0
        assert sample(families, "tapio_connected", server=server.address) == 1
        acks = sample(families, "tapio_acks_received", collector="c-http", status="ok")
        latency = sample(families, "tapio_send_latency_seconds", name="tapio_send_latency_seconds_count")
        assert latency >= acks > 0
        assert sample(families, "tapio_send_latency_seconds", name="tapio_send_latency_seconds_bucket",
                      le="+Inf") == latency
        assert "process_resident_memory_bytes" in families and "process_cpu_seconds" in families

        # the ledger: every event seen is in one count, in the JSON and in the metrics
        ledger = http_json(url + "/api/v1/stats")[1]["ledger"]
        assert ledger["unaccounted"] == 0 and ledger["seen"] > 0, ledger
        assert ledger["seen"] == sum(ledger[k] for k in (
            "delivered", "filtered", "collapsed", "dropped_kernel", "dropped_processor",
            "dropped_buffer", "undelivered"))
        families = metrics(url)
        seen = sample(families, "tapio_ledger_events", collector="c-http", fate="seen")
        fates = sum(sample(families, "tapio_ledger_events", collector="c-http", fate=fate)
                    for fate in ("delivered", "filtered", "collapsed", "dropped_kernel",
                                 "dropped_processor", "dropped_buffer"))
        assert seen == fates + sample(families, "tapio_ledger_undelivered_events", collector="c-http")

        # the server counts the same collector
        server_families = metrics(server.http_url)
        assert sample(server_families, "tapio_collector_connected", collector="c-http") == 1
    finally:
        assert collector.stop() == 0, collector.log()
        assert server.stop() == 0, server.log()


def test_readyz_says_why_without_a_server(tmp_path):
    collector, url = synthetic_collector(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        def reconnecting():
            status, body = http_json(url + "/readyz")
            return status == 503 and body["checks"]["stream"]["ok"] is False and body
        body = wait_until(reconnecting, 20, what="/readyz to answer 503")
        (reason,) = body["not_ready"]
        assert reason.startswith("stream: no stream to a server:"), reason
        families = metrics(url)
        assert sample(families, "tapio_ready") == 0
        assert sample(families, "tapio_connected") == 0
    finally:
        collector.stop()


def test_ebpf_collector_reports_probes_and_the_ring_buffer(ebpf, tmp_path):
    server = ServerProcess(tmp_path).wait_listening()
    collector = StreamingCollector(tmp_path, server.address, http=True)
    try:
        collector.wait_http()
        status, body = http_json(collector.http_url + "/readyz")
        assert body["checks"]["bpf"]["ok"] and body["checks"]["bpf"]["detail"].startswith("attached: exec")
        subprocess.run(["/bin/true"], check=True)
        families = wait_until(lambda: (lambda f: sample(f, "tapio_events_received") > 0 and f)(metrics(collector.http_url)),
                              20, what="kernel events counted")
        assert sample(families, "tapio_ring_buffer_size_bytes") == 8 << 20
        assert 0 <= sample(families, "tapio_ring_buffer_fill_ratio") <= 1
        stats = http_json(collector.http_url + "/api/v1/stats")[1]
        assert stats["ring_buffer"]["size_bytes"] == 8 << 20
    finally:
        assert collector.stop() == 0, collector.log()
        server.stop()


def test_http_port_zero_serves_nothing(tmp_path):
    server = ServerProcess(tmp_path, flags=["--http-port", "0"]).wait_listening()
    try:
        assert "Dashboard on" not in server.log()
    finally:
        assert server.stop() == 0


def test_a_taken_http_port_is_one_line_and_exit_code_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = subprocess.run(
            [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", str(free_port()),
             "--http-port", str(port)], capture_output=True, text=True, timeout=30)
        collector = subprocess.run(
            [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--output", os.devnull,
             "--http-port", str(port), "--http-host", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    for program, result in (("tapio-server", server), ("tapio-collector", collector)):
        assert result.returncode == 2, (program, result.stderr)
        line = result.stderr.strip().splitlines()[-1]
        assert line == (f"{program}: cannot serve HTTP on 127.0.0.1:{port}: the port is in use: "
                        "choose another --http-port (0: no HTTP)"), result.stderr
        assert "Traceback" not in result.stderr


def test_http_and_grpc_on_one_port_is_refused():
    result = subprocess.run([os.path.join(BIN, "tapio-server"), "--grpc-port", "9999", "--http-port", "9999"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--http-port and --grpc-port are both 9999" in result.stderr


def test_sigterm_stops_both_cleanly_while_http_is_in_use(tmp_path):
    server = ServerProcess(tmp_path, http=True).wait_listening()
    collector, url = synthetic_collector(tmp_path, server.address)
    try:
        # a keep-alive connection held open must not hold up the exit
        conn = socket.create_connection(("127.0.0.1", int(server.http_url.rsplit(":", 1)[1])))
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        collector.proc.send_signal(signal.SIGTERM)
        assert collector.proc.wait(20) == 0, collector.log()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0, server.log()
        conn.close()
    finally:
        collector.stop()
        server.stop()
