"""tapio.v1.TapioQuery over real gRPC (a grpcio server on 127.0.0.1 with the store behind it):
Subscribe with allow/deny filters, backfill, bearer tokens, the list calls, events served as the
bytes the collector sent, and the `tapio-server events|groups` commands that use them."""
import concurrent.futures
import json
import os
import subprocess

import grpc
import pytest

from tapio._fast.codec import DecodedBatch
from tapio.server.auth import TokenAuth
from tapio.server.store import Store
from tapio.server.follow import event_dicts, group_dict
from tapio.server.subscribe import QueryService
from tapio.v1 import events_pb2, query_pb2, query_pb2_grpc, stream_pb2
from tests.correlation_fixtures import CONTAINER, Events, State, pod_context
from tests.helpers import BIN, read_in_background, wait_until
from tests.test_store import group


class QueryServer:
    def __init__(self, store, authorize=None):
        self.service = QueryService(store, authorize=authorize)
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self.service.handler(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self):
        self.service.close()
        self.server.stop(1).wait(5)


@pytest.fixture
def store():
    s = Store(retention_s=0)
    yield s
    s.close()


@pytest.fixture
def server(store):
    s = QueryServer(store)
    yield s
    s.stop()


def subscribe(address, request, metadata=None):
    """Start a Subscribe call; returns (responses list filled by a thread, call)."""
    channel = grpc.insecure_channel(address)
    call = query_pb2_grpc.TapioQueryStub(channel).Subscribe(request, metadata=metadata, timeout=30)
    got, _ = read_in_background(call)
    return got, call, channel


def test_subscribe_with_a_filter_sees_only_matching_items(server, store):
    ev = Events()
    request = query_pb2.SubscribeRequest(
        allow_list=[query_pb2.Filter(event_types=[events_pb2.EVENT_TYPE_EXEC], comm_regex="^s"),
                    query_pb2.Filter(group_kinds=["oom_kill"])],
        deny_list=[query_pb2.Filter(comm_regex="^sleep$")])
    got, call, channel = subscribe(server.address, request)
    wait_until(lambda: store.stats()["subscribers"] == 1, 10, what="the subscription")
    store.add_batch(ev.batch(ev.exec(1, 0, "sh", context=pod_context()), ev.exec(2, 0, "ls"),
                             ev.exec(3, 0, "sleep"), ev.exit(1, 0, "sh"), ev.exec(4, 0, "ssh")), State())
    store.put_group(group(1, kind="crash_loop"))
    store.put_group(group(2, kind="oom_kill", container_id=CONTAINER))
    wait_until(lambda: len(got) >= 3, 10, what="three items")
    call.cancel()
    channel.close()
    events = [r.event for r in got if r.HasField("event")]
    groups = [r.group for r in got if r.HasField("group")]
    assert [(e.pid, e.comm) for e in events] == [(1, "sh"), (4, "ssh")]
    assert events[0].context.container_id == CONTAINER and events[0].exec.filename == "/usr/bin/sh"
    assert all(r.collector_id == "node-a" for r in got if r.HasField("event"))
    assert [g.kind for g in groups] == ["oom_kill"]
    assert json.loads(groups[0].attributes_json)["container_id"] == CONTAINER
    wait_until(lambda: store.stats()["subscribers"] == 0, 10, what="the subscription to close")


def test_groups_only_with_backfill(server, store):
    for n in range(1, 6):
        store.put_group(group(n, kind="oom_kill" if n % 2 else "crash_loop"))
    request = query_pb2.SubscribeRequest(groups=True, backfill=2,
                                         allow_list=[query_pb2.Filter(group_kinds=["oom_kill"])])
    got, call, channel = subscribe(server.address, request)
    wait_until(lambda: len(got) >= 2, 10, what="the backfill")
    store.add_batch(Events().batch(Events().exec(1, 0, "sh")), State())   # events not asked for
    store.put_group(group(7, kind="oom_kill"))
    wait_until(lambda: len(got) >= 3, 10, what="the new group")
    call.cancel()
    channel.close()
    assert [r.group.summary for r in got] == ["group 3", "group 5", "group 7"]


def test_a_bad_filter_is_invalid_argument(server):
    channel = grpc.insecure_channel(server.address)
    call = query_pb2_grpc.TapioQueryStub(channel).Subscribe(
        query_pb2.SubscribeRequest(allow_list=[query_pb2.Filter(comm_regex="(")]), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "regular expression" in e.value.details()
    channel.close()


def test_list_get_and_events(server, store):
    for n in range(1, 8):
        store.put_group(group(n))
    ev = Events()
    store.add_batch(ev.batch(ev.exec(1, 0, "sh"), ev.exit(1, 0, "sh", code=3)), State())
    with grpc.insecure_channel(server.address) as channel:
        stub = query_pb2_grpc.TapioQueryStub(channel)
        page = stub.ListGroups(query_pb2.ListGroupsRequest(limit=4), timeout=10)
        assert [g.summary for g in page.groups] == ["group 7", "group 6", "group 5", "group 4"]
        page = stub.ListGroups(query_pb2.ListGroupsRequest(limit=4, before=page.next_before), timeout=10)
        assert [g.summary for g in page.groups] == ["group 3", "group 2", "group 1"] and not page.next_before
        full = stub.GetGroup(query_pb2.GetGroupRequest(id=f"{3:032x}"), timeout=10)
        assert group_dict(full)["attributes"]["pid"] == 103
        assert group_dict(full)["events"] == [{"id": "ebpf-3", "type": "exit", "pid": 103}]
        assert group_dict(full)["incomplete"] is False
        store.put_group(dict(group(3), incomplete=True))
        assert group_dict(stub.GetGroup(query_pb2.GetGroupRequest(id=f"{3:032x}"), timeout=10))["incomplete"]
        with pytest.raises(grpc.RpcError) as e:
            stub.GetGroup(query_pb2.GetGroupRequest(id="nope"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        events = stub.ListEvents(query_pb2.ListEventsRequest(event_type=events_pb2.EVENT_TYPE_EXIT), timeout=10)
        assert [(e.pid, e.exit.exit_code) for e in events.events] == [(1, 3)]
        assert list(events.collector_ids) == ["node-a"]


def sent_events(batch_request):
    """The serialized Events inside TapioStreamEventsRequest{batch} bytes, sliced out as they are
    (no protobuf object): what a collector sent, byte for byte."""
    def fields(data):
        i = 0
        while i < len(data):
            tag, i = varint(data, i)
            assert tag & 7 == 2, "only length-delimited fields are walked"
            n, i = varint(data, i)
            yield tag >> 3, data[i:i + n]
            i += n

    def varint(data, i):
        value = shift = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, i
    [(number, batch)] = fields(batch_request)
    assert number == 2
    out = []
    i = 0
    while i < len(batch):              # EventBatch: keep field 3 (events), skip the scalars
        tag, i = varint(batch, i)
        kind = tag & 7
        if kind == 2:
            n, i = varint(batch, i)
            if tag >> 3 == 3:
                out.append(batch[i:i + n])
            i += n
        elif kind == 0:
            _, i = varint(batch, i)
        elif kind == 1:
            i += 8
        else:
            raise AssertionError(f"wire type {kind}")
    return out


def rich_events(ev):
    """One event of each type, with context, process, args, IPv6, collapsed repeats."""
    return [ev.exec(1, 0, "sh", context=pod_context(), args=["sh", "-c", "echo hi"]),
            ev.exit(1, 0, "sh", code=3),
            ev.connect(2, "curl", "fd00::1", 443, result="reset", count=3),
            ev.oom(3, "big"), ev.signal(4, "x", 11, code=1, sender_pid=4)]


def test_list_events_returns_the_bytes_the_collector_sent(server, store):
    ev = Events()
    request = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=1, collector_id="node-a", node_name="node-a", events=rich_events(ev)))
    data = request.SerializeToString()
    store.add_batch(DecodedBatch.parse(data), State())
    sent = sent_events(data)
    with grpc.insecure_channel(server.address) as channel:
        # the contract's message: every Event equal to what was sent, newest first
        response = query_pb2_grpc.TapioQueryStub(channel).ListEvents(query_pb2.ListEventsRequest(), timeout=10)
        assert [e.SerializeToString() for e in response.events] == sent[::-1]
        assert list(response.collector_ids) == ["node-a"] * 5
        # the byte view: the same bytes, not decoded and encoded again on the way
        raw = channel.unary_unary("/tapio.v1.TapioQuery/ListEvents",
                                  request_serializer=query_pb2.ListEventsRequest.SerializeToString,
                                  response_deserializer=query_pb2.ListEventsResponseBytes.FromString)
        assert list(raw(query_pb2.ListEventsRequest(), timeout=10).events) == sent[::-1]
        exits = raw(query_pb2.ListEventsRequest(event_type=events_pb2.EVENT_TYPE_EXIT), timeout=10)
        assert list(exits.events) == [sent[1]]


def test_subscribe_streams_the_bytes_the_collector_sent(server, store):
    ev = Events()
    channel = grpc.insecure_channel(server.address)
    call = channel.unary_stream("/tapio.v1.TapioQuery/Subscribe",
                                request_serializer=query_pb2.SubscribeRequest.SerializeToString,
                                response_deserializer=query_pb2.SubscribeResponseBytes.FromString)(
        query_pb2.SubscribeRequest(events=True), timeout=30)
    got, _ = read_in_background(call)
    wait_until(lambda: store.stats()["subscribers"] == 1, 10, what="the subscription")
    data = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=1, collector_id="node-a", events=rich_events(ev))).SerializeToString()
    store.add_batch(DecodedBatch.parse(data), State())
    wait_until(lambda: len(got) >= 5, 10, what="five events")
    call.cancel()
    channel.close()
    assert [r.event for r in got] == sent_events(data)
    assert {r.collector_id for r in got} == {"node-a"}


def test_the_follower_decodes_event_bytes_with_the_codec():
    ev = Events()
    originals = rich_events(ev)
    batch = ev.batch(*originals)
    batch_keys = ("batch", "collector", "node")     # of the batch, not of the event
    want = [{k: v for k, v in batch.event_dict(i).items() if k not in batch_keys}
            for i in range(len(batch))]
    got = event_dicts([e.SerializeToString() for e in originals], ["node-a"] * 5)
    assert [{k: v for k, v in e.items() if k != "collector_id"} for e in got] == want
    assert {e["collector_id"] for e in got} == {"node-a"}
    assert event_dicts([]) == []


def test_the_bearer_token_is_required(store, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = QueryServer(store, authorize=TokenAuth(str(tokens)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = query_pb2_grpc.TapioQueryStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.ListGroups(query_pb2.ListGroupsRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Subscribe(query_pb2.SubscribeRequest(), timeout=10))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.ListGroups(query_pb2.ListGroupsRequest(), metadata=[("authorization", "Bearer s3cret")],
                                 timeout=10)
            assert list(ok.groups) == []
    finally:
        server.stop()


def run_cli(*args, timeout=30):
    return subprocess.run([os.path.join(BIN, "tapio-server"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_groups_and_events_commands(server, store):
    for n in range(1, 4):
        store.put_group(group(n, kind="oom_kill" if n == 2 else "crash_loop"))
    ev = Events()
    store.add_batch(ev.batch(ev.exec(1, 0, "sh", args=["sh", "-c", "x"]), ev.exit(1, 0, "sh", code=3)), State())
    listed = run_cli("groups", "--server", server.address)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()] == ["crash_loop", "oom_kill", "crash_loop"]
    assert "group 3" in listed.stdout.splitlines()[-1]
    as_json = run_cli("groups", "--server", server.address, "--kind", "oom_kill", "--output", "json")
    assert [json.loads(line)["summary"] for line in as_json.stdout.splitlines()] == ["group 2"]
    one = run_cli("groups", "--server", server.address, "--id", f"{2:032x}")
    assert one.returncode == 0 and "group 2" in one.stdout and "exit" in one.stdout
    events = run_cli("events", "--server", server.address, "--type", "exit")
    assert events.returncode == 0, events.stderr
    assert "exit 3" in events.stdout and len(events.stdout.splitlines()) == 1
    # follow: the command subscribes, then prints what arrives, and stops after --count items
    follow = subprocess.Popen([os.path.join(BIN, "tapio-server"), "events", "--server", server.address,
                               "--follow", "--comm", "^cat$", "--count", "1", "--timeout", "20s",
                               "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: store.stats()["subscribers"] == 1 or follow.poll() is not None, 15,
                   what="the follow command to subscribe")
        store.add_batch(ev.batch(ev.exec(2, 0, "ls"), ev.exec(3, 0, "cat")), State())
        out, err = follow.communicate(timeout=20)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(5)
    assert follow.returncode == 0, err
    [line] = out.splitlines()
    assert json.loads(line)["comm"] == "cat" and json.loads(line)["collector_id"] == "node-a"
    bad = run_cli("events", "--server", server.address, "--type", "fork")
    assert bad.returncode == 2 and "unknown event type" in bad.stderr


def test_a_running_server_lists_the_events_byte_for_byte_as_sent(tmp_path):
    """A real tapio-server process: batches the collector's encoder made (synthetic kernel
    events of every type) and one built by the protobuf library (contexts, processes, collapsed
    repeats) go in over StreamEvents; ListEvents gives back every Event byte for byte."""
    from tapio._fast import synthetic
    from tapio._fast.arena import EventArena
    from tapio._fast.codec import BatchEncoder
    from tests.helpers import ServerProcess, http_json
    arena = EventArena(64)
    assert synthetic.fill(arena, 1, 64) == 64
    encoded = [BatchEncoder("node-a", "node-a", 0).encode(arena, 1, 1)]
    arena.clear()
    synthetic.fill(arena, 65, 40)
    encoded.append(BatchEncoder("node-a", "node-a", 0).encode(arena, 2, 65))
    ev = Events(collector="node-a")
    encoded.append(stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=3, collector_id="node-a", node_name="node-a", events=rich_events(ev))).SerializeToString())
    sent = [e for data in encoded for e in sent_events(data)]
    assert len(sent) == 64 + 40 + 5

    server = ServerProcess(tmp_path, ["--recent-events-memory", "4MiB"], http=True).wait_listening()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stream = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")
            acks = [stream_pb2.TapioStreamEventsResponse.FromString(r) for r in stream(iter(encoded), timeout=30)]
            assert [a.ack.batch_id for a in acks if a.HasField("ack")] == [1, 2, 3]
            raw = channel.unary_unary("/tapio.v1.TapioQuery/ListEvents",
                                      request_serializer=query_pb2.ListEventsRequest.SerializeToString,
                                      response_deserializer=query_pb2.ListEventsResponseBytes.FromString)
            listed = raw(query_pb2.ListEventsRequest(limit=1000), timeout=10)
            assert list(listed.events) == sent[::-1]
            assert set(listed.collector_ids) == {"node-a"}
            typed = query_pb2_grpc.TapioQueryStub(channel).ListEvents(
                query_pb2.ListEventsRequest(event_type=events_pb2.EVENT_TYPE_EXEC, limit=1000), timeout=10)
            execs = [e for e in sent if events_pb2.Event.FromString(e).type == events_pb2.EVENT_TYPE_EXEC]
            assert execs and [e.SerializeToString() for e in typed.events] == execs[::-1]
        store = http_json(server.http_url + "/api/v1/stats")[1]["store"]
        assert store["events_kept"] == len(sent) and store["events_kept_max_bytes"] == 4 << 20
        assert len(b"".join(encoded)) < store["events_kept_bytes"] < 4 << 20
    finally:
        assert server.stop() == 0, server.log()


def test_the_follower_and_the_filter_language_import_nothing_else_of_the_server():
    """follow.py is a client: of the server's modules it shares the filter language only, and
    that imports none of them (no arrow runs back up the layers)."""
    import ast
    import tapio.server.filters
    import tapio.server.follow

    def imported(module):
        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module)
        return {n for n in names if n.startswith("tapio.server")}
    assert imported(tapio.server.follow) == {"tapio.server.filters"}
    assert imported(tapio.server.filters) == set()
