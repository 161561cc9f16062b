"""Time sanity: event timestamps far ahead of the server's clock (2^64-1, the year 2500) are clamped
for correlation and counted, and nothing in the server raises on them. A real tapio-server
process, fed over real gRPC, asked over real HTTP."""
import json

import grpc

from tapio.server.correlation import CorrelationEngine
from tapio.server.correlation.state import SEC, CollectorClock
from tapio.server.store import Store
from tapio.v1 import stream_pb2
from tests.correlation_fixtures import Events, State, pod_context
from tests.helpers import ServerProcess, http_get, wait_until

U64_MAX = (1 << 64) - 1
YEAR_2500 = 16_725_225_600 * SEC

CORRELATION = """\
[crash_loop]
threshold = 3
window = "1m"
scopes = ["cgroup"]

[process_tree]
grace = "100ms"

[limits]
tick = "50ms"
max_clock_skew = "1h"

"""


def hostile_events(ev, ts):
    """Every kind of hot and cold event, stamped `ts`: a process tree, a crash loop, fatal
    signals, an OOM kill, failed connects."""
    ctx = pod_context(namespace="shop")
    out = [ev.exec(500, 1, "sh", ts=ts, context=ctx), ev.exec(501, 500, "child", ts=ts, context=ctx),
           ev.exit(501, 500, "child", code=0, ts=ts, context=ctx), ev.exit(500, 1, "sh", code=0, ts=ts, context=ctx)]
    for i in range(4):
        out.append(ev.exit(600 + i, 1, "crash", code=1, ts=ts - i, executable="/app/crash", context=ctx))
    out += [ev.signal(700, "segv", 11, ts=ts, context=ctx), ev.exit(700, 1, "segv", signal=11, ts=ts, context=ctx),
            ev.oom(800, "hog", ts=ts, context=ctx), ev.exit(800, 1, "hog", signal=9, ts=ts, context=ctx)]
    out += [ev.connect(900, "curl", "10.9.9.9", 81, ts=ts, count=20, context=ctx)]
    return out


def test_the_clock_takes_a_far_future_timestamp_as_the_skew_bound():
    wall = [1_800_000_000 * SEC]
    clock = CollectorClock(monotonic=lambda: 0, max_skew_ns=3600 * SEC, wall=lambda: wall[0])
    clock.observe(U64_MAX)
    assert clock.now() == wall[0] + 3600 * SEC and clock.clamped == 1
    clock.observe(wall[0] + 60 * SEC)            # behind its time now: no move, no count
    assert clock.now() == wall[0] + 3600 * SEC and clock.clamped == 1
    wall[0] += 7200 * SEC
    clock.observe(wall[0] + 1800 * SEC)          # ahead of the server by half an hour: taken as is
    assert clock.now() == wall[0] + 1800 * SEC and clock.clamped == 1


def test_correlation_never_raises_on_any_timestamp(caplog):
    store = Store()
    engine = CorrelationEngine(on_group=store.put_group, timer=False)
    try:
        for ts in (U64_MAX, (1 << 63) - 1, 1 << 63, YEAR_2500, SEC):
            ev = Events(collector="node-evil", node="node-evil")
            engine.consume(ev.batch(*hostile_events(ev, ts)), State("node-evil", "node-evil"))
            engine.tick()
        engine.tick(force=True)
        assert "Traceback" not in caplog.text and "failed" not in caplog.text, caplog.text
        assert engine.sink_errors == 0
        stats = engine.stats()["collectors"]["node-evil"]
        assert stats["timestamps_clamped"] > 0
        groups = store.groups(limit=1000)
        assert groups and all(0 <= g["start_ns"] <= g["end_ns"] < 1 << 63 for g in groups)
    finally:
        engine.close(flush=False)
        store.close()


def test_a_timestamp_of_2_64_minus_1_makes_no_traceback_in_a_running_server(tmp_path):
    config = tmp_path / "correlation.toml"
    config.write_text(CORRELATION)
    server = ServerProcess(tmp_path, ["--correlation-config", str(config), "--trace-export",
                                      f"jsonl:{tmp_path / 'traces.jsonl'}"], http=True).wait_listening()
    try:
        ev = Events(collector="node-evil", node="node-evil")
        requests = [stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
            collector_id="node-evil", node_name="node-evil"))]
        for batch_id, ts in enumerate((U64_MAX, YEAR_2500, ev.now), 1):
            requests.append(stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
                batch_id=batch_id, collector_id="node-evil", node_name="node-evil",
                events=hostile_events(ev, ts))))
        with grpc.insecure_channel(server.address) as channel:
            stream = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
            acks = [stream_pb2.TapioStreamEventsResponse.FromString(r)
                    for r in stream(iter([r.SerializeToString() for r in requests]), timeout=30)]
        assert [a.ack.status for a in acks if a.HasField("ack")] == [stream_pb2.EventAck.STATUS_OK] * 3

        def clamped():
            status, _, body = http_get(server.http_url + "/api/v1/stats")
            collectors = json.loads(body)["store"]["correlation"]["collectors"]
            return collectors.get("node-evil", {}).get("timestamps_clamped")
        wait_until(clamped, 15, what="the clamped timestamps to be counted")
        # the engine ticks 20 times a second: give it a few seconds of ticks with that state
        wait_until(lambda: json.loads(http_get(server.http_url + "/api/v1/groups")[2])["count"] >= 3,
                   20, what="groups from the hostile batches")
        status, _, body = http_get(server.http_url + "/api/v1/groups?limit=1000")
        assert status == 200
        assert all(0 <= g["start_ns"] < 1 << 63 for g in json.loads(body)["groups"])
    finally:
        assert server.stop() == 0, server.log()
    log = server.log()
    assert "Traceback" not in log and "OverflowError" not in log, log
