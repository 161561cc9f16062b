"""A replica: the bus connection, the events stream, the relay, the partition owner and the group
fan-out, started and stopped as one (tapio/server/app.py, with --bus)."""
import logging
import os
import re
import socket
import time
import types

from tapio._fast.codec import DecodedBatch, DecodeError
from tapio.flags import ConfigError
from tapio.server.bus import subjects
from tapio.server.bus.fanout import GroupFanout
from tapio.server.bus.loop import BusError, BusLoop
from tapio.server.bus.owner import Owner
from tapio.server.bus.relay import BusRelay
from tapio.server.ingest import _time_range
from tapio.server.sequence import SequenceTracker

log = logging.getLogger("tapio.server.bus")

DUPLICATE_WINDOW = 15 * 60      # seconds: a collector re-sends within this after a failover
STREAM_MAX_AGE = 24 * 3600      # seconds of events the stream keeps (replay needs minutes)


def default_replica_id():
    """HOSTNAME-PID in the characters --replica-id allows (a host name may have dots)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:50]
    return f"{host}-{os.getpid()}"


def parse_bus(text):
    """`nats://a:4222,b:4222` -> ["nats://a:4222", "nats://b:4222"]; ValueError when malformed."""
    urls = [u.strip() for u in str(text).split(",") if u.strip()]
    if not urls:
        raise ValueError("--bus needs at least one nats:// URL")
    for url in urls:
        if not url.startswith(("nats://", "tls://")) or len(url) > 512:
            raise ValueError(f"{url[:80]!r} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)")
    return urls


async def _ensure_stream(js):
    from nats.js import api
    from nats.js.errors import APIError, NotFoundError
    try:
        return await js.stream_info(subjects.STREAM)
    except NotFoundError:
        pass
    config = api.StreamConfig(name=subjects.STREAM, subjects=[subjects.SUBJECTS],
                              num_replicas=subjects.REPLICAS, duplicate_window=DUPLICATE_WINDOW,
                              max_age=STREAM_MAX_AGE, storage=api.StorageType.FILE,
                              discard=api.DiscardPolicy.OLD)
    try:
        return await js.add_stream(config)
    except APIError as e:
        if "already in use" in str(e):
            return await js.stream_info(subjects.STREAM)     # another replica was first
        if "replicas" not in str(e).lower() and "insufficient" not in str(e).lower():
            raise
        log.warning("Bus: fewer JetStream servers than %d: the events stream is kept once (no "
                    "copy survives the loss of its server)", subjects.REPLICAS)
        config.num_replicas = 1
        return await js.add_stream(config)


def _retry(step, within):
    deadline = time.monotonic() + within
    while True:
        try:
            return step()
        except BusError as e:
            if "no answer" not in str(e) or time.monotonic() > deadline:
                raise
            log.warning("Bus: %s; trying again", e)


class Replica:
    def __init__(self, urls, replica_id, ingest, store, correlation, replay=300.0, lease=6.0,
                 timeout=5.0):
        self.replica_id = replica_id
        self.store = store
        self.correlation = correlation
        self._states = {}
        try:
            self.bus = BusLoop(urls, name=f"tapio-server {replica_id}", connect_timeout=timeout)
        except BusError as e:
            raise ConfigError(f"cannot reach the event bus at {','.join(urls)}: {e}") from None
        try:
            # a cluster that has just started may take some seconds to place a new stream: each
            # step is tried again (bounded) while the answer is a timeout
            _retry(lambda: self.bus.call(_ensure_stream(self.bus.js), timeout), timeout * 6)
            self.fanout = GroupFanout(self.bus, replica_id, store.subscriptions)
            self.fanout.start(timeout)
            self.owner = Owner(self.bus, replica_id, self._process, replay=replay, lease=lease)
            _retry(lambda: self.owner.start(timeout), timeout * 6)
        except BusError as e:
            self.bus.close(1.0)
            raise ConfigError(f"the event bus at {','.join(urls)} has no working JetStream: {e}") from None
        self.relay = BusRelay(self.bus, ingest, timeout=timeout)
        ingest.relay = self.relay
        store.stats_sources["bus"] = self.stats
        log.info("Replica %s on the event bus %s (JetStream stream %s, %d partitions)", replica_id,
                 ",".join(urls), subjects.STREAM, subjects.PARTITIONS)

    def on_group(self, group):
        self.fanout.publish(group)

    def _state(self, collector_id, node):
        state = self._states.get(collector_id)
        if state is None:
            if len(self._states) > 100_000:
                self._states.clear()
            state = self._states[collector_id] = types.SimpleNamespace(
                collector_id=collector_id, node_name=node, sequence=SequenceTracker())
        return state

    def _process(self, items):
        """The owner thread: history first (retried until stored), then correlation."""
        batches = []
        for data, collector_id, node in items:
            try:
                batch = DecodedBatch.parse(data)
            except DecodeError as e:       # ingest validated it: only a foreign publisher
                log.warning("Bus: skipped a malformed message on the events stream: %s", e)
                continue
            if batch.kind != "batch":
                continue
            batches.append((batch, collector_id or batch.collector_id, node or batch.node_name))
        # the whole fetched set in one transaction: one commit for up to `fetch` batches
        self.store.record_many([(batch, collector_id) for batch, collector_id, _ in batches])
        for batch, collector_id, node in batches:
            state = self._state(collector_id, node)
            # the owner follows each collector's sequence too, in stream order: its gaps (and
            # kernel drops) mark the groups they overlap incomplete, as ingest does without a bus
            first_ns, last_ns = _time_range(batch)
            for gap in state.sequence.observe(batch.first_seq, batch.last_seq, first_ns, last_ns,
                                              batch.kernel_drops):
                self.correlation.mark_gap(collector_id, gap.start_ns, gap.end_ns, gap.describe())
            self.correlation.consume(batch, state)

    def stats(self):
        return {"relay": self.relay.stats(), "owner": self.owner.stats(),
                "groups": self.fanout.stats(), "disconnects": self.bus.disconnects}

    def close(self, timeout=5.0):
        self.relay.close(timeout)
        self.owner.close(timeout)
        self.bus.close(timeout)
