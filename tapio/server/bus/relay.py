"""Ingest side of a replica: each validated batch goes to JetStream, and its collector is acked only
after JetStream acked it (so a replica killed with -9 loses nothing it acked).

The ingest engine thread publishes without waiting (`publish`: a future from the bus loop) and
queues (session, batch, future) here, at most `window` of them: publishes are pipelined, and a
full window holds the engine back, which fills the ingest queue and PAUSEs collectors as a slow
server does. One acker thread waits for the futures in order, so a stream's acks, and its END,
leave in the order its batches came.

A publish that fails or times out (NATS down, no quorum) is published again with the same message
id (JetStream drops the copy if the first one landed after all) with backoff, while every
collector is PAUSEd (Ingest.hold); the first publish that succeeds again resumes them. Nothing is
acked that JetStream did not take, and nothing taken is lost.
"""
import logging
import queue
import threading
import time

from tapio.server.bus import subjects
from tapio.server.ingest import wait_done

log = logging.getLogger("tapio.server.bus")


class BusRelay:
    def __init__(self, bus, ingest, window=256, timeout=5.0, backoff=(0.1, 5.0)):
        self.bus = bus
        self.ingest = ingest
        self.timeout = timeout
        self.backoff = backoff
        self._inflight = queue.Queue(maxsize=window)
        self._closing = threading.Event()
        self._recovered_at = 0.0      # monotonic time the bus last came back
        self.published = 0
        self.duplicates = 0           # JetStream had the message id already
        self.retries = 0
        self.latency = []             # recent publish -> JetStream ack seconds (bounded)
        self._thread = threading.Thread(target=self._acker, name="bus-acker", daemon=True)
        self._thread.start()

    # -- the ingest engine thread ----------------------------------------------------------------
    def publish(self, session, batch, raw):
        self._inflight.put((session, batch, raw, self._send(session, batch, raw), time.monotonic()))

    def end(self, session):
        """The stream ended: its END follows its last ack."""
        self._inflight.put((session, None, None, None, 0.0))

    def _send(self, session, batch, raw):
        state = session.collector
        node = state.node_name or batch.node_name or state.collector_id
        headers = {subjects.COLLECTOR: state.collector_id, subjects.NODE: node}
        if batch.batch_id:
            headers[subjects.MSG_ID] = subjects.message_id(state.collector_id, batch.batch_id)
        return self.bus.submit(self.bus.js.publish(subjects.event_subject(node), raw,
                                                   timeout=self.timeout, headers=headers))

    # -- the acker thread ------------------------------------------------------------------------
    def _acker(self):
        while True:
            item = self._inflight.get()
            try:
                if item[0] is None:
                    return
                self._settle(*item)
            except Exception:
                # one batch's failure ends its stream (the collector sends it again on the
                # next), never this thread: without it no stream would hear an ack again
                log.exception("Bus: a batch could not be settled: ending its stream")
                self.ingest.stream_done(item[0])
            finally:
                self._inflight.task_done()

    def _settle(self, session, batch, raw, future, sent):
        if batch is None:
            self.ingest.stream_done(session)
            return
        ack = self._wait(session, batch, raw, future, sent)
        if ack is None:
            return                # closing: not acked, the collector sends it again elsewhere
        self._note_latency(time.monotonic() - sent)
        self.published += 1
        if ack.duplicate:
            self.duplicates += 1
        self.ingest.published(session, batch)

    def wait_idle(self, timeout):
        """Until every batch handed over is acked (bounded); True when they all were."""
        return wait_done(self._inflight, timeout)

    def _wait(self, session, batch, raw, future, sent):
        delay = self.backoff[0]
        while True:
            try:
                ack = future.result(self.timeout + 1.0)
                if self.ingest.held:
                    log.info("Bus: JetStream takes batches again: resuming collectors")
                    self._recovered_at = time.monotonic()
                    self.ingest.release()
                return ack
            except Exception as e:
                future.cancel()
                if self._closing.is_set():
                    return None
                if sent < self._recovered_at:
                    # published during the outage, and failed then: send it again at once,
                    # without pausing anyone for a failure that is over
                    sent = time.monotonic()
                    future = self._send(session, batch, raw)
                    continue
                if not self.ingest.held:
                    log.warning("Bus: JetStream did not take a batch (%s): pausing collectors, "
                                "retrying", str(e) or type(e).__name__)
                    self.ingest.hold("the event bus (NATS JetStream) is unavailable")
                self.retries += 1
                if self._closing.wait(delay):
                    return None
                delay = min(self.backoff[1], delay * 2)
                future = self._send(session, batch, raw)

    def _note_latency(self, seconds):
        self.latency.append(seconds)
        if len(self.latency) > 100_000:
            del self.latency[:50_000]

    def stats(self):
        recent = sorted(self.latency[-20_000:])
        def ms(q):
            return round(recent[min(len(recent) - 1, int(q * len(recent)))] * 1000, 3) if recent else None
        return {"published": self.published, "duplicates": self.duplicates,
                "retries": self.retries, "in_flight": self._inflight.qsize(),
                "holding": bool(self.ingest.held),
                "publish_ack_ms": {"p50": ms(0.5), "p99": ms(0.99), "samples": len(recent)}}

    def close(self, timeout=5.0):
        """Stop after what is in flight (bounded by `timeout`); what is left is not acked."""
        self.wait_idle(timeout)
        self._closing.set()
        try:
            self._inflight.put((None, None, None, None, 0.0), timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout)
