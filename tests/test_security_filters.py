"""Bounded work per request in the filter language: regexes that cannot backtrack (RE2), limits on
filters and pattern lengths (INVALID_ARGUMENT that says which), evaluation off the ingest thread.
Real gRPC on 127.0.0.1: a QueryService on a grpcio server, and a real tapio-server process."""
import grpc
import pytest

from tapio.server.filters import MAX_FILTERS, MAX_PATTERN, MAX_VALUES, Filter
from tapio.v1 import query_pb2, query_pb2_grpc, stream_pb2
from tests.correlation_fixtures import Events
from tests.helpers import ServerProcess, http_get, read_in_background, wait_until
from tests.test_subscribe import QueryServer, store  # noqa: F401  (fixture)

F = query_pb2.Filter

INVALID = [
    ("backtracking", [F(comm_regex=r"(a)\1")], [], "RE2 accepts"),
    ("lookahead", [F(binary_regex=r"^(?=a)")], [], "RE2 accepts"),
    ("pattern too long", [F(comm_regex="a" * (MAX_PATTERN + 1))], [], f"at most {MAX_PATTERN}"),
    ("pod pattern too long", [F(pods=["p" * (MAX_PATTERN + 1)])], [], f"at most {MAX_PATTERN}"),
    ("too many allow", [F(comm_regex="a")] * (MAX_FILTERS + 1), [], f"at most {MAX_FILTERS}"),
    ("too many deny", [], [F(comm_regex="a")] * (MAX_FILTERS + 1), f"at most {MAX_FILTERS}"),
    ("too many pids", [F(pids=list(range(1, MAX_VALUES + 2)))], [], f"at most {MAX_VALUES}"),
    ("too many pods", [F(pods=[f"p{i}" for i in range(MAX_FILTERS + 1)])], [], f"at most {MAX_FILTERS}"),
    ("a long namespace", [F(namespaces=["n" * 300])], [], "at most 256"),
]


@pytest.mark.parametrize("what, allow, deny, message", INVALID, ids=[c[0] for c in INVALID])
def test_a_filter_past_the_limits_is_invalid_argument(store, what, allow, deny, message):  # noqa: F811
    server = QueryServer(store)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = query_pb2_grpc.TapioQueryStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Subscribe(query_pb2.SubscribeRequest(allow_list=allow, deny_list=deny), timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in e.value.details()
    finally:
        server.stop()


def test_re2_matches_what_the_filters_meant():
    ev = Events()
    evil = "a" * 40 + "!"
    event = ev.exec(1, 0, "aaaa", filename="/" + evil)
    as_dict = {"type": "exec", "pid": 1, "comm": "aaaa", "process": {"executable": "/" + evil},
               "context": {}, "collector_id": "c"}
    assert not Filter.of({"binary": "^(a+)+$"}).matches_event(as_dict)
    assert Filter.of({"binary": "(a+)+!$"}).matches_event(as_dict)
    assert Filter.of({"comm": "^a{2,}$"}).matches_event(as_dict)
    assert event.exec.filename.endswith("!")


def test_an_empty_pod_value_names_no_pod_and_never_raises():
    """Found by the filters fuzz target: pods=[""] compiled to no regex, and every event with a pod
    name then raised AttributeError in the subscriber's thread."""
    event = {"type": "exec", "pid": 7, "comm": "sh", "collector_id": "c", "process": {},
             "context": {"pod_name": "web-1", "pod_uid": "u-1", "namespace": "default"}}
    assert Filter.from_request(query_pb2.SubscribeRequest(allow_list=[F(pods=["", "web-"])])).matches_event(event)
    assert not Filter.from_request(query_pb2.SubscribeRequest(allow_list=[F(pods=["", "db-"])])).matches_event(event)


def test_a_catastrophic_regex_does_not_stall_the_server(tmp_path):
    """Subscribe with binary_regex "^(a+)+$", then stream an exec of an executable of 30 a's and a
    '!': a backtracking regex would take minutes on it, holding the interpreter. The batch is
    acked, /healthz answers within its normal timeout, and the subscriber gets a matching event
    sent after it."""
    server = ServerProcess(tmp_path, http=True).wait_listening()
    channel = grpc.insecure_channel(server.address)
    try:
        stub = query_pb2_grpc.TapioQueryStub(channel)
        call = stub.Subscribe(query_pb2.SubscribeRequest(
            events=True, allow_list=[F(binary_regex="^(a+)+$"), F(comm_regex="^after$")]), timeout=60)
        got, _ = read_in_background(call)
        wait_until(lambda: _subscribers(server) == 1, 15, what="the subscription")
        ev = Events(collector="node-x", node="node-x")
        evil = "a" * 30 + "!"
        batches = [stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
            batch_id=1, collector_id="node-x", node_name="node-x",
            events=[ev.exec(100 + i, 1, evil[:15], filename=evil) for i in range(20)])),
            stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
                batch_id=2, collector_id="node-x", node_name="node-x", events=[ev.exec(200, 1, "after")]))]
        stream = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
        acks = [stream_pb2.TapioStreamEventsResponse.FromString(r)
                for r in stream(iter([b.SerializeToString() for b in batches]), timeout=30)]
        assert [a.ack.batch_id for a in acks if a.HasField("ack")] == [1, 2]
        status, _, _ = http_get(server.http_url + "/healthz", timeout=10)
        assert status == 200
        wait_until(lambda: got, 15, what="the event sent after the evil ones")
        call.cancel()
        assert [r.event.comm for r in got] == ["after"]
    finally:
        channel.close()
        assert server.stop() == 0, server.log()


def _subscribers(server):
    import json
    status, _, body = http_get(server.http_url + "/api/v1/stats")
    return json.loads(body)["store"]["subscribers"] if status == 200 else 0
