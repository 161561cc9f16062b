"""Collector ids are free to invent: the server tracks at most --max-collectors of them. On a real
grpcio server on 127.0.0.1, wired as tapio-server wires it (ingest, store, correlation engine),
many ids each open a stream, send a batch and go; every table kept per collector id stays within
the cap, the forgotten ids are counted (and logged once), and the collectors connected throughout,
a raw stream and a real tapio-collector process, keep their duplicate window and their events."""
import logging
import os
import queue
import threading
import time

import grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tapio.http.metrics import new_registry
from tapio.server.app import connect
from tapio.server.correlation import CorrelationEngine
from tapio.server.grpc_server import GrpcServer
from tapio.server.http_app import ServerMetrics, ServerSurface
from tapio.server.ingest import Ingest
from tapio.server.service import TapioService
from tapio.server.store import Store
from tapio.v1 import stream_pb2
from tests.helpers import BIN, ManagedProcess, free_port, wait_until
from tests.test_security_streams import batch, held_stream, hello

CAP = 20
CHURNERS = 60
_Ack = stream_pb2.EventAck


class Resident:
    """A raw StreamEvents call that stays open and sends what it is given, when it is given."""

    def __init__(self, channel, collector_id):
        self._out = queue.Queue()
        self.acks = []
        self.ended = threading.Event()

        def requests():
            yield hello(collector_id)
            while True:
                item = self._out.get(timeout=60)
                if item is None:
                    return
                yield item

        self.call = channel.stream_stream("/tapio.v1.TapioService/StreamEvents")(requests(), timeout=120)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for raw in self.call:
                response = stream_pb2.TapioStreamEventsResponse.FromString(raw)
                if response.HasField("ack"):
                    self.acks.append(response.ack)
        except grpc.RpcError:
            pass
        finally:
            self.ended.set()

    def send(self, message):
        self._out.put(message)

    def close(self):
        self._out.put(None)
        self.call.cancel()
        self.ended.wait(10)


def metric(registry, name):
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_ids_past_the_cap_are_forgotten_everywhere_and_connected_ones_never(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tapio.server")
    ingest = Ingest(max_collectors=CAP)
    store = Store(retention_s=0)
    engine = CorrelationEngine()
    connect(ingest, store, engine)
    service = TapioService(ingest)
    server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 16, False)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    registry = new_registry(ServerMetrics(ServerSurface(ingest, service=service, store=store,
                                                        engine=engine)))
    real = resident = None
    try:
        start = time.time_ns() // 1000
        # a real collector, connected throughout, on a node with a few events
        real = ManagedProcess(
            [os.path.join(BIN, "tapio-collector"), "--source", "synthetic", "--rate", "20",
             "--count", "40", "--correlation", "raw", "--server", f"127.0.0.1:{server.port}",
             "--collector-id", "real", "--flush-interval", "50ms", "--metrics-interval", "0",
             "--http-port", "0"], str(tmp_path / "collector.log"))
        resident = Resident(channel, "resident")
        resident.send(batch("resident", start))
        wait_until(lambda: resident.acks, 10, what="the resident's first ack")
        assert resident.acks[0].status == _Ack.STATUS_OK
        wait_until(lambda: "real" in ingest.collectors and ingest.collectors["real"].events, 30,
                   what="the real collector's first events")

        def tracked():
            return {"ingest": len(ingest.collectors), "store": store.recent.collectors(),
                    "correlation": engine.collectors()}

        for i in range(CHURNERS):
            cid = f"churn-{i}"
            got, ended, errors, release = held_stream(channel, [hello(cid), batch(cid, start + i)])
            wait_until(lambda: [r for r in got if r.HasField("ack")], 10, what=f"{cid}'s ack")
            release.set()
            assert ended.wait(10) and not errors, f"{cid}'s stream did not end cleanly: {errors}"
            assert all(n <= CAP for n in tracked().values()), (i, tracked())

        # the last churner's goodbye may come after its stream ended at the client
        wait_until(lambda: not any(s.connected for c, s in list(ingest.collectors.items())
                                   if c.startswith("churn-")), 10, what="every churner gone")
        total_ids = CHURNERS + 2
        assert ingest.collector_ids_forgotten == total_ids - CAP
        assert tracked() == {"ingest": CAP, "store": CAP, "correlation": CAP}
        assert metric(registry, "tapio_collector_ids_forgotten_total") == total_ids - CAP
        assert metric(registry, "tapio_collectors_known") == CAP
        # the newest churners are the ones kept, with their events
        kept = {c for c in ingest.collectors if c.startswith("churn-")}
        assert kept == {f"churn-{i}" for i in range(CHURNERS - (CAP - 2), CHURNERS)}
        assert not store.recent_events(collector="churn-0")
        assert store.recent_events(collector=f"churn-{CHURNERS - 1}")
        # one log line for the whole burst
        said = [r for r in caplog.records if "collector ids (--max-collectors)" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]

        # the ones connected throughout were never forgotten: the resident's duplicate window holds
        assert {"resident", "real"} <= set(ingest.collectors)
        resident.send(batch("resident", start))
        wait_until(lambda: len(resident.acks) == 2, 10, what="the resident's second ack")
        assert resident.acks[1].status == _Ack.STATUS_DUPLICATE
        assert ingest.collectors["resident"].batches == 1
        assert len(store.recent_events(collector="resident")) == 2
        # and the real collector kept its events and went on, on one stream
        wait_until(lambda: ingest.collectors["real"].events == 40, 30, what="the real collector's 40 events")
        assert ingest.collectors["real"].connections == 1
        assert len(store.recent_events(collector="real", limit=1000)) == 40
        assert "real" in engine.stats()["collectors"]
    finally:
        if resident is not None:
            resident.close()
        if real is not None:
            real.stop()
        channel.close()
        server.stop(1)
        ingest.close()
        engine.close(flush=False)
        store.close()


def test_a_forgotten_collector_that_comes_back_starts_afresh():
    """Its batch ids are new again (the window went with it), and its batches are accepted."""
    ingest = Ingest(max_collectors=1)
    store = Store(retention_s=0)
    engine = CorrelationEngine(timer=False)
    connect(ingest, store, engine)
    service = TapioService(ingest)
    server = GrpcServer(service, "127.0.0.1", free_port(), 4 << 20, 4, False)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        start = time.time_ns() // 1000
        for cid in ("a", "b", "a"):
            got, ended, errors, release = held_stream(channel, [hello(cid), batch(cid, start)])
            wait_until(lambda: [r for r in got if r.HasField("ack")], 10, what=f"{cid}'s ack")
            assert [r.ack.status for r in got if r.HasField("ack")] == [_Ack.STATUS_OK]
            release.set()
            assert ended.wait(10) and not errors
            wait_until(lambda: not ingest.collectors[cid].connected, 10, what=f"{cid} gone")
        # "a" again pushed out "b" at its hello: one id, one ring, one engine state
        assert list(ingest.collectors) == ["a"] and ingest.collector_ids_forgotten == 2
        assert store.recent.collectors() == 1 and engine.collectors() == 1
    finally:
        channel.close()
        server.stop(1)
        ingest.close()
        engine.close(flush=False)
        store.close()
