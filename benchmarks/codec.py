"""The compiled protobuf codec against the `protobuf` library, measured in the same run.

    python benchmarks/codec.py [--json PATH] [--events N] [--seconds S]

A fixed-seed mix of kernel events as a busy node produces them (process churn, connections, a
few signals and OOM kills), in batches of 512, in two variants: "raw" (kernel events only, the
raw path) and "semantic" (half of them enriched with a container context and process facts, the
semantic path). Each batch is timed the way the pipeline meets it: the arena has just been filled
from the raw records (as the ring-buffer reader does), the wire bytes have just arrived. Best of
several runs of:

  encode: ours (BatchEncoder.encode) against the library doing the same work from the same raw
          structs: unpack them with `struct`, build the messages, SerializeToString;
  decode: ours (DecodedBatch.parse + checksum(), which reads every number and string length of
          every record in C) against the library's ParseFromString + reading the same fields in
          Python, and against a pure-Python `struct` decoder of the raw kernel records.

and what redaction of secrets in argv costs where it runs, as records enter the arena (ring
buffer -> arena, the raw mix), off against on, over the mix's commands (no secrets: every
argument is scanned, nothing replaced) and over the same commands with a secret each.

and what the per-cgroup budget (--cgroup-budget) costs where it runs, as records enter the arena:
the raw mix restamped as a node's stream (100 k events/s over 200 cgroups), off against on with
a budget nobody reaches, and on with one every cgroup exceeds; both as records entering the arena
alone and as the whole per-round C path (arena, semantic processor, encoder).
"""
import argparse
import random
import struct
import time

import google.protobuf
from google.protobuf.internal import api_implementation

from _common import best_rate, machine, print_table, write_json
from tapio._fast import codec
from tapio._fast.arena import EventArena
from tapio._fast.codec import BatchEncoder, DecodedBatch, encode_field
from tapio._fast.redaction import Redactor
from tapio._fast.throttling import Throttle
from tapio.collector.processor import DualPathProcessor, ProcessorConfig
from tapio.v1 import events_pb2, stream_pb2

BATCH = 512
B2W = 1_764_000_000_000_000_000
EXEC, EXIT, TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE, OOM_KILL, SIGNAL = range(1, 8)
TYPE_NAMES = {EXEC: "exec", EXIT: "exit", TCP_CONNECT: "tcp_connect", TCP_ACCEPT: "tcp_accept",
              TCP_CLOSE: "tcp_close", OOM_KILL: "oom_kill", SIGNAL: "signal"}
MIX = [(EXEC, 20), (EXIT, 20), (TCP_CONNECT, 20), (TCP_ACCEPT, 5), (TCP_CLOSE, 20), (SIGNAL, 10),
       (OOM_KILL, 5)]  # percent

# the kernel layout (bpf/tapio_events.h)
HEADER = struct.Struct("<QQIIIIII16s")
BODY = {
    EXEC: struct.Struct("<IIII256s256s"),
    EXIT: struct.Struct("<iIIIQQ"),
    TCP_CONNECT: struct.Struct("<16s16sHHHHiIQQQ"),
    OOM_KILL: struct.Struct("<II16sQQQQQ64s"),
    SIGNAL: struct.Struct("<IiII16s"),
}
BODY[TCP_ACCEPT] = BODY[TCP_CLOSE] = BODY[TCP_CONNECT]
PAGE = 4096

COMMANDS = [
    ("/usr/bin/curl", ["curl", "-sS", "-o", "/dev/null", "https://api.internal.svc:8443/healthz"]),
    ("/bin/sh", ["sh", "-c", "exec /usr/local/bin/entrypoint.sh --config /etc/app/config.yaml"]),
    ("/usr/bin/python3.11", ["python3", "-m", "gunicorn", "app.wsgi:application", "-w", "4"]),
    ("/usr/local/bin/node", ["node", "/srv/app/dist/server.js"]),
    ("/usr/bin/git", ["git", "rev-parse", "--short", "HEAD"]),
    ("/usr/sbin/nginx", ["nginx", "-g", "daemon off;"]),
    ("/usr/bin/ls", ["ls", "-la", "/var/log/pods"]),
    ("/usr/bin/kubectl", ["kubectl", "get", "pods", "-n", "kube-system", "-o", "wide"]),
]


def pick_type(rnd):
    x = rnd.randrange(100)
    for t, pct in MIX:
        if x < pct:
            return t
        x -= pct
    raise AssertionError("MIX adds up to 100")


def kernel_record(rnd):
    t = pick_type(rnd)
    pid = rnd.randint(300, 4_000_000)
    filename, argv = rnd.choice(COMMANDS)
    comm = filename.rsplit("/", 1)[1][:15].encode()
    head = HEADER.pack(rnd.getrandbits(50), rnd.randint(3000, 9000), t, pid, pid, rnd.randint(1, 5000),
                       rnd.choice([0, 0, 1000, 65534]), rnd.choice([0, 1000]), comm)
    if t == EXEC:
        args = b"".join(a.encode() + b"\0" for a in argv)
        body = BODY[t].pack(len(argv), len(args), 0, 0, filename.encode(), args)
    elif t == EXIT:
        body = BODY[t].pack(rnd.choice([0, 0, 1, 2, 137]), rnd.choice([0, 0, 0, 9, 11, 15]), 0, 0,
                            rnd.getrandbits(48), rnd.getrandbits(36))
    elif t in (TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE):
        v6 = rnd.random() < 0.2
        addr = (lambda: rnd.randbytes(16)) if v6 else (lambda: rnd.randbytes(4) + bytes(12))
        error = rnd.choice([0] * 8 + [111, 110]) if t == TCP_CONNECT else 0
        sent = rnd.getrandbits(24) if t == TCP_CLOSE else 0
        body = BODY[t].pack(addr(), addr(), rnd.randint(32768, 60999), rnd.choice([80, 443, 5432, 6379]),
                            10 if v6 else 2, 2 if t == TCP_ACCEPT else 1, error, 0, rnd.getrandbits(30),
                            sent, sent // 3)
    elif t == OOM_KILL:
        body = BODY[t].pack(pid, 0, b"java", rnd.randint(3000, 9000), 131072, 131072,
                            rnd.getrandbits(20), rnd.getrandbits(18), b"pod-7d9f8b6c5-x2x4z")
    else:
        body = BODY[t].pack(rnd.choice([6, 9, 11, 15]), rnd.choice([0, 1, -6]), pid, 0, comm)
    return head + body


def enrichment(rnd):
    contexts = [events_pb2.Context(
        container_id=rnd.randbytes(32).hex(), container_runtime="containerd",
        pod_uid=f"7c1e{i:04d}-8a6b-4d3c-9e2f-0123456789ab", pod_name=f"web-7d9f8b6c5-{i:05d}",
        namespace="production", node_name="node-a", qos_class="Burstable", container_name="web",
        image="registry.example.com/web:1.42.0",
        labels=[events_pb2.Label(key="app", value="web"), events_pb2.Label(key="tier", value="frontend")],
        cgroup_path=f"/kubepods.slice/kubepods-burstable.slice/pod{i}.slice") for i in range(8)]
    processes = [events_pb2.Process(
        executable="/usr/bin/python3.11", command_line="python3 -m gunicorn app.wsgi:application",
        user="app", ancestors=[rnd.randint(2, 4_000_000) for _ in range(rnd.randint(1, 5))],
        start_time_ns=B2W + rnd.getrandbits(40)) for _ in range(64)]
    return contexts, processes


def build(n, enriched, seed=1234):
    """Batches of raw kernel records, with per event its (context, process) or None, and the
    pre-encoded context/process fields by message."""
    rnd = random.Random(seed)
    contexts, processes = enrichment(rnd)
    blobs = {id(m): encode_field(12 if isinstance(m, events_pb2.Context) else 13, m.SerializeToString())
             for m in contexts + processes}
    batches = []
    for start in range(0, n, BATCH):
        raws = [kernel_record(rnd) for _ in range(min(BATCH, n - start))]
        extras = [(rnd.choice(contexts), rnd.choice(processes)) if rnd.random() < enriched else None
                  for _ in raws]
        batches.append((raws, extras))
    return batches, blobs


def fill(arena, raws, extras, blobs):
    """What the collector does before it encodes: ring buffer -> arena, enrichment -> blobs."""
    arena.clear()
    for slot, raw in enumerate(raws):
        arena.push_bytes(raw)
        if extras[slot]:
            codec._annotate_slot(arena, slot, 1, blobs[id(extras[slot][0])], blobs[id(extras[slot][1])])
    return arena


# ---- the library, doing what the codec does ----

def cstr(b):
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def library_encode(raws, extras, batch_id, first_seq):
    batch = stream_pb2.EventBatch(batch_id=batch_id, collector_id="bench", node_name="node-a",
                                  created_at_ns=time.time_ns(), path=2)
    for k, raw in enumerate(raws):
        ts, cg, t, pid, tid, ppid, uid, gid, comm = HEADER.unpack_from(raw)
        e = batch.events.add(id=f"ebpf-{first_seq + k}", type=t, timestamp_ns=ts + B2W, pid=pid,
                             tid=tid, ppid=ppid, uid=uid, gid=gid, cgroup_id=cg, comm=cstr(comm))
        if extras[k]:
            e.context.CopyFrom(extras[k][0])
            e.process.CopyFrom(extras[k][1])
        f = BODY[t].unpack_from(raw, HEADER.size)
        if t == EXEC:
            args = f[5][:min(f[1], 256)].split(b"\0")
            if args[-1] == b"":
                args.pop()
            e.exec.filename = cstr(f[4])
            e.exec.args.extend(a.decode("utf-8", "replace") for a in args)
            e.exec.args_count = f[0]
            e.exec.args_truncated = bool(f[2] & 1)
        elif t == EXIT:
            e.exit.SetInParent()
            e.exit.exit_code, e.exit.signal, e.exit.core_dumped = f[0], f[1], bool(f[2])
            e.exit.start_time_ns, e.exit.duration_ns = f[4] + B2W, f[5]
        elif t == OOM_KILL:
            o = e.oom_kill
            o.trigger_pid, o.trigger_comm, o.memcg_id, o.memcg_name = f[0], cstr(f[2]), f[3], cstr(f[8])
            o.memcg_limit_bytes, o.memcg_usage_bytes = f[4] * PAGE, f[5] * PAGE
            o.total_vm_bytes, o.rss_bytes = f[6] * PAGE, f[7] * PAGE
        elif t == SIGNAL:
            s = e.signal
            s.signal, s.code, s.sender_pid, s.sender_comm = f[0], f[1], f[2], cstr(f[4])
        else:
            d = getattr(e, ("tcp_connect", "tcp_accept", "tcp_close")[t - TCP_CONNECT])
            n = 4 if f[4] == 2 else 16
            d.family, d.saddr, d.daddr, d.sport, d.dport = (4 if n == 4 else 6), f[0][:n], f[1][:n], f[2], f[3]
            if t == TCP_CONNECT and f[6]:
                d.result = {111: 1, 110: 2, 104: 3, 113: 4, 101: 4}.get(f[6], 5)
            d.error, d.duration_ns, d.bytes_sent, d.bytes_received = f[6], f[8], f[9], f[10]
            d.passive = f[5] == 2
    return stream_pb2.TapioStreamEventsRequest(batch=batch).SerializeToString()


def library_decode(data):
    """ParseFromString, then read what DecodedBatch.checksum() reads."""
    s = 0
    for e in stream_pb2.TapioStreamEventsRequest.FromString(data).batch.events:
        s += (e.timestamp_ns + e.cgroup_id + len(e.id) + len(e.comm) + e.type + e.pid + e.tid
              + e.ppid + e.uid + e.gid + e.count)
        which = e.WhichOneof("details")
        if which == "exec":
            d = e.exec
            s += len(d.filename) + len(d.args) + d.args_count + d.args_truncated
        elif which == "exit":
            d = e.exit
            s += d.exit_code + d.signal + d.core_dumped + d.start_time_ns + d.duration_ns
        elif which == "oom_kill":
            d = e.oom_kill
            s += (d.trigger_pid + len(d.trigger_comm) + d.memcg_id + len(d.memcg_name)
                  + d.memcg_limit_bytes + d.memcg_usage_bytes + d.total_vm_bytes + d.rss_bytes)
        elif which == "signal":
            d = e.signal
            s += d.signal + d.code + d.sender_pid + len(d.sender_comm)
        elif which:
            d = getattr(e, which)
            s += (d.family + len(d.saddr) + len(d.daddr) + d.sport + d.dport + d.result + d.error
                  + d.duration_ns + d.bytes_sent + d.bytes_received + d.passive)
        if e.HasField("context"):
            c = e.context
            s += (len(c.container_id) + len(c.container_runtime) + len(c.pod_uid) + len(c.pod_name)
                  + len(c.namespace) + len(c.node_name) + len(c.systemd_unit) + len(c.qos_class)
                  + len(c.container_name) + len(c.image) + len(c.cgroup_path) + len(c.labels))
        if e.HasField("process"):
            p = e.process
            s += (len(p.executable) + len(p.command_line) + len(p.user) + p.start_time_ns
                  + len(p.ancestors) + sum(p.ancestors[:16]))
    return s


def struct_decode(raws):
    """The kernel records themselves, decoded and read in Python: what our C decode replaces."""
    s = 0
    for raw in raws:
        ts, cg, t, pid, tid, ppid, uid, gid, comm = HEADER.unpack_from(raw)
        s += ts + cg + t + pid + tid + ppid + uid + gid + len(cstr(comm))
        f = BODY[t].unpack_from(raw, HEADER.size)
        for v in f:
            s += len(cstr(v)) if isinstance(v, bytes) else v
    return s


def timed(count, prepare, op):
    """Seconds op() takes over batches 0..count-1, each right after its untimed prepare()."""
    total = 0.0
    for i in range(count):
        x = prepare(i)
        start = time.perf_counter()
        op(x)
        total += time.perf_counter() - start
    return total


def measure_mix(mix, batches, blobs, seconds):
    n = sum(len(raws) for raws, _ in batches)
    arena = EventArena(BATCH)
    encoder = BatchEncoder("bench", "node-a", B2W)
    wire = [encoder.encode(fill(arena, raws, extras, blobs), i + 1, 1)
            for i, (raws, extras) in enumerate(batches)]

    def received(i):  # a fresh copy, as off the network
        return bytes(bytearray(wire[i]))

    plan = [
        ("encode", "tapio codec (Cython)", lambda i: fill(arena, *batches[i], blobs),
         lambda a: encoder.encode(a, 1, 1)),
        ("encode", "protobuf library", lambda i: batches[i], lambda b: library_encode(*b, 1, 1)),
        ("decode", "tapio codec (Cython)", received, lambda d: DecodedBatch.parse(d).checksum()),
        ("decode", "protobuf library", received, library_decode),
        ("decode", "python struct (kernel records)", lambda i: batches[i][0], struct_decode),
    ]
    results = []
    for op, impl, prepare, fn in plan:
        rate, runs = best_rate(lambda: timed(len(batches), prepare, fn), n, seconds)
        results.append({"operation": op, "mix": mix, "implementation": impl,
                        "events_per_s": round(rate), "runs": runs})
    library = {r["operation"]: r["events_per_s"] for r in results if r["implementation"] == "protobuf library"}
    for r in results:
        r["vs_library"] = round(r["events_per_s"] / library[r["operation"]], 2)
    return results, sum(map(len, wire)) / n


SECRET_ARGS = [["--password=hunter2"], ["--token", "ghp_0123456789abcdef"],
               ["https://admin:pw@registry.internal/v2/"], ["-H", "Authorization: Bearer eyJhbGciOi"]]


def with_secret(raw, rnd):
    """An exec record whose argv ends in a secret (other records as they are)."""
    if struct.unpack_from("<I", raw, 16)[0] != EXEC:
        return raw
    argc, size, flags, pad, filename, args = BODY[EXEC].unpack_from(raw, HEADER.size)
    extra = rnd.choice(SECRET_ARGS)
    args = (args[:size] + b"".join(a.encode() + b"\0" for a in extra))[:256]
    return raw[:HEADER.size] + BODY[EXEC].pack(argc + len(extra), len(args), flags, pad, filename, args)


def measure_redaction(batches, seconds):
    rnd = random.Random(99)
    plain = [raws for raws, _ in batches]
    secret = [[with_secret(r, rnd) for r in raws] for raws in plain]
    n = sum(map(len, plain))
    results = []
    for argv, record_batches in (("no secrets", plain), ("a secret each", secret)):
        for state, redactor in (("off", None), ("on", Redactor())):
            arena = EventArena(BATCH)
            arena.set_redactor(redactor)

            def fill_all():
                start = time.perf_counter()
                for raws in record_batches:
                    arena.clear()
                    for raw in raws:
                        arena.push_bytes(raw)
                return time.perf_counter() - start
            rate, runs = best_rate(fill_all, n, seconds)
            results.append({"operation": "ring buffer -> arena", "argv": argv, "redaction": state,
                            "events_per_s": round(rate), "runs": runs})
    for r in results:
        off = next(x for x in results if x["argv"] == r["argv"] and x["redaction"] == "off")
        execs = sum(1 for raws in plain for raw in raws if struct.unpack_from("<I", raw, 16)[0] == EXEC)
        # the extra time per exec event (the only kind redaction looks at)
        r["ns_per_exec_event"] = round((n / r["events_per_s"] - n / off["events_per_s"]) / execs * 1e9)
    return results


def restamped(batches, cgroups=200, rate=100_000):
    """The records as a node's stream: stamps `1/rate` apart, cgroup ids from a fixed set."""
    rnd = random.Random(7)
    out, ts = [], 10**12
    for raws, _ in batches:
        batch = []
        for raw in raws:
            ts += 10**9 // rate
            batch.append(struct.pack("<QQ", ts, 5000 + rnd.randrange(cgroups)) + raw[16:])
        out.append(batch)
    return out


def measure_throttle(batches, seconds):
    stream = restamped(batches)
    n = sum(map(len, stream))
    budgets = (("off", None), ("on, never reached", (1_000_000, 1_000_000)),
               ("on, every cgroup over", (10, 10)))
    results = []
    for stage in ("ring buffer -> arena", "ring buffer -> arena -> processor -> encode"):
        for state, budget in budgets:
            arena = EventArena(BATCH)
            encoder = BatchEncoder("bench", "node-a", B2W)
            processor = DualPathProcessor(ProcessorConfig())
            whole = stage.endswith("encode")

            def fill_all():
                # a fresh table each run: the same verdicts every time
                if budget is not None:
                    Throttle(budget[0], 10**9, budget[1]).attach(arena)
                start = time.perf_counter()
                for raws in stream:
                    arena.clear()
                    for raw in raws:
                        arena.push_bytes(raw)
                    if whole:
                        for plan in processor.plans(arena):
                            encoder.encode(arena, 1, 1, path=plan.path, order=plan.order)
                return time.perf_counter() - start
            rate, runs = best_rate(fill_all, n, seconds)
            results.append({"operation": stage, "budget": state, "events_per_s": round(rate),
                            "runs": runs})
    for r in results:
        off = next(x for x in results if x["operation"] == r["operation"] and x["budget"] == "off")
        r["ns_per_event"] = round((1 / r["events_per_s"] - 1 / off["events_per_s"]) * 1e9, 1)
    return results


def run(n, seconds):
    measurements, wire_bytes, ratios = [], {}, {}
    for mix, enriched in (("raw", 0.0), ("semantic", 0.5)):
        batches, blobs = build(n, enriched)
        results, wire_bytes[mix] = measure_mix(mix, batches, blobs, seconds)
        measurements += results
        for r in results:
            if r["implementation"].startswith("tapio"):
                ratios[f"{r['operation']}/{mix}"] = r["vs_library"]
        if mix == "raw":
            redaction = measure_redaction(batches, seconds)
            throttle = measure_throttle(batches, seconds)
    return {
        "benchmark": "codec",
        "events": n, "batch_size": BATCH, "mix_percent": {TYPE_NAMES[t]: p for t, p in MIX},
        "semantic_enriched_fraction": 0.5,
        "wire_bytes_per_event": {k: round(v, 1) for k, v in wire_bytes.items()},
        "seconds_per_measurement": seconds,
        "machine": machine(),
        "protobuf": {"version": google.protobuf.__version__, "backend": api_implementation.Type()},
        "measurements": measurements,
        "ratios_vs_library": ratios,
        "redaction": redaction,
        "cgroup_budget": throttle,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    ap.add_argument("--events", type=int, default=BATCH * 40, help="events in the mix (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement (default %(default)s)")
    args = ap.parse_args()
    if args.events < 1 or args.seconds <= 0:
        ap.error("--events and --seconds must be positive")
    report = run(args.events, args.seconds)
    wire = ", ".join(f"{mix} {b} B" for mix, b in report["wire_bytes_per_event"].items())
    print(f"codec: {report['events']} events per mix in batches of {BATCH} (wire bytes/event: {wire}); "
          f"protobuf {report['protobuf']['version']} ({report['protobuf']['backend']}); "
          f"{report['machine']['cpu_count']} CPUs")
    print_table(["operation", "mix", "implementation", "events/s", "vs library"],
                [(r["operation"], r["mix"], r["implementation"], f"{r['events_per_s']:,}",
                  f"{r['vs_library']}x") for r in report["measurements"]])
    print_table(["operation", "argv", "redaction", "events/s", "ns per exec event"],
                [(r["operation"], r["argv"], r["redaction"], f"{r['events_per_s']:,}",
                  r["ns_per_exec_event"]) for r in report["redaction"]])
    print_table(["operation", "cgroup budget", "events/s", "ns per event vs off"],
                [(r["operation"], r["budget"], f"{r['events_per_s']:,}", r["ns_per_event"])
                 for r in report["cgroup_budget"]])
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
