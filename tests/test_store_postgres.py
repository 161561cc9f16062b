"""The store on a real PostgreSQL (tests/postgres.py): groups (latest version wins, retention),
the event history (a batch stored twice is stored once, queries), a real tapio-server with
--db postgresql:// fed by a real synthetic collector over gRPC (every acked event in the history
exactly once; /api/v1/groups and /api/v1/events answer from PostgreSQL), the database lost and
back at run time, and start-up failures (one line, exit 2)."""
import json
import os
import subprocess
import uuid

import grpc
import pytest

from tapio.server.store import Store, StoreUnavailable
from tapio.v1 import query_pb2, query_pb2_grpc
from tests.correlation_fixtures import SEC, T0, Events, pod_context
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
    # a batch of which only a part is there (its id again, with more events): the rest goes in
    again = Events()
    longer = again.batch(*[again.exec(10 + i, 0, "sh") for i in range(5)])
    assert longer.batch_id == batch.batch_id
    assert store.record_events(longer, "node-a") == 2
    assert store.history_count("node-a") == 5
    assert [e["pid"] for e in store.recent_events(collector="node-a", limit=2)] == [14, 13]


def test_several_batches_in_one_transaction_new_and_replayed_alike(store):
    ev, other = Events(), Events(collector="node-b", node="node-b")
    first = ev.batch(ev.exec(1, 0, "a"), ev.exec(2, 0, "b"))
    second = ev.batch(ev.exec(3, 0, "c"))
    theirs = other.batch(other.exec(4, 0, "d"))
    assert store.record_many([(first, "node-a"), (theirs, "node-b"), (second, "node-a")]) == 4
    # a replay of two of them with one that is new: only the new one goes in
    third = ev.batch(ev.exec(5, 0, "e"), ev.exec(6, 0, "f"))
    assert store.record_many([(second, "node-a"), (third, "node-a"), (theirs, "node-b")]) == 2
    assert store.history_count() == 6
    # in the order given, each batch's events in order: newest first is the reverse
    assert [e["comm"] for e in store.recent_events()] == ["f", "e", "c", "d", "b", "a"]


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


# ---- a real server and a real collector --------------------------------------------------------

def synthetic_collector(tmp_path, server, count, rate, *flags, name="collector"):
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--server", server,
            "--correlation", "raw", "--rate", str(rate), "--count", str(count),
            "--flush-interval", "20ms", "--backoff-initial", "100ms", "--backoff-max", "1s",
            "--connect-timeout", "1s", "--metrics-interval", "0", "--collector-id", name, *flags]
    return ManagedProcess(argv, str(tmp_path / f"{name}.log"))


def history_ids(pg, dsn, collector):
    """(rows, distinct event ids) of one collector in the history, read with psql."""
    database = dsn.rsplit("/", 1)[1]
    out = pg._run("psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                  "-d", database, "-c", "SELECT count(*), count(DISTINCT event_id) FROM tapio_events"
                  f" WHERE collector_id = '{collector}'").stdout
    rows, distinct = out.strip().split("|")
    return int(rows), int(distinct)


def delivered(collector, total):
    """The collector's closing line says every event was acked."""
    return f"{total} delivered" in collector.log().strip().splitlines()[-1]


def test_every_acked_event_is_in_the_history_once_and_the_api_reads_postgres(tmp_path, pg, dsn):
    server = ServerProcess(tmp_path, flags=["--db", dsn], http=True).wait_listening()
    total = 5000
    col = synthetic_collector(tmp_path, server.address, total, 5000)
    try:
        assert col.proc.wait(60) == 0, col.log()
        assert delivered(col, total), col.log()
        assert history_ids(pg, dsn, "collector") == (total, total)
        # what another replica wrote (a group, a batch of another collector) is answered too:
        # the API reads PostgreSQL, not this process's memory
        other = Store(dsn)
        try:
            other.put_group(group(7, kind="oom_kill"))
            ev = Events(collector="elsewhere", node="elsewhere")
            other.record_events(ev.batch(ev.exec(4242, 1, "far-away")), "elsewhere")
        finally:
            other.close()
        status, _, body = http_get(f"{server.http_url}/api/v1/groups")
        assert status == 200, body
        answer = json.loads(body)
        assert [g["id"] for g in answer["groups"]] == [group(7)["id"]]
        assert answer["counts"] == {"oom_kill": 1}
        status, _, body = http_get(f"{server.http_url}/api/v1/events?collector=elsewhere")
        assert status == 200, body
        assert [(e["pid"], e["comm"]) for e in json.loads(body)["events"]] == [(4242, "far-away")]
        status, _, body = http_get(f"{server.http_url}/api/v1/events?limit=3")
        events = json.loads(body)["events"]
        assert [e["collector_id"] for e in events] == ["elsewhere", "collector", "collector"]
        assert events[1]["id"] == f"ebpf-{total}"        # the newest of the collector's
        status, _, body = http_get(f"{server.http_url}/readyz")
        assert status == 200 and b"PostgreSQL" in body
        _, _, metrics = http_get(f"{server.http_url}/metrics")
        assert b"tapio_store_db_available 1.0" in metrics
        assert f'tapio_history_events_total{{result="new"}} {total}.0'.encode() in metrics, metrics
        # TapioQuery too: ListEvents gives the bytes the other writer stored, ListGroups its group
        with grpc.insecure_channel(server.address) as channel:
            stub = query_pb2_grpc.TapioQueryStub(channel)
            listed = stub.ListEvents(query_pb2.ListEventsRequest(collector_id="elsewhere"), timeout=10)
            assert list(listed.collector_ids) == ["elsewhere"]
            assert listed.events[0].comm == "far-away" and listed.events[0].pid == 4242
            groups = stub.ListGroups(query_pb2.ListGroupsRequest(), timeout=10).groups
            assert [g.id for g in groups] == [group(7)["id"]]
    finally:
        col.stop()
        server.stop()


def test_the_database_lost_mid_stream_pauses_and_loses_nothing(tmp_path, pg, dsn):
    server = ServerProcess(tmp_path, flags=["--db", dsn, "--ingest-queue", "16"], http=True)
    server.wait_listening()
    total = 12_000
    col = synthetic_collector(tmp_path, server.address, total, 3000)
    try:
        wait_until(lambda: history_ids(pg, dsn, "collector")[0] >= 1500, 20,
                   what="events in the history before the outage")
        pg.stop()
        server.wait_log("retrying with backoff", timeout=20)
        # the server goes on answering what it can, and says what is wrong
        status, _, _ = http_get(f"{server.http_url}/healthz")
        assert status == 200
        status, _, body = http_get(f"{server.http_url}/readyz")
        assert status == 503 and b"away" in body
        status, headers, body = http_get(f"{server.http_url}/api/v1/events")
        assert status == 503 and b"database" in body and headers.get("Retry-After") == "5"
        status, _, body = http_get(f"{server.http_url}/api/v1/groups")
        assert status == 503
        status, _, metrics = http_get(f"{server.http_url}/metrics")
        assert status == 200 and b"tapio_store_db_available 0.0" in metrics
        assert b"tapio_store_events " in metrics          # what is in memory still counts
        # ingest waits for the database: the queue fills and the collector is paused
        def backlog():
            status, _, body = http_get(f"{server.http_url}/api/v1/stats")
            return json.loads(body)["ingest"]["backlog"] if status == 200 else 0
        wait_until(lambda: backlog() >= 12, 20, what="the ingest queue held at its high-water mark")
        wait_until(lambda: "asked to pause" in col.log(), 20, what="the collector paused")
        assert col.proc.poll() is None
        pg.start()
        assert col.proc.wait(90) == 0, col.log()
        assert delivered(col, total), col.log()
    finally:
        if pg.proc is None:
            pg.start()
        col.stop()
        server.stop()
    assert history_ids(pg, dsn, "collector") == (total, total)
    assert server.proc.returncode == 0, server.log()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("problem", ["closed port", "bad password", "no such database"])
def test_a_database_that_cannot_be_used_at_start_up_is_one_line_and_exit_2(pg, problem):
    if problem == "closed port":
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    elif problem == "bad password":
        pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tapio') THEN "
                "CREATE ROLE tapio LOGIN PASSWORD 'right'; END IF; END $$")
        # the cluster trusts loopback: this role is held to its password
        hba = os.path.join(pg.data, "pg_hba.conf")
        with open(hba) as f:
            rules = f.read()
        if "tapio" not in rules:
            with open(hba, "w") as f:
                f.write("host all tapio 127.0.0.1/32 scram-sha-256\n" + rules)
            pg.psql("SELECT pg_reload_conf()")
        url = f"postgresql://tapio:wrong@127.0.0.1:{pg.port}/postgres"
    else:
        url = f"postgresql://postgres@127.0.0.1:{pg.port}/no_such_database"
    argv = [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", "0",
            "--http-port", "0", "--db", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("tapio-server: cannot use the PostgreSQL database")
    assert "wrong" not in lines[0]
    expected = {"closed port": "Connection refused", "bad password": "password authentication failed",
                "no such database": 'database "no_such_database" does not exist'}[problem]
    assert expected in lines[0], lines[0]
