"""Stream limits on a real grpcio server on 127.0.0.1 with the real TapioService, asked by real gRPC
clients: a per-token cap below the total, so one token cannot fill the server, and health checks
and queries that still get in when the collector streams are full."""
import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tapio.server.auth import Auth
from tapio.server.grpc_server import GrpcServer, per_token_default
from tapio.server.ingest import Ingest
from tapio.server.service import TapioService
from tapio.server.store import Store
from tapio.server.subscribe import SERVICE as QUERY_SERVICE, QueryService
from tapio.v1 import query_pb2, query_pb2_grpc, stream_pb2
from tests.correlation_fixtures import Events
from tests.helpers import BIN, ManagedProcess, free_port, read_in_background, wait_until

TOKENS = "tok-a collector\ntok-b collector\ntok-reader reader\n"


class Held:
    """One open StreamEvents call: says hello, then holds the stream until closed."""

    def __init__(self, channel, token, collector_id):
        self.done = threading.Event()
        self.error = None
        hello = stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
            collector_id=collector_id, node_name="n")).SerializeToString()

        def requests():
            yield hello
            self.done.wait(30)

        call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
        self.call = call(requests(), metadata=[("authorization", f"Bearer {token}")], timeout=30)
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def close(self):
        self.done.set()
        self.call.cancel()
        self.ended.wait(10)


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    auth = Auth(str(path))
    ingest = Ingest()
    store = Store(retention_s=0)
    service = TapioService(ingest, authorize=auth)
    query = QueryService(store, authorize=auth)
    grpc_server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 4, False,
                             extra_services=[(query.handler(), QUERY_SERVICE)])
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    yield grpc_server, channel
    channel.close()
    query.close()
    grpc_server.stop(1)
    ingest.close()
    store.close()


def test_one_token_cannot_take_every_stream(server):
    grpc_server, channel = server
    assert grpc_server.limits.per_token == per_token_default(4) == 3
    held = []
    try:
        for i in range(3):
            held.append(Held(channel, "tok-a", f"a-{i}"))
            wait_until(lambda: grpc_server.limits.streams() == i + 1, 10, what=f"stream {i + 1}")
        fourth = Held(channel, "tok-a", "a-3")
        assert fourth.ended.wait(10) and fourth.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "token 1 holds 3 collector streams" in fourth.error.details()
        # another token still gets in, up to the total
        held.append(Held(channel, "tok-b", "b-0"))
        wait_until(lambda: grpc_server.limits.streams() == 4, 10, what="the other token's stream")
        full = Held(channel, "tok-b", "b-1")
        assert full.ended.wait(10) and full.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the server's limit" in full.error.details()
        # with every collector stream taken, health checks and queries still answer
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        groups = query_pb2_grpc.TapioQueryStub(channel).ListGroups(
            query_pb2.ListGroupsRequest(), metadata=[("authorization", "Bearer tok-reader")], timeout=10)
        assert list(groups.groups) == []
        # a stream that ends gives its place back
        held.pop(0).close()
        wait_until(lambda: grpc_server.limits.streams() == 3, 10, what="the place to be given back")
        held.append(Held(channel, "tok-a", "a-again"))
        wait_until(lambda: grpc_server.limits.streams() == 4, 10, what="a new stream in its place")
        assert held[-1].error is None
        assert grpc_server.limits.refused == 2
    finally:
        for h in held:
            h.close()


# ---- timeouts, and a collector id no other stream can take over ------------------------------------

class Plain:
    """TapioService on a real grpcio server without tokens, with short timeouts."""

    def __init__(self, hello_timeout=10.0, idle_timeout=900.0):
        self.ingest = Ingest()
        self.service = TapioService(self.ingest, hello_timeout=hello_timeout, idle_timeout=idle_timeout)
        self.grpc = GrpcServer(self.service, "127.0.0.1", free_port(), 4 << 20, 8, False)
        self.grpc.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")

    def close(self):
        self.channel.close()
        self.grpc.stop(1)
        self.ingest.close()


def held_stream(channel, messages):
    """A StreamEvents call that sends `messages` then holds the stream open (until the server
    ends it or 30 s pass). Returns (responses, ended event, the error holder, a release event)."""
    release = threading.Event()
    got, errors, ended = [], [], threading.Event()

    def requests():
        yield from messages
        release.wait(30)

    call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(requests(), timeout=30)

    def read():
        try:
            for r in call:
                got.append(stream_pb2.TapioStreamEventsResponse.FromString(r))
        except grpc.RpcError as e:
            errors.append(e)
        finally:
            ended.set()
    threading.Thread(target=read, daemon=True).start()
    return got, ended, errors, release


def hello(collector_id):
    return stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
        collector_id=collector_id, node_name="n")).SerializeToString()


def batch(collector_id, batch_id):
    ev = Events(collector=collector_id, node="n")
    return stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=batch_id, collector_id=collector_id, node_name="n",
        events=[ev.exec(1, 0, "sh"), ev.exit(1, 0, "sh")])).SerializeToString()


def test_a_stream_that_says_nothing_is_ended_and_one_gone_silent_too():
    plain = Plain(hello_timeout=0.5, idle_timeout=1.0)
    try:
        _, ended, errors, release = held_stream(plain.channel, [])
        assert ended.wait(10), "a silent stream was not ended"
        assert errors[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no hello within" in errors[0].details()
        release.set()
        got, ended, errors, release = held_stream(plain.channel, [hello("quiet"), batch("quiet", 1)])
        assert ended.wait(10), "an idle stream was not ended"
        assert [r.ack.batch_id for r in got if r.HasField("ack")] == [1]
        assert errors[0].code() == grpc.StatusCode.UNAVAILABLE and "idle for 1s" in errors[0].details()
        release.set()
        assert plain.service.timeouts == {"hello": 1, "idle": 1}
        assert plain.ingest.collectors["quiet"].streams == 0
    finally:
        plain.close()


def test_another_stream_cannot_poison_a_collectors_duplicate_window():
    """The attack of issue row 1: a stream says hello as another collector's id and sends batch ids
    from 2^63. They are refused (INVALID_ARGUMENT) and not remembered; the new stream replaces the
    real one visibly; the real collector reconnects and its next batches are accepted."""
    plain = Plain()
    try:
        start = time.time_ns() // 1000
        got, ended, errors, release = held_stream(plain.channel, [hello("victim"), batch("victim", start)])
        wait_until(lambda: [r for r in got if r.HasField("ack")], 10, what="the victim's first ack")
        attacker = [hello("victim")] + [batch("victim", (1 << 63) + i) for i in range(3)]
        a_got, a_ended, a_errors, a_release = held_stream(plain.channel, attacker)
        assert a_ended.wait(10) and a_errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "further ahead of the server's clock" in a_errors[0].details()
        assert not [r for r in a_got if r.HasField("ack")]
        # the victim's stream was replaced by the attacker's, and that is counted and said
        assert ended.wait(10) and errors[0].code() == grpc.StatusCode.ABORTED
        assert "replaced by a newer stream" in errors[0].details()
        state = plain.ingest.collectors["victim"]
        assert state.replaced == 1 and state.ids_refused == 1
        # the collector reconnects: its next batches are new, and accepted
        got2, _, errors2, release2 = held_stream(plain.channel, [hello("victim")] +
                                                 [batch("victim", start + i) for i in range(1, 6)])
        wait_until(lambda: len([r for r in got2 if r.HasField("ack")]) == 5, 10, what="5 acks")
        assert {r.ack.status for r in got2 if r.HasField("ack")} == {stream_pb2.EventAck.STATUS_OK}
        assert state.batches == 6 and state.events == 12 and state.duplicates == 0
        for r in (release, a_release, release2):
            r.set()
    finally:
        plain.close()


def test_a_stream_that_ignores_pause_is_cut_and_a_polite_one_goes_on():
    """A slow server (a small queue, 50 ms a batch): the stream that fills the queue is told to
    PAUSE; it goes on sending, and is ended with RESOURCE_EXHAUSTED after the grace period. A
    collector that paused when told gets every batch acked."""
    ingest = Ingest(queue_batches=8, batch_delay=0.05, pause_grace=0.5)
    service = TapioService(ingest)
    grpc_server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 8, False)
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    start = time.time_ns() // 1000
    try:
        rude = [hello("rude")] + [batch("rude", start + i) for i in range(1, 200)]
        got, ended, errors, release = held_stream(channel, rude)
        assert ended.wait(30), "the stream that ignores PAUSE was not ended"
        assert errors and errors[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "after PAUSE" in errors[0].details()
        assert any(r.HasField("control") and r.control.action == stream_pb2.StreamControl.ACTION_PAUSE
                   for r in got)
        assert ingest.pause_ignored == 1
        release.set()
        polite = [hello("polite")] + [batch("polite", start + i) for i in range(1, 6)]
        got, _, errors, release = held_stream(channel, polite)
        wait_until(lambda: len([r for r in got if r.HasField("ack")]) == 5, 20, what="the polite acks")
        assert not errors and ingest.collectors["polite"].batches == 5
        release.set()
    finally:
        channel.close()
        grpc_server.stop(1)
        ingest.close()


def test_four_streams_that_ignore_pause_do_not_starve_a_real_collector(tmp_path):
    """Issue row 9, the flood: four raw streams send batches without end and ignore PAUSE, while a
    real tapio-collector (which pauses when told) streams 2,000 events. The four are cut with
    RESOURCE_EXHAUSTED after the grace period; the collector keeps its one stream and every one
    of its events is accepted, long before the flood would have ended on its own (30 s)."""
    ingest = Ingest(queue_batches=8, batch_delay=0.002, pause_grace=0.5)
    service = TapioService(ingest)
    grpc_server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 16, False)
    grpc_server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    stop = threading.Event()
    floods, collector = [], None
    try:
        start = time.time_ns() // 1000
        for n in range(4):
            cid = f"rude-{n}"

            def endless(cid=cid):
                yield hello(cid)
                i = 0
                while not stop.is_set():
                    i += 1
                    yield batch(cid, start + i)

            call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(endless(), timeout=60)
            floods.append((call, *read_in_background(call)))
        wait_until(lambda: ingest.pauses >= 4, 10, what="the flood to be paused")
        collector = ManagedProcess(
            [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", "1000",
             "--count", "2000", "--correlation", "raw", "--collector-id", "polite",
             "--server", f"127.0.0.1:{grpc_server.port}", "--flush-interval", "20ms",
             "--metrics-interval", "0", "--http-port", "0"], str(tmp_path / "collector.log"))
        for call, _, ended in floods:
            assert ended.wait(15), "a stream that ignores PAUSE was not ended"
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "after PAUSE" in call.details()
        assert ingest.pause_ignored == 4
        wait_until(lambda: "polite" in ingest.collectors and ingest.collectors["polite"].events == 2000,
                   15, what="every event of the real collector, while the flood would still run")
        assert not stop.is_set()
        polite = ingest.collectors["polite"]
        assert polite.connections == 1 and polite.duplicates == 0
        # its --count reached and every batch acked, the collector leaves on its own
        assert collector.proc.wait(20) == 0
        assert "2000 delivered" in collector.log() and "0 not delivered at exit" in collector.log()
    finally:
        stop.set()
        for call, _, _ in floods:
            call.cancel()
        if collector is not None:
            collector.stop()
        channel.close()
        grpc_server.stop(1)
        ingest.close()
