"""The bus parts of a replica against a real 3-node NATS JetStream cluster on loopback: the relay
acks a batch only after JetStream has it and PAUSEs collectors while JetStream cannot take
batches; partition leases give one owner, and a new owner replays a node's events into the same
group (the same id) after the old one died; the owner marks groups incomplete for gaps and for
throttled cgroups as a server without a bus does.

Batches are built with the protobuf library (tests/correlation_fixtures.py) and go through the
real Ingest engine, as the gRPC service hands them over."""
import contextlib
import time

import pytest

from tapio._fast.codec import DecodedBatch
from tapio.server.bus import subjects
from tapio.server.bus.loop import BusLoop
from tapio.server.bus.owner import Owner
from tapio.server.bus.relay import BusRelay
from tapio.server.bus.replica import Replica, _ensure_stream
from tapio.server.correlation import CorrelationEngine
from tapio.server.ingest import Ingest, StreamSession
from tapio.server.store import Store
from tapio.v1 import stream_pb2
from tests.correlation_fixtures import Events, pod_context
from tests.helpers import wait_until
from tests.nats_cluster import nats_cluster

_Response = stream_pb2.TapioStreamEventsResponse


def crash_exit(ev, i):
    """A non-zero exit of the same container's executable, one second after the last."""
    ev.at(1)
    return ev.exit(1000 + i, 1, "payment-api", code=1, executable="/app/payment",
                   context=pod_context())


def request(ev, *events, seq=None):
    """(request bytes, decoded batch) of the next batch of `ev`'s collector; `seq`: the
    (first, last) sequence numbers it accounts for."""
    ev.batch_id += 1
    first, last = seq or (0, 0)
    raw = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
        batch_id=ev.batch_id, collector_id=ev.collector, node_name=ev.node, events=list(events),
        created_at_ns=ev.now, first_seq=first, last_seq=last)).SerializeToString()
    return raw, DecodedBatch.parse(raw)


def responses(session, n, timeout):
    """The next n responses on a session (acks and controls), parsed; fails after `timeout`."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} responses within {timeout}s: {out}"
        try:
            item = session.out.get(timeout=left)
        except Exception:
            continue
        assert isinstance(item, bytes), item
        out.append(_Response.FromString(item))
    return out


def stream_messages(bus):
    info = bus.call(bus.js.stream_info(subjects.STREAM), 10)
    return info.state.messages


def test_acked_only_after_jetstream_and_paused_while_it_cannot_take_batches():
    with nats_cluster(3) as cluster:
        bus = BusLoop(cluster.urls)
        ingest = Ingest()
        relay = None
        try:
            bus.call(_ensure_stream(bus.js), 20)
            relay = BusRelay(bus, ingest, timeout=1.5, backoff=(0.2, 1.0))
            ingest.relay = relay
            session = StreamSession("test")
            ingest.hello(session, "col-1", "node-1", "v")
            ev = Events("col-1", "node-1", start_ns=time.time_ns())
            for i in range(20):
                raw, batch = request(ev, crash_exit(ev, i))
                ingest.submit(session, batch, raw)
            acks = responses(session, 20, 20)
            assert [r.ack.batch_id for r in acks] == list(range(1, 21))
            assert all(r.ack.status == stream_pb2.EventAck.STATUS_OK for r in acks)
            assert stream_messages(bus) == 20

            # two of three nodes gone: no quorum, JetStream takes nothing
            cluster.kill(1)
            cluster.kill(2)
            outage = []
            for i in range(20, 30):
                raw, batch = request(ev, crash_exit(ev, i))
                outage.append(batch.batch_id)
                ingest.submit(session, batch, raw)
            first = responses(session, 1, 30)[0]
            assert first.HasField("control") and first.control.action == first.control.ACTION_PAUSE, first
            assert "unavailable" in first.control.reason
            assert ingest.held
            time.sleep(2.0)
            assert session.out.empty(), "a batch was acked while JetStream could not take it"

            cluster.start(1)
            cluster.start(2)
            got = responses(session, len(outage) + 1, 60)
            controls = [r for r in got if r.HasField("control")]
            acks = [r.ack for r in got if r.HasField("ack")]
            assert [c.control.action for c in controls] == [stream_pb2.StreamControl.ACTION_RESUME]
            assert sorted(a.batch_id for a in acks) == outage
            assert not ingest.held

            # a batch sent again (the collector never saw its ack) is stored once
            raw, batch = request(ev, crash_exit(ev, 99))
            ingest.submit(session, batch, raw)
            ingest.submit(session, DecodedBatch.parse(raw), raw)
            again = [r.ack for r in responses(session, 2, 20)]
            assert [a.status for a in again] == [stream_pb2.EventAck.STATUS_OK,
                                                 stream_pb2.EventAck.STATUS_DUPLICATE]
            wait_until(lambda: stream_messages(bus) == 31, 10, what="31 messages in the stream")
            assert relay.retries > 0
        finally:
            ingest.close()
            if relay is not None:
                relay.close(2)
            bus.close(2)


def _replica(cluster, name, groups, lease=3.0):
    store = Store(None)
    engine = CorrelationEngine(on_group=lambda g, closed: groups.setdefault(g["id"], []).append(g))
    ingest = Ingest()
    return Replica(cluster.urls, name, ingest, store, engine, replay=60, lease=lease), ingest


@contextlib.contextmanager
def _streaming_to_one_replica(collector_id, node):
    """Replica a alone on a 3-node cluster, with a stream of `collector_id` open on it:
    (replica, ingest, session, events to send, {group id: its versions})."""
    with nats_cluster(3) as cluster:
        groups = {}
        replica, ingest = _replica(cluster, "a", groups)
        try:
            session = StreamSession("test")
            ingest.hello(session, collector_id, node, "v")
            yield replica, ingest, session, Events(collector_id, node, start_ns=time.time_ns()), groups
        finally:
            replica.close(2)


def test_one_owner_per_partition_and_a_takeover_keeps_the_group():
    with nats_cluster(3) as cluster:
        groups_a, groups_b = {}, {}
        a, ingest_a = _replica(cluster, "a", groups_a)
        b = None
        try:
            session = StreamSession("test")
            ingest_a.hello(session, "col-1", "node-1", "v")
            ev = Events("col-1", "node-1", start_ns=time.time_ns())
            for i in range(6):
                raw, batch = request(ev, crash_exit(ev, i))
                ingest_a.submit(session, batch, raw)
            responses(session, 6, 20)
            wait_until(lambda: groups_a, 20, what="the crash loop group on replica a")
            assert len(groups_a) == 1
            (group_id,) = groups_a
            wait_until(lambda: groups_a[group_id][-1]["attributes"]["events_total"] == 6, 10,
                       what="6 exits in the group")
            time.sleep(a.owner.lease / 3 * 2)        # a checkpoint was written

            # b joins: the partitions are split, never held by both
            b, ingest_b = _replica(cluster, "b", groups_b)
            wait_until(lambda: len(a.owner.partitions()) == len(b.owner.partitions()) ==
                       subjects.PARTITIONS // 2, 30, what="the partitions split in two")
            assert not set(a.owner.partitions()) & set(b.owner.partitions())

            # a dies without a word (its leases expire): b takes everything and replays
            part = subjects.partition("node-1")
            owner_before = "a" if part in a.owner.partitions() else "b"
            a.bus.close(1)
            wait_until(lambda: len(b.owner.partitions()) == subjects.PARTITIONS, 30,
                       what="replica b owning every partition")
            session_b = StreamSession("test-b")
            ingest_b.hello(session_b, "col-1", "node-1", "v")
            for i in range(6, 9):
                raw, batch = request(ev, crash_exit(ev, i))
                ingest_b.submit(session_b, batch, raw)
            responses(session_b, 3, 20)
            wait_until(lambda: group_id in groups_b and
                       groups_b[group_id][-1]["attributes"]["events_total"] == 9, 30,
                       what=f"group {group_id} with 9 exits on replica b (owner before: {owner_before})")
            assert list(groups_b) == [group_id], "the takeover made another crash-loop group"
        finally:
            if b is not None:
                b.close(2)
            a.relay.close(1)


def test_the_owner_marks_groups_that_overlap_a_sequence_gap_incomplete():
    with _streaming_to_one_replica("col-gap", "node-gap") as (a, ingest, session, ev, groups):
        for i in range(6):
            raw, batch = request(ev, crash_exit(ev, i), seq=(i + 1, i + 1))
            ingest.submit(session, batch, raw)
        # events 7..9 never arrive: the next batch starts at 10
        raw, batch = request(ev, crash_exit(ev, 6), seq=(10, 10))
        ingest.submit(session, batch, raw)
        responses(session, 7, 20)

        def latest():
            return [versions[-1] for versions in groups.values()]
        wait_until(lambda: latest() and latest()[0]["incomplete"], 20,
                   what=f"the crash loop marked incomplete: {latest()}")
        (group,) = latest()
        assert group["attributes"]["gaps"][0]["reason"] == "sequence gap 7-9 (3 events)"


def test_the_owner_marks_the_groups_of_a_throttled_cgroup_only():
    """Refused connects from two cgroups to one port, then a throttled event of one of them:
    through the bus the owner marks that cgroup's connectivity group incomplete, not the other."""
    noisy, quiet = 4100, 4200
    with _streaming_to_one_replica("col-thr", "node-thr") as (a, ingest, session, ev, groups):
        start = ev.now
        for pid, cgroup_id in ((600, noisy), (700, quiet)):
            raw, batch = request(ev, *(ev.connect(pid, "client", "10.0.0.9", 5432, cgroup_id=cgroup_id)
                                       for _ in range(5)))
            ingest.submit(session, batch, raw)
        ev.at(0.5)
        raw, batch = request(ev, ev.throttled(noisy, start, ev.now, tcp_connect=200))
        ingest.submit(session, batch, raw)
        responses(session, 3, 20)

        def latest():
            return {v[-1]["attributes"]["cgroup_id"]: v[-1] for v in groups.values()}
        wait_until(lambda: latest().get(noisy, {}).get("incomplete"), 20,
                   what=f"the noisy cgroup's group marked incomplete: {latest()}")
        group = latest()[noisy]
        assert group["attributes"]["gaps"][0]["reason"] == "throttled: 200 tcp_connect held back (budget 100 per 1.0 s)"
        assert group["attributes"]["gaps"][0]["cgroup_id"] == noisy
        assert latest()[quiet]["incomplete"] is False
        assert a.correlation.stats()["groups_marked_incomplete_by_reason"] == {"throttled": 1}
