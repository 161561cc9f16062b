"""Stream limits on a real grpcio server on 127.0.0.1 with the real TapioService, asked by real gRPC
clients: a per-token cap below the total, so one token cannot fill the server, and health checks
and queries that still get in when the collector streams are full."""
import threading

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
from tests.helpers import free_port, wait_until

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
