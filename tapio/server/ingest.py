"""Where decoded batches go: one engine thread takes them from a bounded queue, in order.

For each batch it drops duplicates (by collector id and batch id), counts, appends to the
--events-out archive, hands the batch to the consumers (the correlation engine), and only then
acks it: an acked batch is one the server has processed, so a collector may forget it.

Backpressure: when the queue is above its high-water mark the stream that filled it is told to
PAUSE; below the low-water mark, every paused stream is told to RESUME. A stream that goes on
sending for longer than `pause_grace` after its PAUSE is ended with RESOURCE_EXHAUSTED, so that
it cannot keep the queue full and starve the streams that paused (its collector reconnects, and
its unacked batches come again); until then it is held back by the full queue.

With a bus (`--bus`, tapio/server/bus/relay.py) the engine thread hands each batch to the relay
instead, which publishes it to NATS JetStream and calls back `published` once JetStream has it:
only then is the batch counted, kept and acked. While the bus is unavailable the relay holds
ingest (`hold`): every stream is PAUSEd, and RESUMEd when the bus takes batches again (`release`).

Each collector's event sequence is followed (tapio/server/sequence.py): a gap in it, or events
the kernel dropped, is handed to the gap listeners (the correlation engine's mark_gap) before
the batch that reveals it goes to the consumers.

Duplicates are dropped by batch id (BatchIds), and nobody can move a collector's window of ids:
a batch id further ahead than the server's clock (collectors number batches from the
microseconds of their start) plus MAX_ID_SKEW is refused with INVALID_ARGUMENT instead of being
remembered. One live stream per collector id: a second one replaces the first, which is ended
with ABORTED, logged and counted (CollectorState.replaced), so two processes that claim one id
show up instead of silently sharing its window.

Collector ids are free to invent, so the ids tracked are bounded (`max_collectors`): past the
cap, the least recently heard ids without a live stream are forgotten, here and, through the
forget listeners, in every other table kept per collector id (the store's recent events, the
correlation engine's state). Connected ids are never forgotten. This is the one place that
decides; a forgotten id that comes back starts afresh.
"""
import collections
import json
import logging
import os
import queue
import re
import threading
import time

import grpc

from tapio._fast.codec import LatencyHistogram
from tapio.server.sequence import REASON_SEQUENCE, SequenceTracker
from tapio.v1 import stream_pb2

log = logging.getLogger("tapio.server")

# batch ids are microseconds since 1970 at the collector's start, counted up by one per batch:
# one further ahead of the server's clock than this is no collector's
MAX_ID_SKEW_US = 3600 * 1_000_000

_Ack = stream_pb2.EventAck
_Control = stream_pb2.StreamControl
_Response = stream_pb2.TapioStreamEventsResponse


def ack_bytes(batch_id, status, accepted=0, message=""):
    return _Response(ack=_Ack(batch_id=batch_id, status=status, events_accepted=accepted,
                              message=message)).SerializeToString()


def control_bytes(action, reason="", **fields):
    return _Response(control=_Control(action=action, reason=reason, **fields)).SerializeToString()


class CollectorState:
    """What the server knows about one collector, across its reconnects."""

    def __init__(self, collector_id):
        self.collector_id = collector_id
        self.node_name = ""
        self.version = ""
        self.peer = ""
        self.streams = 0                # open streams (normally 0 or 1)
        self.connections = 0            # streams opened over time
        self.connected_since = None
        self.last_batch_id = 0          # highest accepted
        self.seen = BatchIds()          # which ids were accepted: the rest are new
        self.batches = 0
        self.duplicates = 0
        self.events = 0
        self.events_by_type = {}
        self.throttled_by_type = {}          # what the collector's budget held back, by type
        self.kernel_drops = 0
        self.processor_drops = 0
        self.buffer_drops = 0
        self.last_event_id = None
        self.last_seen = None
        self.session = None             # its live stream (the newest)
        self.replaced = 0               # streams ended because a newer one said hello as it
        self.ids_refused = 0            # batches refused: their id was far ahead of the clock
        self.sequence = SequenceTracker()    # its event sequence: gaps, and its reported ledger
        self.forgotten = False          # dropped past --max-collectors: its queued batches too

    @property
    def connected(self):
        return self.streams > 0

    def ledger_json(self):
        """The collector's ledger as it reported it, and what the server saw of its sequence."""
        return self.sequence.as_json()


class BatchIds:
    """The batch ids accepted from one collector, to drop the ones sent again.

    Collectors send priority batches ahead of older routine ones, so ids arrive out of order:
    a high-water mark is not enough. The newest `window` ids are remembered exactly; an id
    below all of them (older than the window) counts as seen.
    """

    def __init__(self, window=65536):
        self.window = window
        self._ids = set()
        self._floor = 0

    def add(self, batch_id):
        """Remember `batch_id`; False when it was seen before."""
        if batch_id <= self._floor or batch_id in self._ids:
            return False
        self._ids.add(batch_id)
        if len(self._ids) > self.window:
            oldest = sorted(self._ids)[: self.window // 2]
            self._ids.difference_update(oldest)
            self._floor = oldest[-1]
        return True


def _time_range(batch):
    """(first, last) wall-clock ns of a batch's events; its creation time when it has none.
    Events are in sequence order, so the first and the last are enough."""
    n = len(batch)
    if not n:
        return batch.created_at_ns, batch.created_at_ns
    first = batch.event_dict(0)["timestamp_ns"]
    last = batch.event_dict(n - 1)["timestamp_ns"] if n > 1 else first
    return min(first, last), max(first, last)


_ARCHIVED_BATCH = re.compile(rb'"collector":("(?:[^"\\]|\\.)*"),"batch":(\d+)')


def archived_batches(path, tail_bytes=64 << 20):
    """{collector id: {batch ids}} of the batches in the tail of an --events-out archive.

    The archive is written before a batch is acked, so it is the one place that knows, after a
    crash, which batches were processed although their ack may never have left: a restarted
    server recovers its duplicate detection from it, and batches a collector sends again are
    not counted twice."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            data = f.read()
    except FileNotFoundError:
        return {}
    seen = {}
    for m in _ARCHIVED_BATCH.finditer(data):
        seen.setdefault(json.loads(m.group(1)), set()).add(int(m.group(2)))
    return seen


class StreamSession:
    """One open StreamEvents call: where its responses go, and whether it is paused."""

    END = object()

    def __init__(self, peer):
        self.peer = peer
        self.collector = None
        self.out = queue.SimpleQueue()     # response bytes, or END, or an (code, message) abort
        self.paused = False
        self.paused_at = 0.0                # monotonic time of the PAUSE
        self.principal = None              # who opened it (tapio.server.auth.Principal)


def wait_done(work_queue, timeout):
    """Until every item put on `work_queue` is task_done() (bounded by `timeout` seconds); True
    when they all were. The engine's queue here, the bus relay's in-flight queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if work_queue.unfinished_tasks == 0:
            return True
        time.sleep(0.01)
    return False


class Ingest:
    # forgetting ids again within this many seconds is the same burst: logged once
    FORGET_LOG_QUIET_S = 60.0

    def __init__(self, events_out=None, queue_batches=256, batch_delay=0.0, log_every=1000,
                 pause_grace=5.0, max_collectors=10000):
        self._lock = threading.Lock()          # guards collectors and counters read by others
        # held by the engine thread while it processes a batch, and while ids are forgotten:
        # no consumer adds a forgotten id back
        self._forget_lock = threading.Lock()
        self.pause_grace = pause_grace         # seconds a paused stream may go on sending
        self.pause_ignored = 0                 # streams ended for it
        self.collectors = collections.OrderedDict()     # id -> CollectorState, least recently heard first
        self.max_collectors = max_collectors
        self.collector_ids_forgotten = 0
        # callables([collector ids]): drop what they keep for these ids (any thread but the
        # engine's, never while it processes a batch)
        self.forget_listeners = []
        self._forgot_at = None                  # monotonic time of the latest forgetting
        self.events = 0
        self.batches = 0
        self.duplicates = 0
        self.decode_errors = 0
        self.pauses = 0
        self.replaced = 0                       # streams replaced by a newer one of the same id
        self.ids_refused = 0                    # batches refused for an id far ahead
        self.consumers = []                     # callables(batch, collector_state), engine thread
        # callables(batch, collector_state) that must succeed before a batch is acked (the
        # history): they run before the batch counts as received, duplicates too (they are
        # idempotent), and one that raises leaves the batch unacked and its stream ended
        self.recorders = []
        # callables(collector_id, start_ns, end_ns, reason text), engine thread, before the
        # consumers
        self.gap_listeners = []
        self.gaps = 0
        self.latency = LatencyHistogram()       # kernel timestamp -> processed here
        self.batch_delay = batch_delay          # test/demo knob: a deliberately slow server
        self._queue = queue.Queue(maxsize=queue_batches)
        self._high = max(1, queue_batches * 3 // 4)
        self._low = queue_batches // 4
        self._paused = set()
        self.relay = None                       # tapio.server.bus.relay.BusRelay, with --bus
        self.held = None                        # why every stream is paused (the bus is down)
        self._events_out = None
        if events_out:
            self._recover_seen(events_out)
            self._events_out = open(events_out, "ab")
        self._log_every = log_every
        self._logged_at = 0
        self._thread = threading.Thread(target=self._engine, name="ingest", daemon=True)
        self._thread.start()

    def _recover_seen(self, path):
        recovered = archived_batches(path)
        for collector_id, ids in recovered.items():
            state = self.collectors[collector_id] = CollectorState(collector_id)
            for batch_id in sorted(ids):
                state.seen.add(batch_id)
            state.last_batch_id = max(ids)
        if recovered:
            log.info("Recovered %d batch ids of %d collectors from %s",
                     sum(len(ids) for ids in recovered.values()), len(recovered), path)

    # -- called from stream handler threads ---------------------------------------------------
    def hello(self, session, collector_id, node_name, version):
        with self._lock:
            state = self.collectors.get(collector_id)
            if state is None:
                state = self.collectors[collector_id] = CollectorState(collector_id)
            self.collectors.move_to_end(collector_id)
            state.node_name = node_name or state.node_name
            state.version = version or state.version
            state.peer = session.peer
            state.streams += 1
            state.connections += 1
            state.connected_since = time.time()
            older, state.session = state.session, session
            if older is not None:
                state.replaced += 1
                self.replaced += 1
        session.collector = state
        if older is not None:
            log.warning("Collector %s: a new stream from %s replaces the one from %s", collector_id,
                        session.peer, older.peer)
            older.out.put((grpc.StatusCode.ABORTED, f"replaced by a newer stream for collector "
                                                    f"{collector_id!r} from {session.peer}"))
        log.info("Collector %s connected from %s", collector_id, session.peer)
        self._forget_over_cap()

    def goodbye(self, session, reason):
        if session.collector is None:
            return
        with self._lock:
            session.collector.streams -= 1
            if session.collector.session is session:
                session.collector.session = None
            self._paused.discard(session)
        log.info("Collector %s disconnected: %s", session.collector.collector_id, reason)
        self._forget_over_cap()     # the cap may have been held only by connected ids

    def _forget_over_cap(self):
        """Past max_collectors, forget the least recently heard ids without a live stream,
        here and in every forget listener's table, at once."""
        if len(self.collectors) <= self.max_collectors:
            return
        with self._forget_lock:
            with self._lock:
                excess = len(self.collectors) - self.max_collectors
                gone = []
                for state in self.collectors.values():
                    if len(gone) >= excess:
                        break
                    if not state.connected:
                        gone.append(state)
                for state in gone:
                    del self.collectors[state.collector_id]
                    state.forgotten = True
                self.collector_ids_forgotten += len(gone)
            if not gone:
                return
            ids = [state.collector_id for state in gone]
            for listener in self.forget_listeners:
                try:
                    listener(ids)
                except Exception:
                    log.exception("forget listener %r failed", listener)
        now = time.monotonic()
        if self._forgot_at is None or now - self._forgot_at > self.FORGET_LOG_QUIET_S:
            log.warning("More than %d collector ids (--max-collectors): forgetting the least "
                        "recently heard disconnected ones, first %r (counted in "
                        "tapio_collector_ids_forgotten_total; said again after %gs without)",
                        self.max_collectors, ids[0][:80], self.FORGET_LOG_QUIET_S)
        self._forgot_at = now

    def submit(self, session, batch, raw=None):
        """Queue a decoded batch (blocks while the queue is full); its ack follows on
        session.out. False, and the stream told to end, when its id is far ahead of the clock.
        `raw`: the request bytes it was decoded from (what a bus relay publishes)."""
        limit = time.time_ns() // 1000 + MAX_ID_SKEW_US
        if batch.batch_id > limit:
            with self._lock:
                session.collector.ids_refused += 1
                self.ids_refused += 1
            log.warning("Collector %s: refused batch id %d from %s, far ahead of the clock",
                        session.collector.collector_id, batch.batch_id, session.peer)
            session.out.put((grpc.StatusCode.INVALID_ARGUMENT,
                             f"batch id {batch.batch_id} is further ahead of the server's clock than "
                             f"any collector numbers its batches (at most {limit})"))
            return False
        if session.paused and time.monotonic() - session.paused_at > self.pause_grace:
            with self._lock:
                self.pause_ignored += 1
            log.warning("Collector %s: ended its stream from %s, which went on sending %gs after "
                        "PAUSE", session.collector.collector_id, session.peer, self.pause_grace)
            session.out.put((grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"still sending {self.pause_grace:g}s after PAUSE: wait for RESUME"))
            return False
        self._queue.put((session, batch, raw))
        if (self.held or self._queue.qsize() >= self._high) and not session.paused:
            with self._lock:
                session.paused_at = time.monotonic()
                session.paused = True
                self._paused.add(session)
                self.pauses += 1
            session.out.put(control_bytes(_Control.ACTION_PAUSE, self.held or "server ingest queue is full"))
        return True

    def finish(self, session):
        """The stream's requests ended: END follows its last ack, in order."""
        self._queue.put((session, None, None))

    def decode_failed(self):
        with self._lock:
            self.decode_errors += 1

    def backlog(self):
        return self._queue.qsize()

    def wait_idle(self, timeout):
        """Until every queued batch is processed (bounded); True when they all were."""
        return wait_done(self._queue, timeout)

    # -- the engine thread ---------------------------------------------------------------------
    def _engine(self):
        while True:
            session, batch, raw = self._queue.get()
            try:
                if session is None:
                    return
                if batch is None:
                    if self.relay is not None:
                        self.relay.end(session)
                    else:
                        session.out.put(StreamSession.END)
                    continue
                if self.batch_delay:
                    time.sleep(self.batch_delay)
                if self.relay is not None:
                    self.relay.publish(session, batch, raw)
                else:
                    self.published(session, batch)
            except Exception:
                # the engine thread must outlive any one batch: it acks every stream
                log.exception("Ingest: a batch from %s failed: ending its stream",
                              session.collector.collector_id)
                self.stream_done(session)
            finally:
                # after whatever left the queue, a stream's end too: when the last items before
                # the low-water mark are the ends of streams cut for flooding, the streams they
                # paused must still hear RESUME
                if self._paused and not self.held and self._queue.qsize() <= self._low:
                    self._resume_all()
                self._queue.task_done()

    def published(self, session, batch):
        """Process a batch and ack it (the engine thread; with a bus, the relay's acker thread
        once JetStream has it). A batch JetStream already had (a re-send after a timeout, or to
        another replica) is still seen by this replica's sequence tracker, or the range it
        covers would read as a gap."""
        state = session.collector
        with self._forget_lock:
            if state.forgotten:
                # queued by a stream gone since: not acked, its collector sends it again
                return
            for record in self.recorders:
                record(batch, state)
            gaps = self._accept(state, batch)
            if gaps is not None:
                for gap in gaps:
                    self._on_gap(state, gap)
                for consume in self.consumers:
                    try:
                        consume(batch, state)
                    except Exception:
                        log.exception("consumer %r failed on a batch from %s", consume,
                                      state.collector_id)
        if gaps is not None:
            session.out.put(ack_bytes(batch.batch_id, _Ack.STATUS_OK, len(batch)))
        else:
            session.out.put(ack_bytes(batch.batch_id, _Ack.STATUS_DUPLICATE, 0, "already received"))

    def stream_done(self, session):
        session.out.put(StreamSession.END)

    def hold(self, reason):
        """PAUSE every stream until release(): what they would send cannot be taken now."""
        now = time.monotonic()
        with self._lock:
            self.held = reason
            sessions = [c.session for c in self.collectors.values()
                        if c.session is not None and not c.session.paused]
            for session in sessions:
                session.paused = True
                session.paused_at = now
                self._paused.add(session)
                self.pauses += 1
        for session in sessions:
            session.out.put(control_bytes(_Control.ACTION_PAUSE, reason))

    def release(self):
        with self._lock:
            self.held = None
        self._resume_all()

    def _accept(self, state, batch):
        """None for a duplicate; else the gaps the batch reveals (usually none)."""
        n = len(batch)
        first_ns, last_ns = _time_range(batch)
        with self._lock:
            self.collectors.move_to_end(state.collector_id)     # heard from just now
            if batch.batch_id and not state.seen.add(batch.batch_id):
                state.duplicates += 1
                self.duplicates += 1
                return None
            gaps = state.sequence.observe(getattr(batch, "first_seq", 0), getattr(batch, "last_seq", 0),
                                          first_ns, last_ns, batch.kernel_drops,
                                          getattr(batch, "ledger", None))
            self.gaps += len(gaps)
            state.last_batch_id = max(state.last_batch_id, batch.batch_id)
            state.batches += 1
            state.events += n
            state.kernel_drops += batch.kernel_drops
            state.processor_drops += batch.processor_drops
            state.buffer_drops += batch.buffer_drops
            state.last_seen = time.time()
            counts = batch.type_counts()
            for type_name, count in counts.items():
                state.events_by_type[type_name] = state.events_by_type.get(type_name, 0) + count
            if "throttled" in counts:
                for type_name, count in batch.throttled_counts().items():
                    state.throttled_by_type[type_name] = state.throttled_by_type.get(type_name, 0) + count
            if n:
                state.last_event_id = batch.event_id(n - 1)
            self.batches += 1
            self.events += n
        self.latency.add_batch(batch, time.time_ns())
        if self._events_out is not None and n:
            self._events_out.write(batch.to_json_lines())
            self._events_out.flush()
        if self.events - self._logged_at >= self._log_every:
            self._logged_at = self.events
            log.info("Processed %d events, latest: %s", self.events, state.last_event_id)
        return gaps

    def _on_gap(self, state, gap):
        if gap.reason == REASON_SEQUENCE:
            log.warning("Collector %s: events %d..%d never arrived (%d events: dropped from its send "
                        "buffer or not delivered)", state.collector_id, gap.first_seq, gap.last_seq,
                        gap.events)
        for listener in self.gap_listeners:
            try:
                listener(state.collector_id, gap.start_ns, gap.end_ns, gap.describe())
            except Exception:
                log.exception("gap listener %r failed for %s", listener, state.collector_id)

    def _resume_all(self):
        with self._lock:
            paused, self._paused = self._paused, set()
        for session in paused:
            session.paused = False
            session.out.put(control_bytes(_Control.ACTION_RESUME))

    def close(self):
        """Stop the engine after what is queued, and close the archive."""
        self._queue.put((None, None, None))
        self._thread.join(10)
        if self._events_out is not None:
            self._events_out.close()
            self._events_out = None
