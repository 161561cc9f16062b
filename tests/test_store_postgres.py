"""The store on a real PostgreSQL (tests/postgres.py): groups (latest version wins, retention),
the event history (a batch stored twice is stored once, queries), a real tapio-server with
--db postgresql:// fed by a real synthetic collector over gRPC (every acked event in the history
exactly once; /api/v1/groups and /api/v1/events answer from PostgreSQL), the database lost and
back at run time, and start-up failures (one line, exit 2)."""
import json
import os
import re
import signal
import subprocess
import uuid

import pytest

from tapio.server.store import Store, StoreUnavailable
from tests.correlation_fixtures import SEC, T0, Events, State, pod_context
from tests.helpers import BIN, ManagedProcess, ServerProcess, free_port, http_get, wait_until
from tests.postgres import PostgresInstance
from tests.test_store import group


@pytest.fixture(scope="module")
def pg():
    instance = PostgresInstance()
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()


@pytest.fixture
def dsn(pg):
    """A new database of its own for each test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"


@pytest.fixture
def store(dsn):
    s = Store(dsn)
    yield s
    s.close()


# ---- groups ----------------------------------------------------------------------------------

def test_the_latest_version_of_a_group_wins_and_survives_a_restart(dsn):
    first = Store(dsn)
    first.put_group(group(1, status="open"))
    first.put_group(group(2))
    first.put_group(dict(group(1), summary="second version", status="closed"))
    first.close()
    second = Store(dsn)                       # the schema is created again: idempotent
    try:
        found = second.groups()
        assert [g["id"] for g in found] == [group(2)["id"], group(1)["id"]]   # newest first stored
        one = second.group(group(1)["id"])
        assert one["summary"] == "second version" and one["status"] == "closed"
        assert one["events"] == group(1)["events"]
        assert second.group_counts() == {"crash_loop": 2}
        assert second.group("0" * 32) is None
    finally:
        second.close()


def test_group_pages_filters_and_retention(dsn):
    clock = [T0 + 100 * SEC]
    store = Store(dsn, retention_s=50, max_groups=5, clock=lambda: clock[0])
    try:
        for n in range(8):
            store.put_group(group(n, kind="crash_loop" if n % 2 else "oom_kill"))
        page = store.groups(limit=3)
        assert [g["id"] for g in page] == [group(n)["id"] for n in (7, 6, 5)]
        rest = store.groups(limit=10, before=page[-1]["id"])
        assert [g["id"] for g in rest] == [group(n)["id"] for n in (4, 3, 2, 1, 0)]
        assert {g["kind"] for g in store.groups(kind="oom_kill")} == {"oom_kill"}
        assert len(store.groups(since_ns=T0 + 6 * SEC)) == 2
        store.retain()          # groups 0..7 ended 93..100 s before the clock: 50 s keeps none
        # ... by age every closed one ended more than 50 s ago
        assert store.groups() == []
        for n in range(60, 70):
            store.put_group(group(n))
        store.retain()          # by count: the newest 5
        assert [g["id"] for g in store.groups()] == [group(n)["id"] for n in range(69, 64, -1)]
        assert store.group_db.expired == 8 + 5
    finally:
        store.close()


# ---- the event history -------------------------------------------------------------------------

def test_a_batch_recorded_twice_is_stored_once(store):
    ev = Events()
    batch = ev.batch(ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh", code=3),
                     ev.connect(2, "curl", "10.0.0.9", 443))
    assert store.record_events(batch, "node-a") == 3
    assert store.record_events(batch, "node-a") == 0       # the same batch again
    assert store.history_count() == 3
    # the same batch id from another collector is another batch
    assert store.record_events(batch, "node-b") == 3
    assert store.history_count("node-a") == 3 and store.history_count("node-b") == 3
    assert store.history_count("node-c") == 0
    stats = store.stats()["postgresql"]
    assert stats["events_written"] == 6 and stats["events_replayed"] == 3


def test_history_queries_answer_like_the_memory_store(store):
    ev = Events()
    other = Events(collector="node-b", node="node-b")
    batches = [(ev.batch(ev.exec(1, 0, "sh", context=pod_context()), ev.exit(1, 0, "sh")), "node-a"),
               (other.batch(other.exec(9, 0, "vi")), "node-b"),
               (ev.batch(ev.exec(2, 0, "ls"), ev.exec(3, 0, "cat")), "node-a")]
    for batch, collector in batches:
        store.record_events(batch, collector)
    # newest first by arrival, within a batch the last first
    assert [(e["comm"], e["collector_id"]) for e in store.recent_events()] == [
        ("cat", "node-a"), ("ls", "node-a"), ("vi", "node-b"), ("sh", "node-a"), ("sh", "node-a")]
    assert [e["pid"] for e in store.recent_events(collector="node-b")] == [9]
    assert [e["type"] for e in store.recent_events(comm="sh")] == ["exit", "exec"]
    assert [e["comm"] for e in store.recent_events(type="exec", limit=2)] == ["cat", "ls"]
    assert [e["pid"] for e in store.recent_events(pid=2)] == [2]
    assert [e["comm"] for e in store.recent_events(container="payment-api")] == ["sh"]
    assert [e["comm"] for e in store.recent_events(container="c7c603c7")] == ["sh"]
    # the wire bytes are the event as it arrived
    first = batches[0][0]
    wires = store.recent_wire(comm="sh")
    assert wires == [(first.event_wire(1), "node-a"), (first.event_wire(0), "node-a")]
    # and the dict is what the memory store would answer
    assert store.recent_events(comm="sh")[0] == dict(first.event_dict(1), collector_id="node-a")


def test_hostile_strings_are_stored_as_valid_text(store):
    ev = Events()
    batch = ev.batch(ev.exec(5, 0, "a\x00b"), ev.exec(6, 0, "x\x00"))
    assert store.record_events(batch, "node\x00a") == 2
    assert [e["comm"] for e in store.recent_events(collector="node?a")] == ["x\x00", "a\x00b"]
    assert store.recent_events(comm="a?b")[0]["pid"] == 5


def test_history_retention_removes_what_was_received_before_the_cut(dsn):
    clock = [T0]
    store = Store(dsn, history_retention_s=60, clock=lambda: clock[0])
    try:
        ev = Events()
        store.record_events(ev.batch(*[ev.exec(i, 0, "old") for i in range(10)]), "node-a")
        clock[0] = T0 + 61 * SEC
        store.record_events(ev.batch(*[ev.exec(i, 0, "new") for i in range(5)]), "node-a")
        store.retain()
        assert store.history_count() == 5
        assert {e["comm"] for e in store.recent_events()} == {"new"}
    finally:
        store.close()


def test_the_database_lost_and_back_at_run_time(dsn, pg):
    """Reads fail fast (StoreUnavailable); a group put is held and written later; a history write
    waits until the database is back, and then the batch is stored."""
    import threading
    store = Store(dsn)
    try:
        ev = Events()
        store.record_events(ev.batch(ev.exec(1, 0, "before")), "node-a")
        pg.stop()
        with pytest.raises(StoreUnavailable):
            store.recent_events()
        store.put_group(group(1))                       # held, no exception
        assert store.stats()["postgresql"]["groups_held"] == 1
        stored = []
        writer = threading.Thread(target=lambda: stored.append(
            store.record_events(ev.batch(ev.exec(2, 0, "during")), "node-a")), daemon=True)
        writer.start()
        writer.join(1.0)
        assert writer.is_alive() and not stored          # waits: nothing acked meanwhile
        pg.start()
        writer.join(30)
        assert stored == [1]
        assert [e["comm"] for e in store.recent_events()] == ["during", "before"]
        assert store.group(group(1)["id"]) is not None   # the held version was written
        stats = store.stats()["postgresql"]
        assert stats["errors"] >= 2 and stats["available"] and stats["groups_held"] == 0
    finally:
        if pg.proc is None:
            pg.start()
        store.close()
