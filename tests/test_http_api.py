"""The server's HTTP surface on real hypercorn in the test's trio nursery, fed by a real Ingest
engine with real encoded batches (the synthetic events of tapio._fast.synthetic, through the
same encoder and decoder as on the wire), asked over real HTTP."""
import json
import urllib.parse

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tapio import vocab
from tapio._fast import synthetic
from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch
from tapio.http.rates import RateSampler
from tapio.server.http_app import ServerHttp, ServerSurface
from tapio.server.ingest import Ingest, StreamSession
from tapio.server.service import TapioService
from tests.helpers import free_port, http_get


class Api:
    def __init__(self, url, ingest, surface):
        self.url = url
        self.ingest = ingest
        self.surface = surface

    async def get(self, path, headers=None):
        """(status, headers, body bytes)."""
        return await trio.to_thread.run_sync(http_get, self.url + path)

    async def json(self, path):
        status, headers, body = await self.get(path)
        assert headers["content-type"] == "application/json", (path, headers)
        return status, json.loads(body)


def feed(ingest, collector="c-1", node="node-1", events=30, batch_id=1, kernel_drops=0,
         buffer_drops=0, peer="ipv4:127.0.0.1:40000"):
    """One collector stream with one batch of synthetic events, processed and acked."""
    session = StreamSession(peer)
    ingest.hello(session, collector, node, "test")
    arena = EventArena(events)
    synthetic.fill(arena, 1, events)
    data = BatchEncoder(collector, node, 0).encode(arena, batch_id, 1, kernel_drops=kernel_drops,
                                                   buffer_drops=buffer_drops)
    batch = DecodedBatch.parse(data)
    ingest.submit(session, batch)
    session.out.get(timeout=10)          # the ack: the batch is counted
    return session, batch


@pytest.fixture
async def api(nursery):
    ingest = Ingest()
    service = TapioService(ingest)
    surface = ServerSurface(ingest, service=service, grpc_address="127.0.0.1:9")
    http = ServerHttp(surface, "127.0.0.1", free_port())
    http.bind()
    url = await nursery.start(http.run)
    yield Api(url, ingest, surface)
    http.stop()
    ingest.close()


async def test_healthz_answers(api):
    status, body = await api.json("/healthz")
    assert status == 200
    assert body["status"] == "ok" and body["program"] == "tapio-server"


async def test_readyz_says_what_is_not_ready(api):
    status, body = await api.json("/readyz")
    assert status == 200 and body["ready"] is True and body["not_ready"] == []
    assert body["checks"]["grpc"]["ok"] and "127.0.0.1:9" in body["checks"]["grpc"]["detail"]
    api.surface.service.draining.set()
    status, body = await api.json("/readyz")
    assert status == 503 and body["ready"] is False
    assert body["not_ready"] == ["grpc: draining: the server is shutting down"]


async def test_stats_and_collectors_count_what_ingest_processed(api):
    _, batch = await trio.to_thread.run_sync(lambda: feed(api.ingest, events=30, kernel_drops=7,
                                                          buffer_drops=2))
    status, stats = await api.json("/api/v1/stats")
    assert status == 200
    assert stats["events"]["received"] == 30
    assert stats["events"]["by_type"] == batch.type_counts()
    assert stats["batches"] == {"received": 1, "duplicates": 0, "malformed": 0}
    assert stats["drops"]["kernel"] == 7 and stats["drops"]["buffer"] == 2
    assert stats["collectors"] == {"connected": 1, "known": 1, "max": 10000, "forgotten": 0}
    assert stats["groups"] is None and stats["store"] is None      # no store in this server

    status, body = await api.json("/api/v1/collectors")
    assert status == 200 and body["count"] == 1
    (c,) = body["collectors"]
    assert (c["id"], c["node"], c["peer"], c["connected"]) == ("c-1", "node-1", "ipv4:127.0.0.1:40000", True)
    assert c["connected_since"].endswith("Z")
    assert c["events"] == 30 and c["drops"] == {"kernel": 7, "processor": 0, "buffer": 2}
    assert c["events_per_second"] >= 0


def test_rates_come_from_samples_of_the_counters():
    totals = {"type": {"exec": 0}}
    sampler = RateSampler(lambda: {k: dict(v) for k, v in totals.items()}, window=10.0)
    assert sampler.rates("type") == {} and sampler.history("type") == []
    for second in range(13):          # exec: 5 a second; exit appears at second 6, 2 a second
        totals["type"]["exec"] = 5 * second
        if second >= 6:
            totals["type"]["exit"] = 2 * (second - 6)
        sampler.sample(now=100.0 + second, wall=1000.0 + second)
    assert sampler.rates("type") == {"exec": 5.0, "exit": 1.2}    # exit: 12 over the 10 s window
    history = sampler.history("type")
    assert len(history) == 12 and history[0] == {"t": 1001.0, "rates": {"exec": 5.0}}
    assert history[-1] == {"t": 1012.0, "rates": {"exec": 5.0, "exit": 2.0}}


async def test_stats_carry_the_rate_history(api):
    await trio.to_thread.run_sync(feed, api.ingest)
    status, stats = await api.json("/api/v1/stats")
    assert status == 200
    assert all(set(h) == {"t", "rates"} for h in stats["history"])
    assert set(stats["events"]["per_second_by_type"]) <= set(stats["events"]["by_type"])


async def test_metrics_are_prometheus_text_built_from_the_counters(api):
    await trio.to_thread.run_sync(lambda: feed(api.ingest, events=20, kernel_drops=3))
    status, headers, body = await api.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    received = families["tapio_events_received"]
    assert received.type == "counter"
    assert sum(s.value for s in received.samples if s.name.endswith("_total")) == 20
    assert {s.labels["collector"] for s in received.samples} == {"c-1"}
    dropped = {s.labels["stage"]: s.value for s in families["tapio_events_dropped"].samples
               if s.name.endswith("_total")}
    assert dropped["kernel"] == 3 and dropped["decode"] == 0
    assert families["tapio_collectors_connected"].samples[0].value == 1
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "tapio_batches_received",
                 "tapio_acks_sent", "tapio_ingest_queue_batches", "tapio_build_info"):
        assert name in families, name


async def test_metrics_speak_openmetrics_when_asked(api):
    status, headers, body = await trio.to_thread.run_sync(
        lambda: http_get(api.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}))
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_without_a_store_events_and_groups_are_503_with_a_reason(api):
    for path in ("/api/v1/events", "/api/v1/groups", "/api/v1/groups/0123abcd"):
        status, body = await api.json(path)
        assert status == 503, path
        assert "no events or groups" in body["error"]


BAD_REQUESTS = [
    ("/api/v1/events?limit=0", "limit must be between 1 and 1000"),
    ("/api/v1/events?limit=1001", "limit must be between 1 and 1000"),
    ("/api/v1/events?limit=-3", "limit must be between"),
    ("/api/v1/events?limit=ten", "limit must be a whole number"),
    ("/api/v1/events?limit=1e3", "limit must be a whole number"),
    ("/api/v1/events?limit=1&limit=2", "given 2 times"),
    ("/api/v1/events?pid=-1", "pid must be between 0 and 4294967295"),
    ("/api/v1/events?pid=4294967296", "pid must be between"),
    ("/api/v1/events?pid=12abc", "pid must be a whole number"),
    ("/api/v1/events?type=fork", "type must be one of"),
    ("/api/v1/events?type=EXEC", "type must be one of"),
    ("/api/v1/events?comm=" + "x" * 65, "comm is longer than 64"),
    ("/api/v1/events?comm=a%00b", "comm holds control characters"),
    ("/api/v1/events?container=" + "c" * 257, "container is longer than 256"),
    ("/api/v1/events?pods=1", "unknown parameter 'pods'"),
    ("/api/v1/groups?kind=crashloop", "kind must be one of"),
    ("/api/v1/groups?since=yesterday", "since must be a duration"),
    ("/api/v1/groups?since=nan", "since as Unix seconds"),
    ("/api/v1/groups?since=-5", "since as Unix seconds"),
    ("/api/v1/groups?since=1e300", "since as Unix seconds"),
    ("/api/v1/groups?since=2025-13-45T99:00:00Z", "since must be a duration"),
    ("/api/v1/groups?limit=0", "limit must be between"),
    ("/api/v1/groups?before=..%2F..%2Fetc", "is not a group id"),
    ("/api/v1/groups?before=" + "a" * 129, "before is longer than 128"),
    ("/api/v1/groups/a%20b", "is not a group id"),
    ("/api/v1/groups/" + "f" * 129, "is not a group id"),
    ("/api/v1/stats?verbose=1", "unknown parameter 'verbose'"),
    ("/api/v1/collectors?id=x", "unknown parameter 'id'"),
]


@pytest.mark.parametrize("path,message", BAD_REQUESTS)
async def test_bad_parameters_are_400_with_a_message(api, path, message):
    status, body = await api.json(path)
    assert status == 400, (path, body)
    assert message in body["error"], body
    assert body["status"] == 400


async def test_unknown_paths_and_methods(api):
    status, body = await api.json("/api/v2/stats")
    assert status == 404 and "/api/v1/stats" in body["endpoints"]
    status, headers, _ = await trio.to_thread.run_sync(
        lambda: http_get(api.url + "/api/v1/stats", method="POST", data=b"{}"))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = await trio.to_thread.run_sync(
        lambda: http_get(api.url + "/healthz", method="HEAD"))
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_the_vocabulary_is_tapio_vocab(api):
    status, body = await api.json("/api/v1/vocabulary")
    assert status == 200
    assert body["event_types"] == [name for number, name in sorted(vocab.EVENT_TYPES.items()) if number]
    assert body["event_type_aliases"] == {"oom": "oom_kill"}
    assert {k["kind"]: k["intent"] for k in body["group_kinds"]} == vocab.GROUP_KINDS
    assert body["severities"] == list(vocab.SEVERITIES)
    assert body["drop_stages"] == ["kernel", "processor", "buffer", "decode", "exporter"]
    status, body = await api.json("/api/v1/vocabulary?x=1")
    assert status == 400
    # the dashboard holds no list of its own: it reads this
    _, _, script = await api.get("/dashboard/app.js")
    assert b"/api/v1/vocabulary" in script
    for kind in set(vocab.GROUP_KINDS) - set(vocab.EVENT_TYPE_NUMBERS):   # oom_kill is both
        assert kind.encode() not in script, kind


async def test_dashboard_files_are_served_and_nothing_else(api):
    status, headers, body = await api.get("/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'src="/dashboard/app.js"' in body and b"http://" not in body and b"https://" not in body
    assert "default-src 'self'" in headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        status, headers, body = await api.get(f"/dashboard/{name}")
        assert status == 200 and headers["content-type"].startswith(kind), name
        assert b"https://" not in body and b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")
    for path in ("/dashboard/nope.js", "/dashboard/..%2Fhttp_app.py", "/dashboard/../http_app.py",
                 "/dashboard/%2e%2e%2fhttp_app.py"):
        status, _, _ = await api.get(path)
        assert status == 404, path


ENDPOINTS = ["/api/v1/stats", "/api/v1/collectors", "/api/v1/events", "/api/v1/groups", "/api/v1/groups/x",
             "/api/v1/vocabulary"]
NAMES = ["limit", "pid", "type", "comm", "container", "collector", "kind", "since", "before", "x"]


@settings(max_examples=150, deadline=None)
@given(endpoint=st.sampled_from(ENDPOINTS),
       query=st.lists(st.tuples(st.sampled_from(NAMES), st.text(max_size=40)), max_size=4))
def test_no_query_is_answered_with_a_500(endpoint, query):
    """Whatever the parameters, the answer is a status with a JSON message, never a 500."""
    status, body = _fuzz_server.request(endpoint + "?" + urllib.parse.urlencode(query))
    assert status in (200, 400, 404, 503), (endpoint, query, status, body)
    assert "error" in body or status == 200


class _FuzzServer:
    """One server for every hypothesis example: hypercorn on trio in a thread of its own."""

    def __init__(self):
        self.url = None
        self.thread = None

    def request(self, path):
        if self.url is None:
            self._start()
        status, _, body = http_get(self.url + path)
        return status, json.loads(body)

    def _start(self):
        import threading
        ready = threading.Event()

        async def main():
            ingest = Ingest()
            feed(ingest)
            http = ServerHttp(ServerSurface(ingest), "127.0.0.1", free_port())
            http.bind()
            async with trio.open_nursery() as nursery:
                self.url = await nursery.start(http.run)
                self.token = trio.lowlevel.current_trio_token()
                self.stop = http.stop
                ready.set()
            ingest.close()

        self.thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the fuzz server did not start"

    def close(self):
        if self.thread is not None:
            trio.from_thread.run_sync(self.stop, trio_token=self.token)
            self.thread.join(10)


_fuzz_server = _FuzzServer()


@pytest.fixture(scope="module", autouse=True)
def _close_fuzz_server():
    yield
    _fuzz_server.close()


# ---- with a store and the correlation engine, as tapio-server runs them ----------------------

CONTAINER_B = "b" * 64


@pytest.fixture
async def api_store(nursery):
    from tapio.server.correlation import CorrelationEngine
    from tapio.server.store import Store
    ingest = Ingest()
    store = Store()
    engine = CorrelationEngine(on_group=store.put_group, timer=False)
    ingest.consumers += [store.add_batch, engine.consume]
    surface = ServerSurface(ingest, store=store, engine=engine)
    http = ServerHttp(surface, "127.0.0.1", free_port())
    http.bind()
    url = await nursery.start(http.run)
    await trio.to_thread.run_sync(_crash_loops, ingest)
    yield Api(url, ingest, surface)
    http.stop()
    ingest.close()
    engine.close(flush=False)
    store.close()


def _crash_loops(ingest):
    """Two containers whose payment-api exits with code 1 six times each, a second apart: two
    crash-loop groups, one per container."""
    from tests.correlation_fixtures import Events, pod_context
    events = Events(collector="node-a", node="node-a")
    session = StreamSession("ipv4:10.0.0.7:50000")
    ingest.hello(session, "node-a", "node-a", "test")
    for container, pod, uid in ((CONTAINER_B, "payment-b", "b" * 8), ("c" * 64, "payment-c", "c" * 8)):
        exits = []
        for i in range(6):
            events.at(1)
            exits.append(events.exit(1000 + i, 1, "payment-api", code=1, executable="/app/payment-api",
                                     context=pod_context(container=container, pod_name=pod, pod_uid=uid)))
        ingest.submit(session, events.batch(*exits))
        session.out.get(timeout=10)


async def test_groups_newest_first_with_kind_filter_and_pages(api_store):
    status, body = await api_store.json("/api/v1/groups")
    assert status == 200 and body["count"] == 2 and body["next"] is None
    assert body["counts"] == {"crash_loop": 2}
    newest, oldest = body["groups"]
    assert newest["kind"] == oldest["kind"] == "crash_loop"
    assert newest["attributes"]["container_id"] == "c" * 64
    assert "failed 6 times" in newest["summary"] and newest["trace_id"]

    status, page = await api_store.json("/api/v1/groups?kind=crash_loop&limit=1")
    assert status == 200 and [g["id"] for g in page["groups"]] == [newest["id"]]
    assert page["next"].startswith("/api/v1/groups?") and f"before={newest['id']}" in page["next"]
    status, page = await api_store.json(page["next"])
    assert [g["id"] for g in page["groups"]] == [oldest["id"]] and page["next"] is None

    status, body = await api_store.json("/api/v1/groups?kind=oom_kill")
    assert status == 200 and body["groups"] == []
    # the fixture's events happened in November 2025: none within the last minute
    assert (await api_store.json("/api/v1/groups?since=1m"))[1]["groups"] == []
    assert (await api_store.json("/api/v1/groups?since=1764000000"))[1]["count"] == 2
    assert (await api_store.json("/api/v1/groups?since=2025-11-24T16:00:00Z"))[1]["count"] == 2
    assert (await api_store.json("/api/v1/groups?before=" + "f" * 32))[1]["groups"] == []


async def test_one_group_carries_its_events(api_store):
    _, body = await api_store.json("/api/v1/groups?limit=1")
    group_id = body["groups"][0]["id"]
    status, group = await api_store.json(f"/api/v1/groups/{group_id}")
    assert status == 200 and group["id"] == group_id and group["trace_id"] == group_id
    assert [e["type"] for e in group["events"]] == ["exit"] * 6
    assert {e["exit"]["exit_code"] for e in group["events"]} == {1}
    status, body = await api_store.json("/api/v1/groups/" + "0" * 32)
    assert status == 404 and "no group" in body["error"]


async def test_events_filtered_newest_first(api_store):
    status, body = await api_store.json("/api/v1/events?type=exit&limit=5")
    assert status == 200 and body["count"] == 5 and body["filters"] == {"type": "exit"}
    times = [e["timestamp_ns"] for e in body["events"]]
    assert times == sorted(times, reverse=True)
    status, body = await api_store.json("/api/v1/events?pid=1002")
    assert {e["pid"] for e in body["events"]} == {1002} and body["count"] == 2   # one per container
    status, body = await api_store.json(f"/api/v1/events?container={CONTAINER_B[:12]}")
    assert body["count"] == 6 and {e["context"]["container_id"] for e in body["events"]} == {CONTAINER_B}
    status, body = await api_store.json("/api/v1/events?comm=payment-api&collector=node-a&limit=1000")
    assert body["count"] == 12
    status, body = await api_store.json("/api/v1/events?type=exec")
    assert status == 200 and body["events"] == []


async def test_group_metrics_and_stats(api_store):
    status, headers, body = await api_store.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    opened = {s.labels["kind"]: s.value for s in families["tapio_groups"].samples
              if s.name == "tapio_groups_total"}
    assert opened["crash_loop"] == 2 and opened["oom_kill"] == 0
    stored = {s.labels["kind"]: s.value for s in families["tapio_groups_stored"].samples}
    assert stored["crash_loop"] == 2
    status, stats = await api_store.json("/api/v1/stats")
    assert stats["groups"] == {"crash_loop": 2} and stats["groups_opened"] == {"crash_loop": 2}
    assert stats["store"]["events_kept"] == 12


def test_an_install_without_the_dashboard_files_still_serves_the_rest(caplog):
    from tapio.http.asgi import Router
    router = Router("tapio-server")
    router.static("/dashboard/", "tapio.server", "no-such-folder", index="index.html", index_at="/")
    assert "no files to serve at /dashboard/" in caplog.text
    assert router.patterns() == ["/", "/dashboard/{name}"]


# numbers past what SQLite and 64-bit nanoseconds hold are a 400 that says so, never a 500
OVERFLOWING = [
    ("/api/v1/groups?since=9999-12-31T23:59:59", "since must fall between 1970 and 2262"),
    ("/api/v1/groups?since=9999-12-31T23:59:59Z", "since must fall between 1970 and 2262"),
    ("/api/v1/groups?since=2262-04-12T00:00:00Z", "since must fall between 1970 and 2262"),
    ("/api/v1/groups?since=0001-01-01T00:00:00Z", "since must fall between 1970 and 2262"),
    ("/api/v1/groups?since=99999999999", "since as Unix seconds must be between 0 and"),
    ("/api/v1/groups?since=9223372037", "since as Unix seconds must be between 0 and"),
    ("/api/v1/groups?since=99999999999999h", "since as a duration back from now must be at most"),
    ("/api/v1/events?pid=9223372036854775808", "pid must be between 0 and 4294967295"),
    ("/api/v1/events?limit=18446744073709551616", "limit must be between 1 and 1000"),
    ("/api/v1/groups?limit=" + "9" * 5000, "limit must be between 1 and 1000"),
]


@pytest.mark.parametrize("path,message", OVERFLOWING)
async def test_overflowing_parameters_are_400s(api_store, path, message):
    status, body = await api_store.json(path)
    assert status == 400, (path, body)
    assert message in body["error"], body


async def test_the_latest_representable_time_is_a_valid_since(api_store):
    status, body = await api_store.json("/api/v1/groups?since=2262-04-11T00:00:00Z")
    assert status == 200 and body["groups"] == []
