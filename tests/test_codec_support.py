"""What the codec tests share: kernel records built in Python, hypothesis strategies, and the
reference mappings (kernel record -> expected protobuf message -> expected JSON dict) written
from the contract, independently of the codec. The tests at the bottom check the helpers."""
import ctypes
import datetime
import ipaddress
import os
import random
import signal
import struct

from hypothesis import strategies as st

from tapio._fast import arena as arena_mod
from tapio._fast import codec
from tapio._fast.arena import EventArena
from tapio.v1 import events_pb2, stream_pb2

U8, U16, U32, U64, S32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

EXEC, EXIT, TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE, OOM_KILL, SIGNAL, THROTTLED = range(1, 9)
TYPE_NAMES = {0: "unspecified", 1: "exec", 2: "exit", 3: "tcp_connect", 4: "tcp_accept",
              5: "tcp_close", 6: "oom_kill", 7: "signal", 8: "throttled"}
DETAILS_FIELD = {t: name for t, name in TYPE_NAMES.items() if t}  # the oneof member of each type
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
U64_MAX = 2**64 - 1


# ---- the kernel layout (bpf/tapio_events.h), mirrored with ctypes ----

class Header(ctypes.Structure):
    _fields_ = [("timestamp_ns", U64), ("cgroup_id", U64), ("type", U32), ("pid", U32),
                ("tid", U32), ("ppid", U32), ("uid", U32), ("gid", U32), ("comm", U8 * 16)]


class Exec(ctypes.Structure):
    _fields_ = [("hdr", Header), ("args_count", U32), ("args_size", U32), ("flags", U32),
                ("_pad", U32), ("filename", U8 * 256), ("args", U8 * 256)]


class Exit(ctypes.Structure):
    _fields_ = [("hdr", Header), ("exit_code", S32), ("signal", U32), ("core_dumped", U32),
                ("_pad", U32), ("start_ns", U64), ("duration_ns", U64)]


class Tcp(ctypes.Structure):
    _fields_ = [("hdr", Header), ("saddr", U8 * 16), ("daddr", U8 * 16), ("sport", U16),
                ("dport", U16), ("family", U16), ("direction", U16), ("error", S32), ("_pad", U32),
                ("duration_ns", U64), ("bytes_sent", U64), ("bytes_received", U64)]


class Oom(ctypes.Structure):
    _fields_ = [("hdr", Header), ("trigger_pid", U32), ("_pad", U32), ("trigger_comm", U8 * 16),
                ("memcg_id", U64), ("memcg_limit_pages", U64), ("memcg_usage_pages", U64),
                ("total_vm_pages", U64), ("rss_pages", U64), ("memcg_name", U8 * 64)]


class Signal(ctypes.Structure):
    _fields_ = [("hdr", Header), ("signal", U32), ("code", S32), ("sender_pid", U32),
                ("_pad", U32), ("sender_comm", U8 * 16)]


class Throttled(ctypes.Structure):
    _fields_ = [("hdr", Header), ("first_ns", U64), ("last_ns", U64), ("exec", U64),
                ("tcp_connect", U64), ("tcp_accept", U64), ("tcp_close", U64),
                ("interval_ns", U64), ("budget", U32), ("burst", U32)]


STRUCTS = {EXEC: Exec, EXIT: Exit, TCP_CONNECT: Tcp, TCP_ACCEPT: Tcp, TCP_CLOSE: Tcp,
           OOM_KILL: Oom, SIGNAL: Signal, THROTTLED: Throttled}
THROTTLED_COUNTS = ("exec", "tcp_connect", "tcp_accept", "tcp_close")
BYTE_ARRAYS = {"comm", "filename", "args", "saddr", "daddr", "trigger_comm", "memcg_name",
               "sender_comm"}


def pack(fields):
    """A kernel record from a dict: header fields, the type's fields; byte arrays as bytes."""
    rec = STRUCTS[fields["type"]]()
    for name, value in fields.items():
        target = rec.hdr if hasattr(Header, name) else rec
        if name in BYTE_ARRAYS:
            array = getattr(target, name)
            assert len(value) <= len(array), name
            ctypes.memmove(array, value, len(value))
        else:
            setattr(target, name, value)
    return bytes(rec)


def arena_of(records, capacity=None):
    a = EventArena(capacity or max(1, len(records)))
    for r in records:
        assert a.push_bytes(pack(r))
    return a


# ---- reference mappings: kernel record -> expected Event ----

def scrub(data):
    """Each byte outside a valid UTF-8 sequence becomes '?', scanning left to right."""
    out = bytearray()
    i = 0
    while i < len(data):
        for n in (1, 2, 3, 4):  # a valid sequence decodes, whole, to exactly one character
            chunk = data[i:i + n]
            try:
                if len(chunk) == n and len(chunk.decode("utf-8")) == 1:
                    break
            except UnicodeDecodeError:
                pass
        else:
            out += b"?"
            i += 1
            continue
        out += chunk
        i += n
    return out.decode("utf-8")


def cstr(data):
    return data.split(b"\0", 1)[0]


def split_args(data):
    parts = data.split(b"\0")
    if parts[-1] == b"":  # a final NUL ends the last argument (and no bytes, no arguments)
        parts.pop()
    return parts


CONNECT_ERRNO = {0: 0, 111: 1, 110: 2, 104: 3, 113: 4, 101: 4}


COLLAPSED_FIELDS = [f.name for f in events_pb2.Collapsed.DESCRIPTOR.fields]
LEDGER_FIELDS = [f.name for f in stream_pb2.Ledger.DESCRIPTOR.fields]


def expected_event(fields, seq, boot_to_wall, repeat=1, context=None, process=None, totals=None):
    """The Event the contract says a kernel record becomes; with repeat > 1, `totals` are what
    the arena slot sums up (tapio.v1.Collapsed field order, stamps in the kernel's clock)."""
    def g(name, default=0):  # what the record holds: unset fields are zero
        return fields.get(name, default)

    t = fields["type"]
    e = events_pb2.Event(
        id=f"ebpf-{seq}", type=t, timestamp_ns=(g("timestamp_ns") + boot_to_wall) % 2**64,
        pid=g("pid"), tid=g("tid"), ppid=g("ppid"), uid=g("uid"), gid=g("gid"),
        cgroup_id=g("cgroup_id"), comm=scrub(cstr(g("comm", b""))))
    if repeat > 1:
        e.count = repeat
    if context is not None:
        e.context.SetInParent()
        e.context.MergeFrom(context)
    if process is not None:
        e.process.SetInParent()
        e.process.MergeFrom(process)
    if repeat > 1:
        values = dict(zip(COLLAPSED_FIELDS, totals))
        for stamp in ("first_timestamp_ns", "last_timestamp_ns"):
            values[stamp] = (values[stamp] + boot_to_wall) % 2**64
        e.collapsed.SetInParent()
        e.collapsed.MergeFrom(events_pb2.Collapsed(**values))
    d = getattr(e, DETAILS_FIELD[t])
    d.SetInParent()
    if t == EXEC:
        d.filename = scrub(cstr(g("filename", b"")))
        args = g("args", b"").ljust(256, b"\0")[:min(g("args_size"), 256)]  # the buffer is zeroed
        d.args.extend(scrub(a) for a in split_args(args))
        d.args_count = g("args_count")
        d.args_truncated = bool(g("flags") & 1)
        d.args_redacted = bool(g("flags") & 2)
    elif t == EXIT:
        d.exit_code = g("exit_code")
        d.signal = g("signal")
        d.core_dumped = g("core_dumped") != 0
        d.start_time_ns = (g("start_ns") + boot_to_wall) % 2**64
        d.duration_ns = g("duration_ns")
    elif t in (TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE):
        family = {2: 4, 10: 6}.get(g("family"), 0)
        n = {4: 4, 6: 16}.get(family, 0)
        d.family = family
        d.saddr = g("saddr", b"").ljust(16, b"\0")[:n]
        d.daddr = g("daddr", b"").ljust(16, b"\0")[:n]
        d.sport, d.dport = g("sport"), g("dport")
        if t == TCP_CONNECT:
            d.result = CONNECT_ERRNO.get(g("error"), 5)
        d.error = g("error")
        d.duration_ns, d.bytes_sent, d.bytes_received = (
            g("duration_ns"), g("bytes_sent"), g("bytes_received"))
        d.passive = g("direction") == 2
    elif t == OOM_KILL:
        def to_bytes(pages):  # saturates
            return min(pages * PAGE_SIZE, U64_MAX)

        d.trigger_pid = g("trigger_pid")
        d.trigger_comm = scrub(cstr(g("trigger_comm", b"")))
        d.memcg_id = g("memcg_id")
        d.memcg_name = scrub(cstr(g("memcg_name", b"")))
        d.memcg_limit_bytes = to_bytes(g("memcg_limit_pages"))
        d.memcg_usage_bytes = to_bytes(g("memcg_usage_pages"))
        d.total_vm_bytes = to_bytes(g("total_vm_pages"))
        d.rss_bytes = to_bytes(g("rss_pages"))
    elif t == THROTTLED:
        d.first_timestamp_ns = (g("first_ns") + boot_to_wall) % 2**64
        d.last_timestamp_ns = (g("last_ns") + boot_to_wall) % 2**64
        for name in THROTTLED_COUNTS:
            setattr(d, name, g(name))
        d.budget, d.burst, d.interval_ns = g("budget"), g("burst"), g("interval_ns")
    else:
        d.signal, d.code, d.sender_pid = g("signal"), g("code"), g("sender_pid")
        d.sender_comm = scrub(cstr(g("sender_comm", b"")))
    return e


# ---- reference mapping: Event -> the JSON dict ----

def _enum(names, n):
    return names.get(n, f"unknown_{n}")


def _time(ns):
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=ns // 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _addr(raw):
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    return raw.hex()


def _signal_name(n):
    return signal.Signals(n).name if n in signal.Signals._value2member_map_ else None


def expected_dict(e, node="", collector="", batch_id=0):
    out = {"id": e.id, "type": _enum(TYPE_NAMES, e.type), "timestamp_ns": e.timestamp_ns,
           "time": _time(e.timestamp_ns), "pid": e.pid, "tid": e.tid, "ppid": e.ppid,
           "uid": e.uid, "gid": e.gid, "cgroup_id": e.cgroup_id, "comm": e.comm}
    if e.count > 1:
        out["count"] = e.count
    if node:
        out["node"] = node
    if collector:
        out["collector"] = collector
    if batch_id:
        out["batch"] = batch_id
    if e.HasField("context"):
        c = out["context"] = {}
        for f in events_pb2.Context.DESCRIPTOR.fields:
            value = getattr(e.context, f.name)
            if f.name == "labels":
                if value:
                    c["labels"] = {label.key: label.value for label in value}
            elif value:
                c[f.name] = value
    if e.HasField("process"):
        p = e.process
        out["process"] = {"executable": p.executable, "command_line": p.command_line,
                          "user": p.user, "ancestors": list(p.ancestors)[:16],
                          "start_time_ns": p.start_time_ns}
    if e.HasField("collapsed"):
        out["collapsed"] = {name: getattr(e.collapsed, name) for name in COLLAPSED_FIELDS}
    which = e.WhichOneof("details")
    if which:
        d = getattr(e, which)
        if which == "exec":
            v = {"filename": d.filename, "args": list(d.args), "args_count": d.args_count,
                 "args_truncated": d.args_truncated}
            if d.args_redacted:
                v["args_redacted"] = True
        elif which == "exit":
            v = {"exit_code": d.exit_code, "signal": d.signal, "signal_name": _signal_name(d.signal),
                 "core_dumped": d.core_dumped, "start_time_ns": d.start_time_ns,
                 "duration_ns": d.duration_ns}
        elif which in ("oom_kill", "throttled"):
            v = {f.name: getattr(d, f.name) for f in d.DESCRIPTOR.fields}
        elif which == "signal":
            v = {"signal": d.signal, "signal_name": _signal_name(d.signal), "code": d.code,
                 "sender_pid": d.sender_pid, "sender_comm": d.sender_comm}
        else:
            v = {"family": _enum({0: "unspecified", 4: "ipv4", 6: "ipv6"}, d.family),
                 "saddr": _addr(d.saddr), "sport": d.sport, "daddr": _addr(d.daddr),
                 "dport": d.dport}
            if which == "tcp_connect":
                v["result"] = _enum({0: "ok", 1: "refused", 2: "timed_out", 3: "reset",
                                     4: "unreachable", 5: "other"}, d.result)
            v.update(error=d.error, duration_ns=d.duration_ns, bytes_sent=d.bytes_sent,
                     bytes_received=d.bytes_received, passive=d.passive)
        out[which] = v
    return out


# ---- strategies ----

u16 = st.integers(0, 2**16 - 1)
u32 = st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1))
u64 = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1))
s32 = st.one_of(st.integers(-3, 3), st.integers(-2**31, 2**31 - 1))
# byte sequences that UTF-8 validators get wrong: overlongs, surrogates, past U+10FFFF, cut-offs
TRICKY = [b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\x9f\xbf",
          b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf5\x80\x80\x80",
          b"\xe2\x82", b"\xf0\x9f\x98", b"\x80", b"\xbf", b"\xff", b"\xc3\xa9", b"\xe2\x82\xac",
          b"\xf0\x9f\x98\x80", "é/日本".encode()]


def kernel_bytes(max_size, nul=True):
    """Kernel string bytes: ASCII, valid and invalid UTF-8; with nul=False, no NUL bytes."""
    alphabet = st.binary(max_size=8) if nul else st.binary(max_size=8).map(lambda b: b.replace(b"\0", b""))
    pieces = st.one_of(st.sampled_from(TRICKY), st.text("abc/.-_ ", max_size=8).map(str.encode), alphabet)
    return st.lists(pieces, max_size=12).map(lambda ps: b"".join(ps)[:max_size])


argv = st.lists(kernel_bytes(40, nul=False), max_size=10)


@st.composite
def exec_args(draw):
    """args[] and args_size as the kernel fills them: NUL-terminated arguments, maybe cut off, or
    anything at all (args_size may even claim more than the 256 bytes)."""
    if draw(st.booleans()):
        data = b"".join(a + b"\0" for a in draw(argv))
        truncated = len(data) > 256 or draw(st.booleans())
        data = data[:256]
        if truncated and data:
            data = data[:draw(st.integers(1, len(data)))]
        return data, len(data), 1 if truncated else 0
    data = draw(st.binary(max_size=256))
    return data, draw(st.sampled_from([len(data), 256, 300, 0])), draw(st.integers(0, 3))


@st.composite
def kernel_events(draw, types=tuple(DETAILS_FIELD)):
    t = draw(st.sampled_from(types))
    f = {"type": t, "timestamp_ns": draw(u64), "cgroup_id": draw(u64), "pid": draw(u32),
         "tid": draw(u32), "ppid": draw(u32), "uid": draw(u32), "gid": draw(u32),
         "comm": draw(kernel_bytes(16))}
    if t == EXEC:
        f["args"], f["args_size"], f["flags"] = draw(exec_args())
        f.update(filename=draw(kernel_bytes(256)), args_count=draw(u32))
    elif t == EXIT:
        f.update(exit_code=draw(s32), signal=draw(st.one_of(st.integers(0, 70), u32)),
                 core_dumped=draw(st.sampled_from([0, 1, 7])), start_ns=draw(u64),
                 duration_ns=draw(u64))
    elif t in (TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE):
        f.update(saddr=draw(st.binary(min_size=16, max_size=16)),
                 daddr=draw(st.binary(min_size=16, max_size=16)), sport=draw(u16),
                 dport=draw(u16), family=draw(st.sampled_from([2, 10, 2, 10, 0, 1])),
                 direction=draw(st.sampled_from([0, 1, 2])),
                 error=draw(st.one_of(st.sampled_from([0, 111, 110, 104, 113, 101, 103]), s32)),
                 duration_ns=draw(u64), bytes_sent=draw(u64), bytes_received=draw(u64))
    elif t == OOM_KILL:
        f.update(trigger_pid=draw(u32), trigger_comm=draw(kernel_bytes(16)), memcg_id=draw(u64),
                 memcg_name=draw(kernel_bytes(64)), memcg_limit_pages=draw(u64),
                 memcg_usage_pages=draw(u64), total_vm_pages=draw(u64), rss_pages=draw(u64))
    elif t == THROTTLED:
        f.update(first_ns=draw(u64), last_ns=draw(u64), interval_ns=draw(u64), budget=draw(u32),
                 burst=draw(u32), **{name: draw(u64) for name in THROTTLED_COUNTS})
    else:
        f.update(signal=draw(st.one_of(st.integers(0, 70), u32)), code=draw(s32),
                 sender_pid=draw(u32), sender_comm=draw(kernel_bytes(16)))
    return f


text = st.text(max_size=12)


@st.composite
def contexts(draw):
    """A Context with some fields set (labels included), as enrichment builds them."""
    c = events_pb2.Context()
    for f in c.DESCRIPTOR.fields:
        if f.name != "labels" and draw(st.booleans()):
            setattr(c, f.name, draw(text))
    for key, value in draw(st.lists(st.tuples(st.text(max_size=6), text), max_size=4)):
        c.labels.add(key=key, value=value)
    return c


@st.composite
def processes(draw):
    return events_pb2.Process(
        executable=draw(text), command_line=draw(st.text(max_size=40)), user=draw(text),
        ancestors=draw(st.lists(u32, max_size=20)), start_time_ns=draw(u64))


# ---- library messages of every kind, for the decoder ----

# 4 and 16 bytes are addresses; other lengths are not, but the library carries them
addresses = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16),
                      st.binary(max_size=17))
enum_value = st.one_of(st.integers(0, 8), st.integers(0, 2**31 - 1), st.integers(-2**31, -1))


collapsed_totals = st.tuples(u64, u64, u64, u64, u64, u64, u64, u16, u16)


@st.composite
def collapsed_messages(draw):
    """A Collapsed with any values (the library's uint32 ports take the full range)."""
    values = list(draw(collapsed_totals))
    values[7:] = draw(u32), draw(u32)
    return events_pb2.Collapsed(**dict(zip(COLLAPSED_FIELDS, values)))


ledgers = st.tuples(*[u64] * 7)


@st.composite
def library_events(draw):
    """Any Event the library can write: details of any member, whatever `type` says."""
    e = events_pb2.Event(
        id=draw(text), type=draw(enum_value), timestamp_ns=draw(u64), pid=draw(u32),
        tid=draw(u32), ppid=draw(u32), uid=draw(u32), gid=draw(u32), cgroup_id=draw(u64),
        comm=draw(text), count=draw(u32))
    if draw(st.booleans()):
        e.context.SetInParent()
        e.context.MergeFrom(draw(contexts()))
    if draw(st.booleans()):
        e.process.SetInParent()
        e.process.MergeFrom(draw(processes()))
    if draw(st.booleans()):
        e.collapsed.SetInParent()
        e.collapsed.MergeFrom(draw(collapsed_messages()))
    which = draw(st.sampled_from([None, *DETAILS_FIELD.values()]))
    if which is None:
        return e
    d = getattr(e, which)
    d.SetInParent()
    if which == "exec":
        d.filename = draw(text)
        d.args.extend(draw(st.lists(st.text(max_size=8), max_size=6)))
        d.args_count, d.args_truncated, d.args_redacted = draw(u32), draw(st.booleans()), draw(st.booleans())
    elif which == "exit":
        d.exit_code, d.signal, d.core_dumped = draw(s32), draw(st.integers(0, 70)), draw(st.booleans())
        d.start_time_ns, d.duration_ns = draw(u64), draw(u64)
    elif which == "oom_kill":
        d.trigger_pid, d.trigger_comm, d.memcg_id = draw(u32), draw(text), draw(u64)
        d.memcg_name = draw(text)
        d.memcg_limit_bytes, d.memcg_usage_bytes = draw(u64), draw(u64)
        d.total_vm_bytes, d.rss_bytes = draw(u64), draw(u64)
    elif which == "signal":
        d.signal, d.code, d.sender_pid, d.sender_comm = (
            draw(st.integers(0, 70)), draw(s32), draw(u32), draw(text))
    elif which == "throttled":
        d.first_timestamp_ns, d.last_timestamp_ns, d.interval_ns = draw(u64), draw(u64), draw(u64)
        d.budget, d.burst = draw(u32), draw(u32)
        for name in THROTTLED_COUNTS:
            setattr(d, name, draw(u64))
    else:
        d.family = draw(st.sampled_from([0, 4, 6, 5]))
        d.saddr = draw(addresses)
        d.daddr = draw(addresses)
        d.sport, d.dport, d.result, d.error = draw(u32), draw(u32), draw(enum_value), draw(s32)
        d.duration_ns, d.bytes_sent, d.bytes_received = draw(u64), draw(u64), draw(u64)
        d.passive = draw(st.booleans())
    return e


@st.composite
def library_batches(draw, max_events=8):
    batch = stream_pb2.EventBatch(
        batch_id=draw(u64), collector_id=draw(text), created_at_ns=draw(u64),
        kernel_drops=draw(u64), path=draw(st.integers(0, 3)), node_name=draw(text),
        processor_drops=draw(u64), buffer_drops=draw(u64), first_seq=draw(u64), last_seq=draw(u64),
        events=draw(st.lists(library_events(), max_size=max_events)))
    ledger = draw(st.none() | ledgers)
    if ledger is not None:
        batch.ledger.SetInParent()
        batch.ledger.MergeFrom(stream_pb2.Ledger(**dict(zip(LEDGER_FIELDS, ledger))))
    return batch


def batch_fields(batch):
    out = {name: getattr(batch, name) for name in (
        "batch_id", "collector_id", "node_name", "created_at_ns", "kernel_drops",
        "processor_drops", "buffer_drops", "path", "first_seq", "last_seq")}
    out["ledger"] = ({name: getattr(batch.ledger, name) for name in LEDGER_FIELDS}
                     if batch.HasField("ledger") else None)
    return out


# ---- a reference encoder that writes what the library accepts but never writes itself ----

def varint(v):
    v &= U64_MAX
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(number, wire_type):
    return varint(number << 3 | wire_type)


UNKNOWN_VALUES = [(0, varint(2**63 + 5)), (1, b"\x01" * 8), (2, varint(3) + b"abc"), (5, b"\x02" * 4),
                  (2, varint(0))]


def unknown_field(rnd, used_numbers):
    number = rnd.choice([n for n in (14, 15, 23, 99, 1000, 2**29 - 1) if n not in used_numbers])
    wire_type, value = rnd.choice(UNKNOWN_VALUES)
    return tag(number, wire_type) + value


def _scalar(fd, value):
    T = fd.type
    if T == fd.TYPE_FIXED64:
        return tag(fd.number, 1) + struct.pack("<Q", value)
    if T in (fd.TYPE_STRING, fd.TYPE_BYTES):
        raw = value.encode() if isinstance(value, str) else value
        return tag(fd.number, 2) + varint(len(raw)) + raw
    return tag(fd.number, 0) + varint(int(value))


def _other_value(fd, rnd):
    """A different value for a singular field, sent first and overwritten (last one wins)."""
    T = fd.type
    if T in (fd.TYPE_STRING, fd.TYPE_BYTES):
        return "overwritten" if T == fd.TYPE_STRING else b"\xff\x00"
    return rnd.choice([1, 2**32 - 1, 7]) if T != fd.TYPE_BOOL else 1


def noncanonical(msg, rnd):
    """The bytes of `msg` as another writer may send them: fields in any order, unknown fields of
    every wire type, repeated scalars unpacked or packed in pieces, singular scalars sent twice,
    submessages split in two occurrences (protobuf merges them), and a oneof member that a later
    one replaces. The library parses these bytes back into `msg` (the tests check that too)."""
    groups = []  # per field: its chunks in order; fields are interleaved at random below
    used = {fd.number for fd in msg.DESCRIPTOR.fields}
    for fd, value in msg.ListFields():
        chunks = []
        if fd.is_repeated:
            if fd.type == fd.TYPE_MESSAGE:
                chunks += [tag(fd.number, 2) + _len_prefixed(noncanonical(v, rnd)) for v in value]
            elif fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES):
                chunks += [_scalar(fd, v) for v in value]
            else:  # packable: unpacked, or packed in up to two pieces
                values = list(value)
                cut = rnd.randint(0, len(values))
                for piece in (values[:cut], values[cut:]):
                    if rnd.random() < 0.5:
                        chunks += [_scalar(fd, v) for v in piece]
                    elif piece:
                        body = b"".join(varint(v) for v in piece)
                        chunks.append(tag(fd.number, 2) + _len_prefixed(body))
        elif fd.type == fd.TYPE_MESSAGE:
            if fd.containing_oneof is not None and rnd.random() < 0.3:
                other = [f for f in fd.containing_oneof.fields if f.number != fd.number]
                replaced = rnd.choice(other)
                chunks.append(tag(replaced.number, 2) + _len_prefixed(_some_body(replaced.message_type)))
            for part in _split(value, rnd):
                chunks.append(tag(fd.number, 2) + _len_prefixed(noncanonical(part, rnd)))
        else:
            if rnd.random() < 0.3:
                chunks.append(_scalar(fd, _other_value(fd, rnd)))
            chunks.append(_scalar(fd, value))
        groups.append(chunks)
    for _ in range(rnd.choice([0, 0, 1, 2])):
        groups.append([unknown_field(rnd, used)])
    out = bytearray()
    while groups:
        g = rnd.choice(groups)
        out += g.pop(0)
        if not g:
            groups.remove(g)
    return bytes(out)


def _some_body(descriptor):
    """A message of this type with its first field set: content that must not survive."""
    fd = descriptor.fields[0]
    if fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE):
        return tag(fd.number, 2) + (b"\x01x" if fd.type != fd.TYPE_MESSAGE else b"\x00")
    if fd.type == fd.TYPE_FIXED64:
        return tag(fd.number, 1) + b"\x01" * 8
    return tag(fd.number, 0) + b"\x01"


def _len_prefixed(body):
    return varint(len(body)) + body


def _split(msg, rnd):
    """One message, or two whose merge is that message (its set fields shared out between them,
    repeated fields cut in two)."""
    if rnd.random() < 0.7:
        return [msg]
    first, second = type(msg)(), type(msg)()
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            cut = rnd.randint(0, len(value))
            getattr(first, fd.name).extend(value[:cut])
            getattr(second, fd.name).extend(value[cut:])
        else:
            target = first if rnd.random() < 0.5 else second
            if fd.type == fd.TYPE_MESSAGE:
                getattr(target, fd.name).CopyFrom(value)
            else:
                setattr(target, fd.name, value)
    return [first, second]


# ---- valid inputs for the hostile-input tests ----

def sample_requests(seed=1, count=20):
    """Canonical requests of every kind, from a fixed seed."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        out.append(_sample_batch(rnd, i))
    out.append(stream_pb2.TapioStreamEventsRequest(
        hello=stream_pb2.Hello(collector_id="c", node_name="n", event_types=[1, 3])).SerializeToString())
    out.append(stream_pb2.TapioStreamEventsRequest(
        control=stream_pb2.StreamControl(action=1, reason="slow")).SerializeToString())
    return out


def _sample_batch(rnd, i):
    events = []
    for k in range(rnd.randint(1, 5)):
        t = rnd.randint(1, 8)
        e = events_pb2.Event(id=f"ebpf-{k}", type=t, timestamp_ns=rnd.getrandbits(64),
                             pid=rnd.getrandbits(20), comm="proc", count=rnd.choice([0, 3]))
        if rnd.random() < 0.5:
            e.context.CopyFrom(events_pb2.Context(container_id="abc", pod_name="p", labels=[
                events_pb2.Label(key="app", value="web")]))
        if rnd.random() < 0.5:
            e.process.CopyFrom(events_pb2.Process(executable="/bin/x", ancestors=[1, 2, 3]))
        if e.count:
            e.collapsed.CopyFrom(events_pb2.Collapsed(first_timestamp_ns=e.timestamp_ns, bytes_sent=300,
                                                      duration_max_ns=7, sport_min=1, sport_max=2))
        d = getattr(e, DETAILS_FIELD[t])
        d.SetInParent()
        if t == EXEC:
            d.filename, d.args[:] = "/bin/ls", ["ls", "", "-l"]
        elif t in (TCP_CONNECT, TCP_ACCEPT, TCP_CLOSE):
            d.family, d.saddr, d.daddr, d.dport = 4, b"\x7f\0\0\1", b"\x0a\0\0\2", 443
        elif t == OOM_KILL:
            d.memcg_name, d.rss_bytes = "pod", 1 << 30
        elif t == THROTTLED:
            d.exec, d.budget, d.interval_ns = 5000, 100, 10**9
        else:
            d.signal = 11
        events.append(e)
    batch = stream_pb2.EventBatch(batch_id=i + 1, collector_id="c", node_name="n", events=events,
                                  created_at_ns=rnd.getrandbits(63), path=2, first_seq=10 * i + 1,
                                  last_seq=10 * i + 10)
    if rnd.random() < 0.5:
        batch.ledger.CopyFrom(stream_pb2.Ledger(seen=10 * i + 10, filtered=i, dropped_kernel=3))
    return stream_pb2.TapioStreamEventsRequest(batch=batch).SerializeToString()


# ---- tests of the helpers themselves ----

def test_struct_mirrors_match_the_compiled_layout():
    sizes = codec.struct_sizes()
    for name, mirror in [("tapio_header", Header), ("tapio_exec", Exec), ("tapio_exit", Exit),
                         ("tapio_tcp", Tcp), ("tapio_oom", Oom), ("tapio_signal", Signal),
                         ("tapio_throttled", Throttled)]:
        assert ctypes.sizeof(mirror) == sizes[name], name
    assert sizes["tapio_event"] == arena_mod.SLOT_SIZE == max(map(ctypes.sizeof, STRUCTS.values()))


def test_the_reference_covers_every_type_of_the_contract():
    """A type added to the contract needs its mirror struct, reference mapping and strategy here;
    then the codec tests show each place of the codec that still lacks it."""
    contract = {number: name[len("EVENT_TYPE_"):].lower()
                for name, number in events_pb2.EventType.items()}
    assert TYPE_NAMES == contract
    details = events_pb2.Event.DESCRIPTOR.oneofs_by_name["details"].fields
    # the details member of type t is field 15 + t, named as the type: the encoder relies on it
    assert {f.number - 15: f.name for f in details} == DETAILS_FIELD
    assert set(STRUCTS) == set(DETAILS_FIELD)


def test_scrub_reference():
    assert scrub(b"abc") == "abc"
    assert scrub("é€😀".encode()) == "é€😀"
    assert scrub(b"\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80") == "?" * 9
    assert scrub(b"a\xe2\x82b\xff") == "a??b?"
    assert scrub(b"\xf0\x9f\x98\x80\x80") == "😀?"


def test_split_args_reference():
    assert split_args(b"") == []
    assert split_args(b"\0") == [b""]
    assert split_args(b"ls\0-l\0") == [b"ls", b"-l"]
    assert split_args(b"a\0\0b\0") == [b"a", b"", b"b"]
    assert split_args(b"a\0trunc") == [b"a", b"trunc"]
