"""tapio.v1.TapioQuery over real gRPC (a grpcio server on 127.0.0.1 with the store behind it):
Subscribe with allow/deny filters, backfill, bearer tokens, the list calls, and the
`tapio-server events|groups` commands that use them."""
import concurrent.futures
import json
import os
import subprocess

import grpc
import pytest

from tapio.server.auth import TokenAuth
from tapio.server.store import Store
from tapio.server.subscribe import QueryService, event_message, group_dict
from tapio.v1 import events_pb2, query_pb2, query_pb2_grpc
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
        assert group_dict(full)["attributes"]["pid"] == 103 and [e.id for e in full.events] == ["ebpf-3"]
        with pytest.raises(grpc.RpcError) as e:
            stub.GetGroup(query_pb2.GetGroupRequest(id="nope"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        events = stub.ListEvents(query_pb2.ListEventsRequest(event_type=events_pb2.EVENT_TYPE_EXIT), timeout=10)
        assert [(e.pid, e.exit.exit_code) for e in events.events] == [(1, 3)]
        assert list(events.collector_ids) == ["node-a"]


def test_event_messages_round_trip_through_the_codec():
    from tapio._fast.codec import DecodedBatch
    from tapio.v1 import stream_pb2
    ev = Events()
    originals = [ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh", code=3),
                 ev.connect(2, "curl", "fd00::1", 443, result="reset", count=3),
                 ev.oom(3, "big"), ev.signal(4, "x", 11, code=1, sender_pid=4)]
    batch = ev.batch(*originals)
    for i, original in enumerate(originals):
        message = event_message(batch.event_dict(i))
        assert message == original, original.type
        again = DecodedBatch.parse(stream_pb2.TapioStreamEventsRequest(event=message).SerializeToString())
        batch_keys = ("batch", "collector", "node")     # of the batch, not of the event
        assert ({k: v for k, v in again.event_dict(0).items() if k not in batch_keys}
                == {k: v for k, v in batch.event_dict(i).items() if k not in batch_keys})


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
