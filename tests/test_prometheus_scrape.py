"""A real Prometheus (Debian's `prometheus`, installed by ./build.sh test) scrapes the /metrics
of a real tapio-server and a real eBPF tapio-collector on 127.0.0.1 every second; the test asks
Prometheus's own HTTP API whether both targets are up and whether the server counted kernel
events."""
import json
import shutil
import subprocess
import urllib.parse

import pytest

from tests.helpers import (ManagedProcess, ServerProcess, StreamingCollector, free_port, http_get,
                           http_json, wait_until)

PROMETHEUS = shutil.which("prometheus")

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tapio-server
    scrape_interval: 1s
    static_configs:
      - targets: ["{server}"]
  - job_name: tapio-collector
    scrape_interval: 1s
    static_configs:
      - targets: ["{collector}"]
"""


class Prometheus(ManagedProcess):
    def __init__(self, tmp_path, targets):
        config = tmp_path / "prometheus.yml"
        config.write_text(CONFIG.format(**targets))
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={self.url[len('http://'):]}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h"]
        super().__init__(argv, str(tmp_path / "prometheus.log"))

    def wait_ready(self, timeout=30.0):
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return http_get(self.url + "/-/ready", timeout=2)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout, interval=0.2, what="prometheus /-/ready")
        return self

    def query(self, promql):
        """The result vector of an instant query, as [(labels, value)]."""
        status, body = http_json(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200 and body["status"] == "success", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


@pytest.fixture
def prometheus_binary():
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: ./build.sh test installs Debian's prometheus package")
    return PROMETHEUS


def test_prometheus_scrapes_server_and_collector(ebpf, prometheus_binary, tmp_path):
    server = ServerProcess(tmp_path, http=True).wait_listening()
    collector = StreamingCollector(tmp_path, server.address, http=True)
    prometheus = None
    try:
        collector.wait_http()
        for _ in range(5):                 # real kernel events: execs and exits
            subprocess.run(["/bin/true"], check=True)
        wait_until(lambda: http_json(server.http_url + "/api/v1/stats")[1]["events"]["received"] > 0,
                   20, what="kernel events at the server")

        targets = {"server": server.http_url[len("http://"):], "collector": collector.http_url[len("http://"):]}
        prometheus = Prometheus(tmp_path, targets).wait_ready()

        def both_up():
            up = {labels["job"]: value for labels, value in prometheus.query("up")}
            return up if up == {"tapio-server": 1.0, "tapio-collector": 1.0} else None
        wait_until(both_up, 30, interval=0.5, what="up == 1 for both targets")

        def received():
            found = prometheus.query('sum by (job) (tapio_events_received_total)')
            by_job = {labels["job"]: value for labels, value in found}
            return by_job if by_job.get("tapio-server", 0) > 0 and by_job.get("tapio-collector", 0) > 0 else None
        by_job = wait_until(received, 30, interval=0.5, what="tapio_events_received_total > 0")
        assert by_job["tapio-server"] > 0 and by_job["tapio-collector"] > 0

        # per type at the server, the process metrics of both, and every scrape clean
        types = {labels["type"] for labels, _ in prometheus.query('tapio_events_received_total{job="tapio-server"}')}
        assert "exec" in types, types
        assert {l["job"] for l, _ in prometheus.query("process_resident_memory_bytes")} == {"tapio-server", "tapio-collector"}
        status, body = http_json(prometheus.url + "/api/v1/targets")
        active = body["data"]["activeTargets"]
        assert [(t["labels"]["job"], t["health"], t["lastError"]) for t in sorted(active, key=lambda t: t["labels"]["job"])] == \
            [("tapio-collector", "up", ""), ("tapio-server", "up", "")], json.dumps(active, indent=1)
    finally:
        if prometheus is not None:
            prometheus.stop()
        collector.stop()
        server.stop()
