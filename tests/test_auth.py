"""Roles and scopes of bearer tokens (--auth-token-file), on a real grpcio server on 127.0.0.1 with
the real TapioService, TapioQuery and store behind it, asked by real gRPC clients."""
import logging

import grpc
import pytest

from tapio.flags import ConfigError
from tapio.server.auth import ADMIN, COLLECTOR, READ, READER, STREAM, Auth, parse_line
from tapio.server.grpc_server import GrpcServer
from tapio.server.ingest import Ingest
from tapio.server.service import TapioService
from tapio.server.store import Store
from tapio.server.subscribe import SERVICE as QUERY_SERVICE, QueryService
from tapio.v1 import query_pb2, query_pb2_grpc, stream_pb2
from tests.correlation_fixtures import Events, State, pod_context
from tests.helpers import free_port, read_in_background, wait_until
from tests.test_store import group

TOKENS = """\
# one token a line: TOKEN ROLE [SCOPE]
tok-collector collector
tok-node-a collector node-a,edge-*
tok-reader reader
tok-shop reader namespaces=shop,payments
tok-admin admin
tok-legacy
"""

LINES = [
    # (line, role, collectors, namespaces, unscoped)
    ("t", ADMIN, (), (), True),
    ("t admin", ADMIN, (), (), False),
    ("t collector", COLLECTOR, (), (), False),
    ("t collector *", COLLECTOR, (), (), False),
    ("t collector node-a", COLLECTOR, ("node-a",), (), False),
    ("t collector node-a,edge-*", COLLECTOR, ("node-a", "edge-*"), (), False),
    ("t reader", READER, (), (), False),
    ("t reader namespaces=shop", READER, (), ("shop",), False),
    ("  t   reader   namespaces=a,b  ", READER, (), ("a", "b"), False),
]

BAD_LINES = [
    ("t writer", "unknown role 'writer'"),
    ("t admin x", "an admin token takes no scope"),
    ("t reader shop", "a reader's scope is namespaces=A,B"),
    ("t reader namespaces=", "names no namespace"),
    ("t collector namespaces=a", "scopes a reader token"),
    ("t collector a b", "one scope after the role"),
]


@pytest.mark.parametrize("line, role, collectors, namespaces, unscoped", LINES)
def test_a_token_line_gives_a_role_and_a_scope(line, role, collectors, namespaces, unscoped):
    token, p = parse_line(line, 7)
    assert token == "t" and p.label == "token 7"
    assert (p.role, p.collectors, p.namespaces, p.unscoped) == (role, collectors, namespaces, unscoped)


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_a_bad_token_line_is_one_clear_error_without_the_token(line, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_line(line.replace("t ", "s3cret-token ", 1), 4)
    assert "line 4" in str(e.value) and "s3cret-token" not in str(e.value)


def test_rights_and_collector_ids():
    _, collector = parse_line("t collector node-a,edge-*", 1)
    _, reader = parse_line("t reader", 2)
    _, admin = parse_line("t admin", 3)
    assert collector.may(STREAM) and not collector.may(READ)
    assert reader.may(READ) and not reader.may(STREAM)
    assert admin.may(READ) and admin.may(STREAM)
    assert collector.refusal("node-a") is None and collector.refusal("edge-17") is None
    assert "may not stream as collector 'node-b'" in collector.refusal("node-b")
    assert "reader token" in reader.refusal("node-a")
    assert admin.refusal("anything") is None
    assert "1 to 256 characters" in admin.refusal("x" * 257)
    # an id that is another only by spaces or control characters, which NATS headers trim or
    # replace: refused, so no stream can reach a real collector's dedupe window that way
    for twin in ("node-a ", " node-a", "node-a\n", "node-a\r\n", "node\x00a", "node-a\t"):
        assert "no control characters" in admin.refusal(twin), repr(twin)
    assert admin.refusal("node a") is None
    # bound to a client certificate: the id must be one of its names
    assert admin.refusal("node-a", {"node-a", "node-a.example"}) is None
    assert "not a name of the client certificate" in admin.refusal("node-b", {"node-a"})


def test_a_plain_token_line_keeps_every_right_and_is_warned_about(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("old-token\nnew-token reader\n")
    with caplog.at_level(logging.WARNING, logger="tapio.server"):
        auth = Auth(str(path))
    assert auth.principal("Bearer old-token").unscoped
    assert auth.principal("Bearer new-token").role == READER
    assert auth.principal("Bearer nope") is None and auth.principal(None) is None
    assert "token 1 has no role" in caplog.text and "old-token" not in caplog.text


# ---- over real gRPC --------------------------------------------------------------------------------

class Servers:
    """TapioService and TapioQuery on one real grpcio server, with the tokens above."""

    def __init__(self, tmp_path):
        path = tmp_path / "tokens"
        path.write_text(TOKENS)
        self.auth = Auth(str(path))
        self.ingest = Ingest()
        self.store = Store(retention_s=0)
        self.ingest.consumers.append(self.store.add_batch)
        self.service = TapioService(self.ingest, authorize=self.auth)
        self.query = QueryService(self.store, authorize=self.auth)
        self.grpc = GrpcServer(self.service, "127.0.0.1", free_port(), 4 << 20, 16, False,
                               extra_services=[(self.query.handler(), QUERY_SERVICE)])
        self.grpc.start()
        self.address = f"127.0.0.1:{self.grpc.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = query_pb2_grpc.TapioQueryStub(self.channel)

    def stream(self, token, requests, timeout=20):
        """The responses of one StreamEvents call (raises RpcError with its status)."""
        call = self.channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return [stream_pb2.TapioStreamEventsResponse.FromString(r)
                for r in call(iter(requests), metadata=metadata, timeout=timeout)]

    def close(self):
        self.channel.close()
        self.query.close()
        self.grpc.stop(1)
        self.ingest.close()
        self.store.close()


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    s.close()


def bearer(token):
    return [("authorization", f"Bearer {token}")]


def code_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def hello(collector_id):
    return stream_pb2.TapioStreamEventsRequest(
        hello=stream_pb2.Hello(collector_id=collector_id, node_name="n")).SerializeToString()


def test_the_query_side_needs_a_reader_or_admin_token(servers):
    stub = servers.stub
    list_groups = query_pb2.ListGroupsRequest()
    for token in ("tok-reader", "tok-shop", "tok-admin", "tok-legacy"):
        assert list(stub.ListGroups(list_groups, metadata=bearer(token), timeout=10).groups) == []
        assert list(stub.ListEvents(query_pb2.ListEventsRequest(), metadata=bearer(token), timeout=10).events) == []
    for token, code in (("tok-collector", grpc.StatusCode.PERMISSION_DENIED),
                        ("tok-node-a", grpc.StatusCode.PERMISSION_DENIED),
                        ("nope", grpc.StatusCode.UNAUTHENTICATED), (None, grpc.StatusCode.UNAUTHENTICATED)):
        metadata = bearer(token) if token else None
        assert code_of(lambda: stub.ListGroups(list_groups, metadata=metadata, timeout=10)) == code
        assert code_of(lambda: stub.ListEvents(query_pb2.ListEventsRequest(), metadata=metadata,
                                               timeout=10)) == code
        assert code_of(lambda: stub.GetGroup(query_pb2.GetGroupRequest(id="1"), metadata=metadata,
                                             timeout=10)) == code
        assert code_of(lambda: list(stub.Subscribe(query_pb2.SubscribeRequest(), metadata=metadata,
                                                   timeout=10))) == code
    assert servers.auth.denied >= 8 and servers.auth.refused >= 8


def test_a_reader_token_may_not_stream_events(servers):
    with pytest.raises(grpc.RpcError) as e:
        servers.stream("tok-reader", [hello("node-a")])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reader token may not stream events" in e.value.details()
    assert servers.stream("tok-collector", [hello("node-a")]) == []
    assert servers.stream("tok-admin", [hello("node-a")]) == []


def fill_two_namespaces(store):
    """Events and groups of pods in namespaces shop and default, and a host process."""
    ev = Events()
    store.add_batch(ev.batch(
        ev.exec(10, 1, "shop-app", context=pod_context(namespace="shop", pod_name="shop-1")),
        ev.exec(20, 1, "other-app", context=pod_context(namespace="default", pod_name="web-1")),
        ev.exec(30, 1, "host-tool")), State())
    store.put_group(group(1, namespace="shop", pod_name="shop-1"))
    store.put_group(group(2, namespace="default", pod_name="web-1"))
    store.put_group(group(3))
    return ev


def test_a_reader_scoped_to_namespaces_sees_only_their_events_and_groups(servers):
    ev = fill_two_namespaces(servers.store)
    stub = servers.stub
    shop, everyone = bearer("tok-shop"), bearer("tok-reader")
    events = stub.ListEvents(query_pb2.ListEventsRequest(), metadata=shop, timeout=10).events
    assert [e.comm for e in events] == ["shop-app"]
    assert len(stub.ListEvents(query_pb2.ListEventsRequest(), metadata=everyone, timeout=10).events) == 3
    groups = stub.ListGroups(query_pb2.ListGroupsRequest(), metadata=shop, timeout=10).groups
    assert [g.summary for g in groups] == ["group 1"]
    assert len(stub.ListGroups(query_pb2.ListGroupsRequest(), metadata=everyone, timeout=10).groups) == 3
    assert stub.GetGroup(query_pb2.GetGroupRequest(id=f"{1:032x}"), metadata=shop, timeout=10).summary == "group 1"
    assert code_of(lambda: stub.GetGroup(query_pb2.GetGroupRequest(id=f"{2:032x}"), metadata=shop,
                                         timeout=10)) == grpc.StatusCode.NOT_FOUND
    # Subscribe: the backfill and what arrives live are scoped alike
    call = stub.Subscribe(query_pb2.SubscribeRequest(events=True, groups=True, backfill=10),
                          metadata=shop, timeout=30)
    got, _ = read_in_background(call)
    try:
        wait_until(lambda: len(got) >= 2, 10, what="the scoped backfill")
        wait_until(lambda: servers.store.stats()["subscribers"] == 1, 10, what="the subscription")
        servers.store.add_batch(ev.batch(
            ev.exec(11, 1, "shop-live", context=pod_context(namespace="shop", pod_name="shop-1")),
            ev.exec(21, 1, "other-live", context=pod_context(namespace="default", pod_name="web-1"))),
            State())
        servers.store.put_group(group(4, namespace="default"))
        servers.store.put_group(group(5, namespace="payments"))
        wait_until(lambda: len(got) >= 4, 10, what="the live items in scope")
    finally:
        call.cancel()
    comms = [events_of(r) for r in got if r.HasField("event")]
    summaries = [r.group.summary for r in got if r.HasField("group")]
    assert comms == ["shop-app", "shop-live"] and summaries == ["group 1", "group 5"]


def events_of(response):
    return response.event.comm


def batch(collector_id, batch_id, ev=None):
    ev = ev or Events(collector=collector_id, node=collector_id)
    return stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=batch_id, collector_id=collector_id, node_name=collector_id,
        events=[ev.exec(1, 0, "sh")])).SerializeToString()


def test_a_collector_token_streams_only_as_the_ids_of_its_scope(servers):
    def refused(requests):
        with pytest.raises(grpc.RpcError) as e:
            servers.stream("tok-node-a", requests)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        return e.value.details()
    assert "may not stream as collector 'node-b'" in refused([hello("node-b")])
    # no hello: the first batch's collector is the claim
    assert "may not stream as collector 'node-b'" in refused([batch("node-b", 1)])
    # a batch of another collector on an allowed stream
    assert "one stream, one collector" in refused([hello("edge-7"), batch("node-b", 1)])
    ok = servers.stream("tok-node-a", [hello("edge-7"), batch("edge-7", 1)])
    assert [a.ack.status for a in ok if a.HasField("ack")] == [stream_pb2.EventAck.STATUS_OK]
    assert set(servers.ingest.collectors) == {"edge-7"}
    # an unscoped collector token and an admin token may claim any id
    for token in ("tok-collector", "tok-admin", "tok-legacy"):
        acks = servers.stream(token, [hello(f"any-{token}"), batch(f"any-{token}", 1)])
        assert [a.ack.status for a in acks if a.HasField("ack")] == [stream_pb2.EventAck.STATUS_OK]
    assert servers.service.claims_denied == 3


def test_with_bind_collector_cert_a_stream_claims_only_its_certificates_names(tmp_path):
    """Mutual TLS on a real grpcio server: with --bind-collector-cert the Hello's collector id
    must be the client certificate's common name or one of its alternative names."""
    import subprocess

    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, san in (("server", "IP:127.0.0.1"), ("node-a", "DNS:node-a.example")):
        (tmp_path / f"{name}.cnf").write_text(f"subjectAltName={san}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.cnf", "-out", f"{name}.pem")
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    ingest = Ingest()
    service = TapioService(ingest, authorize=Auth(None, bind_cert=True))
    credentials = grpc.ssl_server_credentials([(read("server.key"), read("server.pem"))],
                                              root_certificates=read("ca.pem"), require_client_auth=True)
    server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 8, False, credentials)
    server.start()
    channel = grpc.secure_channel(f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(
        read("ca.pem"), read("node-a.key"), read("node-a.pem")))
    try:
        call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
        for claimed in ("node-a", "node-a.example"):
            acks = list(call(iter([hello(claimed), batch(claimed, 1)]), timeout=20))
            assert len(acks) == 1, claimed
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([hello("node-b")]), timeout=20))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not a name of the client certificate" in e.value.details()
        assert set(ingest.collectors) == {"node-a", "node-a.example"}
    finally:
        channel.close()
        server.stop(1)
        ingest.close()
