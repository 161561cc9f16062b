"""The store: recent events by batch (bounded in bytes), groups in a real SQLite file (restart,
pagination, retention), subscriptions with allow/deny filters and bounded queues, and concurrent
use."""
import json
import sqlite3
import threading

import pytest

from tapio.server.filters import Filter, Match
from tapio.server.store import Store
from tapio.v1 import events_pb2
from tests.correlation_fixtures import CONTAINER, SEC, T0, Events, State, pod_context


def group(n, kind="crash_loop", status="closed", end_ns=None, **attributes):
    return {"id": f"{n:032x}", "kind": kind, "intent": "x", "severity": "error", "confidence": 0.9,
            "start_ns": T0 + n * SEC, "end_ns": end_ns or T0 + n * SEC + 1, "summary": f"group {n}",
            "root_cause": "", "collector_id": "node-a", "node": "node-a", "trace_id": f"{n:032x}",
            "event_ids": [f"ebpf-{n}"], "attributes": {"comm": "payment", "pid": 100 + n, **attributes},
            "status": status, "events": [{"id": f"ebpf-{n}", "type": "exit", "pid": 100 + n}]}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "groups.db"))
    yield s
    s.close()


def test_groups_survive_a_restart_and_open_ones_come_back_interrupted(tmp_path):
    path = str(tmp_path / "groups.db")
    first = Store(path)
    first.put_group(group(1))
    first.put_group(group(2, status="open"))
    first.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second = Store(path)
    try:
        found = {g["id"]: g for g in second.groups()}
        assert found[f"{1:032x}"]["status"] == "closed"
        assert found[f"{2:032x}"]["status"] == "interrupted"
        full = second.group(f"{1:032x}")
        assert full["events"] == [{"id": "ebpf-1", "type": "exit", "pid": 101}]
        assert full["summary"] == "group 1" and full["attributes"]["comm"] == "payment"
    finally:
        second.close()


def test_a_new_version_replaces_the_old_and_keeps_its_place(store):
    store.put_group(group(1, status="open"))
    store.put_group(group(2))
    updated = group(1, status="closed")
    updated["summary"] = "group 1, grown"
    store.put_group(updated)
    assert [g["summary"] for g in store.groups()] == ["group 2", "group 1, grown"]
    assert store.group(f"{1:032x}")["status"] == "closed"
    assert store.group("0" * 31 + "f") is None


def test_pages_newest_first_with_a_cursor_kind_and_since(store):
    for n in range(1, 8):
        store.put_group(group(n, kind="oom_kill" if n % 2 else "crash_loop"))
    page = store.groups(limit=3)
    assert [g["summary"] for g in page] == ["group 7", "group 6", "group 5"]
    page = store.groups(limit=3, before=page[-1]["id"])
    assert [g["summary"] for g in page] == ["group 4", "group 3", "group 2"]
    assert [g["summary"] for g in store.groups(kind="oom_kill")] == ["group 7", "group 5", "group 3", "group 1"]
    assert [g["summary"] for g in store.groups(since_ns=T0 + 5 * SEC)] == ["group 7", "group 6", "group 5"]
    assert store.groups(before="no-such-group") == []
    assert store.group_counts() == {"oom_kill": 4, "crash_loop": 3}


def test_retention_by_count_and_age(tmp_path):
    now = [T0 + 1000 * SEC]
    store = Store(str(tmp_path / "g.db"), max_groups=5, retention_s=100, clock=lambda: now[0])
    try:
        for n in range(1, 9):
            store.put_group(group(n))
        store.put_group(group(50, end_ns=T0 + 950 * SEC))
        store.retain()
        assert [g["summary"] for g in store.groups()] == ["group 50"]
        assert store.stats()["groups_expired"] == 8
    finally:
        store.close()


def test_recent_events_newest_first_with_filters():
    ev = Events()
    store = Store(recent_events=6)
    store.add_batch(ev.batch(ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh")), State())
    ev.at(1)
    store.add_batch(ev.batch(ev.exec(2, 0, "ls"), ev.exec(3, 0, "cat")), State())
    other = Events(collector="node-b")
    other.at(2)
    store.add_batch(other.batch(other.exec(9, 0, "vi")), State("node-b"))
    found = store.recent_events()
    assert [(e["pid"], e["collector_id"]) for e in found] == [(9, "node-b"), (3, "node-a"), (2, "node-a"),
                                                             (1, "node-a"), (1, "node-a")]
    assert [e["pid"] for e in store.recent_events(type="exec", collector="node-a")] == [3, 2, 1]
    assert [e["type"] for e in store.recent_events(pid=1)] == ["exit", "exec"]
    assert [e["pid"] for e in store.recent_events(comm="cat")] == [3]
    assert [e["pid"] for e in store.recent_events(container=CONTAINER[:8])] == [1]
    assert [e["pid"] for e in store.recent_events(container="payment-api")] == [1]
    assert len(store.recent_events(limit=2)) == 2
    with pytest.raises(ValueError, match="unknown event type"):
        store.recent_events(type="fork")
    # bounded by events per collector, a batch at a time
    ev.at(1)
    store.add_batch(ev.batch(*[ev.exec(10 + i, 0, "x") for i in range(5)]), State())
    assert store.stats()["events_kept"] == 5 + 1
    store.close()


def drain(sub):
    out = []
    while (item := sub.get(timeout=0)) is not None:
        out.append(item)
    return out


def comm(item):
    """An event item's comm, read from its wire bytes by the protobuf library."""
    return events_pb2.Event.FromString(item.value).comm


def test_subscriptions_see_only_what_their_filter_allows():
    store = Store()
    ev = Events()
    execs = store.subscribe({"types": ["exec"], "comm": "^s"}, groups=False)
    groups = store.subscribe(Filter(allow=(Match.make(kinds=["oom_kill"]),)), events=False)
    denied = store.subscribe({"allow": [{"types": ["exec", "exit"]}], "deny": [{"comm": "^sh$"}]})
    everything = store.subscribe()
    store.add_batch(ev.batch(ev.exec(1, 0, "sh"), ev.exec(2, 0, "ls"), ev.exec(3, 0, "sleep"),
                             ev.exit(1, 0, "sh")), State())
    store.put_group(group(1, kind="crash_loop"))
    store.put_group(group(2, kind="oom_kill"))

    assert [(i.kind, comm(i)) for i in drain(execs)] == [("event", "sh"), ("event", "sleep")]
    assert [(i.kind, i.value["kind"]) for i in drain(groups)] == [("group", "oom_kill")]
    assert [comm(i) for i in drain(denied)] == ["ls", "sleep"]
    assert [i.kind for i in drain(everything)] == ["event"] * 4 + ["group"] * 2
    for sub in (execs, groups, denied, everything):
        sub.close()
    assert store.stats()["subscribers"] == 0
    store.close()


def test_group_filters_read_the_group_subject():
    g = group(1, kind="oom_kill", container_id=CONTAINER, pod_name="payment-7d9", namespace="shop",
              pids=[101, 102], executable="/app/payment")
    assert Filter.of({"containers": [CONTAINER[:6]]}).matches_group(g)
    assert Filter.of({"pods": ["^payment-"], "namespaces": ["shop"]}).matches_group(g)
    assert Filter.of({"pids": [102]}).matches_group(g)
    assert Filter.of({"binary": "payment$"}).matches_group(g)
    assert not Filter.of({"namespaces": ["default"]}).matches_group(g)
    assert not Filter.of({"types": ["exec"]}).matches_group(g)    # types select events only
    assert not Filter.of({"kinds": ["crash_loop"]}).matches_group(g)
    with pytest.raises(ValueError, match="not a regular expression"):
        Filter.of({"comm": "("})
    with pytest.raises(ValueError, match="unknown group kind"):
        Filter.of({"kinds": ["meltdown"]})


def test_a_slow_subscriber_loses_items_and_they_are_counted():
    store = Store()
    ev = Events()
    slow = store.subscribe(maxsize=3, groups=False)
    store.add_batch(ev.batch(*[ev.exec(i, 0, "x") for i in range(10)]), State())
    assert slow.dropped == 7 and store.stats()["subscriber_drops"] == 7
    assert len([slow.get(timeout=0) for _ in range(3)]) == 3 and slow.get(timeout=0) is None
    slow.close()
    store.close()


def test_closing_wakes_a_waiting_subscriber():
    store = Store()
    sub = store.subscribe()
    got = []
    t = threading.Thread(target=lambda: got.append(sub.get(timeout=10)))
    t.start()
    store.close()
    t.join(5)
    assert not t.is_alive() and got == [None]


def test_one_writer_and_many_readers_at_once(tmp_path):
    store = Store(str(tmp_path / "g.db"), retention_s=0)     # (these groups ended in 2025)
    ev = Events()
    errors = []
    done = threading.Event()

    def read():
        try:
            while not done.is_set():
                store.groups(limit=5)
                store.recent_events(limit=5)
                store.stats()
        except Exception as e:    # any error fails the test below
            errors.append(e)
    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for n in range(200):
        store.add_batch(ev.batch(ev.exec(n, 0, "x")), State())
        store.put_group(group(n + 1))
    done.set()
    for t in readers:
        t.join(10)
    assert errors == []
    assert store.stats()["groups"] == 200
    json.dumps(store.stats())
    store.close()


def test_recent_events_are_bounded_in_bytes_oldest_first_over_all_collectors():
    ev, other = Events(), Events(collector="node-b")
    one = ev.batch(*[ev.exec(i, 0, "x") for i in range(10)])
    size = one.nbytes
    assert size > 10 * len(one.event_wire(0))      # the wire bytes and the decoded records
    store = Store(recent_events=1000, recent_bytes=3 * size + size // 2)
    store.add_batch(one, State())
    for n in range(2):
        store.add_batch(other.batch(*[other.exec(100 + 10 * n + i, 0, "y") for i in range(10)]),
                        State("node-b"))
    assert store.stats()["events_kept"] == 30
    store.add_batch(ev.batch(*[ev.exec(20 + i, 0, "x") for i in range(10)]), State())
    stats = store.stats()
    assert stats["events_kept"] == 30 and stats["batches_evicted"] == 1
    assert stats["events_kept_bytes"] <= 3 * size + size // 2
    # the oldest batch went (node-a's first), not the oldest of the collector with most events
    assert min(e["pid"] for e in store.recent_events(collector="node-a", limit=100)) == 20
    assert len(store.recent_events(collector="node-b", limit=100)) == 20
    # a batch larger than the whole bound is not kept
    huge = ev.batch(*[ev.exec(1000 + i, 0, "z") for i in range(60)])
    assert huge.nbytes > store.recent.max_bytes
    store.add_batch(huge, State())
    assert store.stats()["events_kept"] == 0 and store.stats()["events_kept_bytes"] == 0
    store.close()


def test_many_small_batches_keep_the_bookkeeping_bounded():
    ev = Events()
    store = Store(recent_events=5)
    for n in range(1000):
        store.add_batch(ev.batch(ev.exec(n, 0, "x")), State())
    assert store.stats()["events_kept"] == 5
    assert len(store.recent._order) <= 2 * 5 + 64
    assert [e["pid"] for e in store.recent_events()] == [999, 998, 997, 996, 995]
    store.close()


def test_recent_wire_is_each_event_as_it_was_sent():
    ev = Events()
    sent = [ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh", code=2),
            ev.connect(2, "curl", "10.0.0.1", 80, count=4)]
    store = Store()
    store.add_batch(ev.batch(*sent), State())
    assert store.recent_wire() == [(e.SerializeToString(), "node-a") for e in reversed(sent)]
    assert store.recent_wire(type="exit") == [(sent[1].SerializeToString(), "node-a")]
    matching = store.recent_matching(Filter.of({"comm": "^curl$"}), 10)
    assert [(e["pid"], wire) for e, wire in matching] == [(2, sent[2].SerializeToString())]
    store.close()


def test_a_subscriber_queue_is_bounded_in_bytes():
    store = Store()
    ev = Events()
    batch = ev.batch(*[ev.exec(100 + i, 0, "x") for i in range(10)])
    three = sum(len(batch.event_wire(i)) for i in range(3))
    sub = store.subscribe(groups=False, max_bytes=three)
    store.add_batch(batch, State())
    assert sub.delivered == 3 and sub.dropped == 7 and sub.queued_bytes() == three
    drain(sub)
    assert sub.queued_bytes() == 0
    sub.close()
    store.close()


def test_filters_by_type_alone_need_no_event_dict():
    store = Store()
    ev = Events()
    by_type = store.subscribe({"types": ["exit"]}, groups=False)
    kinds_or_exec = store.subscribe({"allow": [{"kinds": ["crash_loop"]}, {"types": ["exec"]}]})
    assert by_type.by_type and kinds_or_exec.by_type
    assert not store.subscribe({"types": ["exit"], "comm": "sh"}).by_type
    store.add_batch(ev.batch(ev.exec(1, 0, "sh"), ev.exit(1, 0, "sh"), ev.exec(2, 0, "ls")), State())
    store.put_group(group(1, kind="crash_loop"))
    assert [events_pb2.Event.FromString(i.value).type for i in drain(by_type)] == [events_pb2.EVENT_TYPE_EXIT]
    assert [comm(i) if i.kind == "event" else i.value["kind"] for i in drain(kinds_or_exec)] \
        == ["sh", "ls", "crash_loop"]
    store.close()
