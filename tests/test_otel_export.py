"""Groups as OpenTelemetry traces, checked in a real OTLP/gRPC receiver (opentelemetry-proto's
TraceService on 127.0.0.1): span names, parents, kernel times and semantic-convention attributes;
an exporter that is down never blocks, and what it loses is counted."""
import json
import signal
import socket
import time

import pytest

from tapio.server.otel import TraceExporter, parse_spec
from tests.correlation_fixtures import CONTAINER, POD_UID, SEC, OtlpReceiver, pod_context
from tests.helpers import wait_until
from tests.test_correlation_engine import Harness, config


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    r.stop()


@pytest.fixture
def exporter(receiver):
    e = TraceExporter("otlp", receiver.endpoint, schedule_delay_ms=50)
    yield e
    e.shutdown(5)


def export_and_wait(exporter, receiver, group, spans):
    assert exporter.export(group)
    return wait_until(lambda: len(receiver.trace(group["trace_id"])) >= spans and receiver.trace(group["trace_id"]),
                      10, what=f"{spans} spans of the {group['kind']} trace")


def test_a_process_tree_is_a_trace_nested_as_the_processes_ran(exporter, receiver):
    h = Harness()
    ev = h.ev
    h.feed(ev.exec(500, 1, "sh", args=["sh", "-c", "x"], filename="/bin/sh"))
    ev.at(0.1)
    h.feed(ev.exec(501, 500, "bash", filename="/bin/bash"))
    ev.at(0.1)
    h.feed(ev.exec(502, 501, "sleep", args=["sleep", "0.2"], filename="/bin/sleep"))
    ev.at(0.2)
    h.feed(ev.exit(502, 501, "sleep"))
    ev.at(0.1)
    h.feed(ev.exec(503, 500, "false", filename="/bin/false"))
    h.feed(ev.exit(503, 500, "false", code=1), ev.exit(501, 500, "bash"), ev.exit(500, 1, "sh", code=1))
    h.tick(5)
    [group] = h.closed("process_tree")
    spans = export_and_wait(exporter, receiver, group, 5)
    by_name = {s["name"]: s for s in spans}
    root = by_name["semantic.process_lifecycle"]
    assert root["parent_span_id"] == "" and root["trace_id"] == group["id"]
    assert root["attributes"]["tapio.group.id"] == group["id"]
    assert root["attributes"]["tapio.intent"] == "process_lifecycle"
    assert root["attributes"]["tapio.severity"] == "info"      # a non-zero exit in a tree is routine
    assert root["attributes"]["tapio.group.incomplete"] is False
    assert root["resource"]["service.name"] == "tapio"
    sh, bash, sleep, false = (by_name[f"process {c}"] for c in ("sh", "bash", "sleep", "false"))
    assert sh["parent_span_id"] == root["span_id"]
    assert bash["parent_span_id"] == sh["span_id"] and false["parent_span_id"] == sh["span_id"]
    assert sleep["parent_span_id"] == bash["span_id"]
    # real start and end times: exec to exit
    processes = {p["pid"]: p for p in group["attributes"]["processes"]}
    assert sleep["start_ns"] == processes[502]["start_ns"] and sleep["end_ns"] == processes[502]["end_ns"]
    assert sleep["end_ns"] - sleep["start_ns"] == int(0.2 * SEC)
    assert root["start_ns"] == sh["start_ns"] and root["end_ns"] >= sh["end_ns"]
    a = sleep["attributes"]
    assert a["process.pid"] == 502 and a["process.parent_pid"] == 501
    assert a["process.executable.path"] == "/bin/sleep" and a["process.command_line"] == "sleep 0.2"
    assert a["process.exit.code"] == 0
    assert false["attributes"]["process.exit.code"] == 1 and false["status"] == 2   # STATUS_CODE_ERROR


def test_an_oom_kill_trace_has_the_victim_with_its_signal_and_pod(exporter, receiver):
    h = Harness()
    ev = h.ev
    ctx = pod_context()
    h.feed(ev.exec(600, 1, "payment", filename="/app/payment", context=ctx))
    ev.at(2)
    h.feed(ev.oom(600, "payment", context=ctx), ev.signal(600, "payment", signal.SIGKILL, sender_pid=0),
           ev.exit(600, 1, "payment", signal=signal.SIGKILL, context=ctx, start_ns=ev.now - 2 * SEC))
    h.tick(6)
    [group] = h.closed("oom_kill")
    spans = export_and_wait(exporter, receiver, group, 4)
    by_name = {s["name"]: s for s in spans}
    root = by_name["semantic.memory_exhaustion_investigation"]
    victim = by_name["process payment"]
    assert victim["parent_span_id"] == root["span_id"]
    a = victim["attributes"]
    assert a["process.pid"] == 600 and a["process.exit.code"] == 128 + 9
    assert a["tapio.process.exit.signal"] == "SIGKILL"
    assert a["container.id"] == CONTAINER and a["k8s.pod.uid"] == POD_UID
    assert a["k8s.pod.name"] == "payment-7d9" and a["k8s.namespace.name"] == "default"
    assert victim["end_ns"] - victim["start_ns"] == 2 * SEC
    assert by_name["oom_kill"]["parent_span_id"] == victim["span_id"]
    assert root["attributes"]["tapio.severity"] == "critical"
    assert root["attributes"]["tapio.memcg.limit_bytes"] == 512 << 20


def test_a_connectivity_trace_names_the_destination(exporter, receiver):
    h = Harness(config(connectivity={"close_after": "1s"}))
    h.feed(*[h.ev.connect(700, "client", "10.1.2.3", 6379, count=2) for _ in range(5)])
    h.tick(2)
    [group] = h.closed("connectivity_degradation")
    spans = export_and_wait(exporter, receiver, group, 6)
    root = next(s for s in spans if s["name"] == "semantic.connectivity_degradation")
    assert root["attributes"]["server.address"] == "10.1.2.3" and root["attributes"]["server.port"] == 6379
    assert root["attributes"]["network.transport"] == "tcp"
    connects = [s for s in spans if s["name"] == "tcp.connect"]
    assert len(connects) == 5 and all(s["parent_span_id"] == root["span_id"] for s in connects)
    assert connects[0]["attributes"]["server.address"] == "10.1.2.3"
    assert connects[0]["attributes"]["error.type"] == "refused"
    assert connects[0]["attributes"]["tapio.event.count"] == 2


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_exporter_that_is_down_never_blocks_and_counts_what_it_loses():
    h = Harness()
    h.feed(h.ev.signal(800, "x", signal.SIGSEGV, code=1), h.ev.exit(800, 1, "x", signal=signal.SIGSEGV))
    h.tick(2)
    [group] = h.closed("fatal_signal")
    exporter = TraceExporter("otlp", f"127.0.0.1:{_closed_port()}", queue_size=4, span_queue=8,
                             schedule_delay_ms=20, timeout_s=1.0)
    try:
        start = time.monotonic()
        accepted = [exporter.export(dict(group, id=f"{n:032x}", trace_id=f"{n:032x}")) for n in range(1, 200)]
        assert time.monotonic() - start < 0.5, "export() must never wait for the exporter"
        assert accepted.count(False) > 0 and exporter.stats()["groups_dropped"] == accepted.count(False)
        ok, reason = wait_until(lambda: (r := exporter.healthy()) and not r[0] and r, 20,
                                what="the exporter to report it is unhealthy")
        assert "failing" in reason or "dropped" in reason or "full" in reason
        wait_until(lambda: exporter.stats()["spans_failed"] > 0, 20, what="spans counted as lost")
    finally:
        exporter.shutdown(2)


def test_jsonl_export(tmp_path):
    h = Harness()
    h.feed(h.ev.signal(900, "x", signal.SIGBUS, code=2), h.ev.exit(900, 1, "x", signal=signal.SIGBUS))
    h.tick(2)
    [group] = h.closed("fatal_signal")
    path = tmp_path / "traces" / "spans.jsonl"
    exporter = TraceExporter(f"jsonl:{path}", schedule_delay_ms=20)
    exporter.export(group)
    assert exporter.flush(5)
    exporter.shutdown(2)
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert {s["name"] for s in spans} == {"semantic.process_crash_investigation", "process x", "process.signal"}
    assert all(s["trace_id"] == group["id"] for s in spans)
    assert exporter.healthy() == (True, "")


def test_export_specs():
    assert parse_spec("otlp") == ("otlp", None) and parse_spec("jsonl:/tmp/x") == ("jsonl", "/tmp/x")
    assert TraceExporter("none").healthy() == (True, "trace export is off")
    with pytest.raises(ValueError, match="not a trace exporter"):
        parse_spec("zipkin")


def test_a_group_over_a_gap_in_its_collectors_events_says_it_is_incomplete(exporter, receiver):
    h = Harness()
    ev = h.ev
    for n in range(5):
        h.feed(ev.exit(600 + n, 1, "payment", code=1, context=pod_context(), executable="/app/payment"))
        ev.at(1)
    h.engine.mark_gap("node-a", ev.now - 3 * SEC, ev.now - 2 * SEC, "sequence gap 3-4")
    h.tick(400)
    [group] = h.closed("crash_loop")
    spans = export_and_wait(exporter, receiver, group, 6)
    root = next(s for s in spans if s["name"] == "semantic.service_reliability_incident")
    assert root["attributes"]["tapio.group.incomplete"] is True
