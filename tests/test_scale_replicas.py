"""Replicas end to end, real processes on loopback: a 3-node NATS JetStream cluster, PostgreSQL,
three `tapio-server --bus ... --db postgresql://...` replicas and several collectors.

One replica and one NATS node are killed with -9 mid-stream. Ground truth is what each collector
says it delivered (acked) in its exit line: every one of those events is in the PostgreSQL
history exactly once. A crash loop whose exits span the death of the replica that owned its node
is one group, and a group made on one replica reaches Subscribe and /api/v1/groups of another.
"""
import os
import queue
import re
import signal
import subprocess
import threading
import time

import grpc
import pytest

from tapio.server.bus import subjects
from tapio.v1 import query_pb2, query_pb2_grpc, stream_pb2
from tests.correlation_fixtures import Events, pod_context
from tests.helpers import (BIN, ManagedProcess, StreamingCollector, free_port, http_json,
                           read_in_background, require_ebpf, wait_until)
from tests.nats_cluster import nats_cluster
from tests.postgres import postgres_server

DELIVERED = re.compile(r"(\d+) delivered")


class Replica(ManagedProcess):
    def __init__(self, tmp_path, name, bus, dsn, *flags):
        self.name = name
        self.port = free_port()
        self.http_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        argv = [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", str(self.port),
                "--http-port", str(self.http_port), "--db", dsn, "--bus", bus, "--replica-id", name,
                "--shutdown-grace", "2s", *flags]
        super().__init__(argv, str(tmp_path / f"{name}.log"))

    def ready(self):
        self.wait_log("Tapio server listening", 60)
        self.wait_log("Dashboard on", 30)
        return self

    def stats(self):
        return http_json(self.http + "/api/v1/stats")[1]

    def partitions(self):
        try:
            return set(self.stats()["store"]["bus"]["owner"]["partitions"])
        except (OSError, KeyError, TypeError, ValueError):
            return set()

    def groups(self, kind):
        status, body = http_json(f"{self.http}/api/v1/groups?kind={kind}&limit=100")
        assert status == 200, body
        return body["groups"]


def collector(tmp_path, servers, name, count, rate):
    argv = [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--server", servers,
            "--collector-id", name, "--node-name", f"node-{name}", "--correlation", "raw",
            "--rate", str(rate), "--count", str(count), "--flush-interval", "20ms",
            "--backoff-initial", "100ms", "--backoff-max", "1s", "--connect-timeout", "1s",
            "--metrics-interval", "0", "--http-port", "0"]
    return ManagedProcess(argv, str(tmp_path / f"{name}.log"))


class CrashStream:
    """A collector of our own over real gRPC: it sends crash-loop exits of one container (one
    event a batch) and waits for each ack, so the test knows exactly which exits were acked."""

    def __init__(self, address, collector_id, node):
        self.ev = Events(collector_id, node, start_ns=time.time_ns() - 60 * 10**9)
        self.channel = grpc.insecure_channel(address)
        self.requests = queue.Queue()
        self.requests.put(stream_pb2.TapioStreamEventsRequest(hello=stream_pb2.Hello(
            collector_id=collector_id, node_name=node, version="test")).SerializeToString())
        call = self.channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(
            iter(self.requests.get, None), timeout=120)
        self.responses, _ = read_in_background(call)
        self.call = call

    def exits(self, first, n, timeout=30):
        for i in range(first, first + n):
            self.ev.at(1)
            event = self.ev.exit(2000 + i, 1, "payment-api", code=1, executable="/app/payment",
                                 context=pod_context())
            self.ev.batch_id += 1
            self.requests.put(stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
                batch_id=self.ev.batch_id, collector_id=self.ev.collector, node_name=self.ev.node,
                events=[event], created_at_ns=self.ev.now)).SerializeToString())
        want = self.ev.batch_id
        wait_until(lambda: any(stream_pb2.TapioStreamEventsResponse.FromString(r).ack.batch_id == want
                               for r in self.responses), timeout, what=f"the ack of batch {want}")

    def close(self):
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()



def test_replicas_survive_a_replica_and_a_nats_node_killed(tmp_path):
    with nats_cluster(3) as nats, postgres_server() as dsn:
        replicas = [Replica(tmp_path, f"r{i}", nats.bus, dsn) for i in range(3)]
        collectors, crash, sub_channel = [], None, None
        try:
            for r in replicas:
                r.ready()
            def spread():
                owned = [r.partitions() for r in replicas]
                return (all(len(p) >= subjects.PARTITIONS // 3 - 1 for p in owned)
                        and len(set().union(*owned)) == sum(len(p) for p in owned)
                        == subjects.PARTITIONS)
            # each partition owned once, a third each (a replica that holds too many releases
            # some every lease/3 seconds)
            wait_until(spread, 60, what="the partitions spread over 3 replicas")

            # which replica owns the crash-looping node: that is the one to kill
            crash_node = "node-crashing"
            part = subjects.partition(crash_node)
            victim = next(r for r in replicas if part in r.partitions())
            survivors = [r for r in replicas if r is not victim]
            reader = survivors[1]

            # Subscribe on a replica that neither makes nor receives the group's batches
            sub_channel = grpc.insecure_channel(reader.address)
            sub = query_pb2_grpc.TapioQueryStub(sub_channel).Subscribe(
                query_pb2.SubscribeRequest(groups=True), timeout=120)
            subscribed, _ = read_in_background(sub)

            servers = ",".join(r.address for r in replicas)
            total, rate = 12_000, 1500
            collectors = [collector(tmp_path, servers, f"c{i}", total, rate) for i in range(3)]
            crash = CrashStream(survivors[0].address, "crash-col", crash_node)
            crash.exits(0, 6)
            # made by the victim (it owns the node), read on another replica: from PostgreSQL
            # (/api/v1/groups) and from the bus (Subscribe)
            made = wait_until(lambda: reader.groups("crash_loop"), 30, what="the crash loop group in PG")
            assert len(made) == 1 and made[0]["collector_id"] == "crash-col", made
            group_id = made[0]["id"]
            wait_until(lambda: any(r.group.id == group_id for r in list(subscribed)
                                   if r.HasField("group")), 30,
                       what=f"group {group_id} in Subscribe on {reader.name}")
            time.sleep(3)           # the owner writes its checkpoint every lease/3 = 2 s

            victim.stop(signal.SIGKILL)
            nats.kill(1)
            crash.exits(6, 4, timeout=60)

            for c in collectors:
                assert c.proc.wait(120) == 0, c.log()
            delivered = {f"c{i}": int(DELIVERED.findall(c.log().strip().splitlines()[-1])[-1])
                         for i, c in enumerate(collectors)}
            assert all(n == total for n in delivered.values()), delivered

            history = HistoryCounts(dsn)
            wait_until(lambda: all(history.count(cid) >= n for cid, n in delivered.items()), 90,
                       what=f"every delivered event in the history: {history.last}")
            for cid, n in delivered.items():
                events, distinct = history.exactly_once(cid)
                assert events == distinct == n, (cid, events, distinct, n)

            def crash_groups():
                return [g for g in reader.groups("crash_loop") if g["collector_id"] == "crash-col"]
            wait_until(lambda: crash_groups() and
                       crash_groups()[0]["attributes"]["events_total"] == 10, 60,
                       what=f"one crash loop group with 10 exits: {crash_groups()}")
            assert [g["id"] for g in crash_groups()] == [group_id], crash_groups()
            assert part in set().union(*(r.partitions() for r in survivors))
        finally:
            if crash is not None:
                crash.close()
            if sub_channel is not None:
                sub_channel.close()
            for c in collectors:
                c.stop()
            for r in replicas:
                r.stop()


class HistoryCounts:
    """Counts in the PostgreSQL history, read with psycopg (the same client the store uses)."""

    def __init__(self, dsn):
        self.dsn = dsn
        self.last = {}

    def _query(self, sql, *params):
        import psycopg
        with psycopg.connect(self.dsn, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchone()

    def count(self, collector_id):
        (n,) = self._query(HISTORY_COUNT, collector_id)
        self.last[collector_id] = n
        return n

    def exactly_once(self, collector_id):
        return self._query(HISTORY_DISTINCT, collector_id)


HISTORY_COUNT = "SELECT count(*) FROM tapio_events WHERE collector_id = %s"
HISTORY_DISTINCT = "SELECT count(*), count(DISTINCT event_id) FROM tapio_events WHERE collector_id = %s"


@pytest.mark.parametrize("case", ["no-postgres", "bus-unreachable", "bad-url"])
def test_start_up_failures_are_one_line_and_exit_2(tmp_path, case):
    port = free_port()       # nothing listens there
    argv = [os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1", "--grpc-port", "0",
            "--http-port", "0"]
    if case == "no-postgres":
        argv += ["--bus", f"nats://127.0.0.1:{port}", "--db", str(tmp_path / "groups.db")]
        expect = "--bus needs a shared database"
    elif case == "bad-url":
        argv += ["--bus", "http://127.0.0.1:1", "--db", "postgresql://postgres@127.0.0.1:1/postgres"]
        expect = "is not a NATS URL"
    if case == "bus-unreachable":
        with postgres_server() as dsn:
            argv += ["--bus", f"nats://127.0.0.1:{port}", "--db", dsn]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        expect = "cannot reach the event bus"
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tapio-server:")]
    assert len(lines) == 1 and expect in lines[0], proc.stderr


def test_a_real_ebpf_collector_through_the_bus_is_answered_by_every_replica(tmp_path):
    require_ebpf()
    with nats_cluster(3) as nats, postgres_server() as dsn:
        replicas = [Replica(tmp_path, f"r{i}", nats.bus, dsn) for i in range(2)]
        col = None
        try:
            for r in replicas:
                r.ready()
            servers = ",".join(r.address for r in replicas)
            col = StreamingCollector(tmp_path, servers, ["--collector-id", "ebpf-node",
                                                         "--node-name", "ebpf-node"])
            col.wait_log("eBPF probes attached", 60)
            col.wait_log("Connected to Tapio server", 30)
            # an exec the kernel sees: its pid is the ground truth
            proc = subprocess.run(["/bin/sh", "-c", "echo $$; exit 3"], capture_output=True,
                                  text=True, timeout=10)
            pid = int(proc.stdout.strip())

            def found(replica):
                status, body = http_json(f"{replica.http}/api/v1/events?type=exit&pid={pid}")
                return status == 200 and [e for e in body["events"]
                                          if e["exit"]["exit_code"] == 3]
            for r in replicas:
                wait_until(lambda: found(r), 60, what=f"the exit of pid {pid} on {r.name}")
            exits = found(replicas[0])
            assert len(exits) == 1 and exits[0]["collector_id"] == "ebpf-node", exits
        finally:
            if col is not None:
                col.stop()
            for r in replicas:
                r.stop()


def test_jetstream_without_quorum_pauses_collectors_and_loses_nothing(tmp_path):
    with nats_cluster(3) as nats, postgres_server() as dsn:
        replicas = [Replica(tmp_path, f"r{i}", nats.bus, dsn) for i in range(2)]
        collectors = []
        try:
            for r in replicas:
                r.ready()
            servers = ",".join(r.address for r in replicas)
            total = 15_000
            collectors = [collector(tmp_path, servers, f"q{i}", total, 1500) for i in range(2)]
            history = HistoryCounts(dsn)
            wait_until(lambda: history.count("q0") > 1000, 60, what="events in the history")
            nats.kill(1)
            nats.kill(2)           # one node of three: no quorum, JetStream takes nothing
            wait_until(lambda: any("pausing collectors" in r.log() for r in replicas), 30,
                       what="a replica pausing its collectors")
            time.sleep(3)
            assert all(c.proc.poll() is None for c in collectors)
            nats.start(1)
            nats.start(2)
            wait_until(lambda: any("resuming collectors" in r.log() for r in replicas), 60,
                       what="a replica resuming its collectors")
            for c in collectors:
                assert c.proc.wait(120) == 0, c.log()
            delivered = {f"q{i}": int(DELIVERED.findall(c.log().strip().splitlines()[-1])[-1])
                         for i, c in enumerate(collectors)}
            assert all(n == total for n in delivered.values()), delivered
            wait_until(lambda: all(history.count(cid) >= n for cid, n in delivered.items()), 90,
                       what=f"every delivered event in the history: {history.last}")
            for cid, n in delivered.items():
                assert history.exactly_once(cid) == (n, n), cid
        finally:
            for c in collectors:
                c.stop()
            for r in replicas:
                r.stop()
