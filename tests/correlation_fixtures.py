"""Synthetic kernel events for the correlation tests: built with the protobuf library (the wire
contract's reference implementation), decoded with the compiled codec, as the server gets them."""
import ipaddress

from tapio._fast.codec import DecodedBatch
from tapio.v1 import events_pb2, stream_pb2

SEC = 1_000_000_000
T0 = 1_764_000_000 * SEC
RESULTS = {"ok": 0, "refused": 1, "timed_out": 2, "reset": 3, "unreachable": 4, "other": 5}

POD_UID = "e547c52f-de8c-4beb-8011-00a62d0936aa"
CONTAINER = "c7c603c79cd328588d937f1e05e0a465e7569183ed25fb1078af8a5f5f6e16cd"


def pod_context(container=CONTAINER, pod_uid=POD_UID, pod_name="payment-7d9", namespace="default",
                container_name="payment-api"):
    return events_pb2.Context(container_id=container, container_runtime="containerd",
                              pod_uid=pod_uid, pod_name=pod_name, namespace=namespace,
                              container_name=container_name, qos_class="Burstable")


class Events:
    """A collector's stream of synthetic events: ids ebpf-1, ebpf-2, ... and batch ids 1, 2, ..."""

    def __init__(self, collector="node-a", node="node-a", start_ns=T0):
        self.collector = collector
        self.node = node
        self.now = start_ns
        self.seq = 0
        self.batch_id = 0

    def at(self, seconds):
        """Move the clock `seconds` on; returns the new time."""
        self.now += int(seconds * SEC)
        return self.now

    def _event(self, type_, pid, comm, ts=None, ppid=1, cgroup_id=100, count=1, context=None,
               process=None):
        self.seq += 1
        e = events_pb2.Event(id=f"ebpf-{self.seq}", type=type_, timestamp_ns=ts or self.now, pid=pid,
                             tid=pid, ppid=ppid, cgroup_id=cgroup_id, comm=comm)
        if count > 1:
            e.count = count
        if context is not None:
            e.context.CopyFrom(context)
        if process is not None:
            e.process.CopyFrom(process)
        return e

    def exec(self, pid, ppid, comm, filename=None, args=None, ancestors=None, **kw):
        filename = filename or f"/usr/bin/{comm}"
        process = events_pb2.Process(executable=filename, command_line=" ".join(args or [comm]),
                                     user="root", ancestors=ancestors or [ppid])
        e = self._event(events_pb2.EVENT_TYPE_EXEC, pid, comm, ppid=ppid, process=process, **kw)
        e.exec.filename = filename
        e.exec.args.extend(args or [comm])
        e.exec.args_count = len(args or [comm])
        return e

    def exit(self, pid, ppid, comm, code=0, signal=0, start_ns=None, executable=None, **kw):
        process = events_pb2.Process(executable=executable, user="root") if executable else None
        e = self._event(events_pb2.EVENT_TYPE_EXIT, pid, comm, ppid=ppid, process=process, **kw)
        e.exit.exit_code = code
        e.exit.signal = signal
        e.exit.start_time_ns = start_ns or (e.timestamp_ns - SEC // 10)
        e.exit.duration_ns = e.timestamp_ns - e.exit.start_time_ns
        return e

    def connect(self, pid, comm, daddr, dport, result="refused", count=1, **kw):
        addr = ipaddress.ip_address(daddr)
        e = self._event(events_pb2.EVENT_TYPE_TCP_CONNECT, pid, comm, count=count, **kw)
        tcp = e.tcp_connect
        tcp.family = 4 if addr.version == 4 else 6
        tcp.saddr = ipaddress.ip_address("127.0.0.1" if addr.version == 4 else "::1").packed
        tcp.daddr = addr.packed
        tcp.sport = 40000 + self.seq % 20000
        tcp.dport = dport
        tcp.result = RESULTS[result]
        tcp.error = {"ok": 0, "refused": 111, "timed_out": 110, "reset": 104}.get(result, 113)
        tcp.duration_ns = 50_000
        return e

    def signal(self, pid, comm, sig, code=0, sender_pid=None, sender_comm=None, **kw):
        e = self._event(events_pb2.EVENT_TYPE_SIGNAL, pid, comm, **kw)
        e.signal.signal = sig
        e.signal.code = code
        e.signal.sender_pid = pid if sender_pid is None else sender_pid
        e.signal.sender_comm = sender_comm or comm
        return e

    def oom(self, pid, comm, limit=512 << 20, rss=500 << 20, memcg="payment", trigger_pid=None,
            memcg_id=4242, **kw):
        e = self._event(events_pb2.EVENT_TYPE_OOM_KILL, pid, comm, **kw)
        o = e.oom_kill
        o.trigger_pid = trigger_pid or pid
        o.trigger_comm = comm
        o.memcg_id = memcg_id
        o.memcg_name = memcg
        o.memcg_limit_bytes = limit
        o.memcg_usage_bytes = limit
        o.rss_bytes = rss
        o.total_vm_bytes = rss * 2
        return e

    def throttled(self, cgroup_id, first_ns, last_ns, budget=100, interval_ns=SEC, **held):
        """What a collector's budget held back of one cgroup (`held`: exec=, tcp_connect=, ...),
        as the collector sends it: stamped at the end of its interval."""
        e = self._event(events_pb2.EVENT_TYPE_THROTTLED, 0, "", ts=last_ns, cgroup_id=cgroup_id)
        t = e.throttled
        t.first_timestamp_ns, t.last_timestamp_ns = first_ns, last_ns
        t.budget, t.burst, t.interval_ns = budget, budget, interval_ns
        for type_, n in held.items():
            setattr(t, type_, n)
        return e

    def batch(self, *events):
        """The events as one decoded batch (DecodedBatch), with the next batch id."""
        self.batch_id += 1
        request = stream_pb2.TapioStreamEventsRequest(batch=stream_pb2.EventBatch(
            batch_id=self.batch_id, collector_id=self.collector, node_name=self.node,
            events=list(events), created_at_ns=self.now, path=stream_pb2.BATCH_PATH_SEMANTIC))
        return DecodedBatch.parse(request.SerializeToString())


class State:
    """What the ingest engine hands consumers about a collector (CollectorState's fields used)."""

    def __init__(self, collector_id="node-a", node_name="node-a"):
        self.collector_id = collector_id
        self.node_name = node_name


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.ns = 1_000 * SEC

    def __call__(self):
        return self.ns

    def advance(self, seconds):
        self.ns += int(seconds * SEC)


class OtlpReceiver:
    """A real OTLP/gRPC trace receiver on 127.0.0.1 (opentelemetry-proto's TraceService): keeps
    every span it is sent, flattened to dicts with hex ids and plain attribute values."""

    def __init__(self):
        import concurrent.futures
        import threading

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self
        self.spans = []
        self.requests = 0
        self._lock = threading.Lock()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._add(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"
        self.server.start()

    @staticmethod
    def _value(v):
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return [OtlpReceiver._value(x) for x in v.array_value.values]
        return getattr(v, kind) if kind else None

    def _add(self, request):
        out = []
        for rs in request.resource_spans:
            resource = {a.key: self._value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "name": s.name,
                        "start_ns": s.start_time_unix_nano, "end_ns": s.end_time_unix_nano,
                        "attributes": {a.key: self._value(a.value) for a in s.attributes},
                        "status": s.status.code, "resource": resource,
                    })
        with self._lock:
            self.requests += 1
            self.spans.extend(out)

    def trace(self, trace_id):
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def stop(self):
        self.server.stop(0).wait(5)
