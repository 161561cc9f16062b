# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Tapio's protobuf codec: kernel events <-> `tapio.v1.TapioStreamEventsRequest` wire bytes.

Collector side, `BatchEncoder.encode`: the events of an EventArena, in their kernel layout, go
straight to canonical protobuf bytes (byte for byte what the `protobuf` library writes for the
same message), with no Python object per event: each event is measured, then written, into a
buffer the encoder reuses (encode.pxd); the bytes object returned is one copy of it.

Server side, `DecodedBatch.parse`: wire bytes -> typed C records (records.pxd) in one nogil pass
that checks every read against the end of the input (decode.pxd); malformed input raises
DecodeError. Python dicts, in the JSON shape of tapio.vocab, are built only when asked for.
"""
import time

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Realloc, PyMem_Free, PyMem_RawFree
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t, UINT32_MAX, UINT64_MAX
from libc.string cimport memcpy, memset
from posix.unistd cimport sysconf, _SC_PAGESIZE

from tapio._fast.events cimport (
    tapio_event, tapio_header, tapio_exec, tapio_exit, tapio_tcp, tapio_oom, tapio_signal,
    TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_OOM_KILL,
    TAPIO_EVENT_SIGNAL,
)
from tapio._fast.arena cimport EventArena, arena_t, slot_totals
from tapio._fast.wire cimport *
from tapio._fast.encode cimport (
    encode_opts, events_bound, write_events, sz_uint, sz_len, w_uint, w_raw, w_fixed64,
    w_message_head,
)
from tapio._fast.records cimport *
from tapio._fast.decode cimport parse_request

from google.protobuf.message import DecodeError as LibraryDecodeError

from tapio import vocab
from tapio.v1 import events_pb2, stream_pb2

cdef uint64_t PAGE_SIZE = <uint64_t>sysconf(_SC_PAGESIZE)

# protobuf refuses messages of 2 GiB and more
cdef size_t MAX_MESSAGE = 0x7FFFFFFF
# room for the request's tag and the batch's length, a varint of a size < 2 GiB
cdef size_t HEAD = 1 + 5


def struct_sizes():
    """sizeof() of each kernel event struct as this module was compiled (layout tests)."""
    return {
        "tapio_header": sizeof(tapio_header), "tapio_exec": sizeof(tapio_exec),
        "tapio_exit": sizeof(tapio_exit), "tapio_tcp": sizeof(tapio_tcp),
        "tapio_oom": sizeof(tapio_oom), "tapio_signal": sizeof(tapio_signal),
        "tapio_event": sizeof(tapio_event),
    }


def encode_field(int field_number, const unsigned char[::1] message not None):
    """A submessage field as it appears inside its parent: tag, length, body. Enrichment uses it
    to pre-encode Event.context (12) and Event.process (13) once per cgroup / process."""
    if not 1 <= field_number < (1 << 29):
        raise ValueError(f"field number {field_number} is outside 1..2**29-1")
    cdef size_t n = message.shape[0]
    cdef uint64_t tag = <uint64_t>field_number << 3 | WT_LEN
    out = PyBytes_FromStringAndSize(NULL, varint_size(tag) + varint_size(n) + n)
    cdef uint8_t *w = <uint8_t *>PyBytes_AS_STRING(out)
    w = put_varint(put_varint(w, tag), n)
    if n:
        memcpy(w, &message[0], n)
    return out


cdef int check_field(bytes blob, uint32_t field) except -1:
    """`blob` must be exactly one length-delimited field `field`: encode() copies it verbatim."""
    cdef wire_error err
    cdef uint32_t tag = 0
    cdef const uint8_t *body
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(blob)
    cdef const uint8_t *end = p + len(blob)
    memset(&err, 0, sizeof(err))
    p = get_tag(p, end, &tag, &err)
    if p != NULL and tag == (field << 3 | WT_LEN):
        p = get_len(p, end, &body, &err)
    if p != end or tag != (field << 3 | WT_LEN):
        raise ValueError(f"not one encoded field {field}: build it with encode_field({field}, ...)")
    return 0


def _annotate_slot(EventArena arena not None, uint32_t slot, uint32_t repeat=1,
                   bytes context=None, bytes process=None, totals=None):
    """Set what the collector's processor sets on an arena slot: its repeat count with the
    totals of the events it stands for (with repeat > 1: a 9-tuple in tapio.v1.Collapsed field
    order, stamps in the kernel's clock), and its pre-encoded Event.context / Event.process
    fields (tests and benchmarks; the processor does it in C). The arena borrows the bytes: keep
    them alive until it is encoded or cleared."""
    cdef slot_totals *t
    if slot >= arena.c.count:
        raise IndexError(f"slot {slot} is not filled (the arena holds {arena.c.count})")
    if context is not None:
        check_field(context, 12)
    if process is not None:
        check_field(process, 13)
    if repeat > 1:
        if totals is None or len(totals) != 9:
            raise ValueError("a slot that stands for repeats needs their totals: a 9-tuple in "
                             "tapio.v1.Collapsed field order")
        t = &arena.c.totals[slot]
        (t.first_ns, t.last_ns, t.bytes_sent, t.bytes_received, t.duration_min_ns,
         t.duration_max_ns, t.duration_total_ns, t.sport_min, t.sport_max) = totals
    arena.c.repeat[slot] = repeat
    arena.c.ctx_ptr[slot] = PyBytes_AS_STRING(context) if context is not None else NULL
    arena.c.ctx_len[slot] = len(context) if context is not None else 0
    arena.c.proc_ptr[slot] = PyBytes_AS_STRING(process) if process is not None else NULL
    arena.c.proc_len[slot] = len(process) if process is not None else 0


# ======================================================================================
# Encoding
# ======================================================================================

cdef class BatchEncoder:
    """Encodes arenas of kernel events into TapioStreamEventsRequest{batch} bytes.

    One per collector stream: it holds the collector's identity and an output buffer that is
    reused from batch to batch. encode() holds the GIL from start to end, so calls from several
    threads take turns."""
    cdef bytes _collector_id  # UTF-8
    cdef bytes _node_name
    cdef encode_opts _opts
    cdef uint8_t *_buf
    cdef size_t _cap

    def __cinit__(self, str collector_id not None, str node_name not None, int64_t boot_to_wall_ns):
        self._collector_id = collector_id.encode()
        self._node_name = node_name.encode()
        self._opts.page_size = PAGE_SIZE
        self.boot_to_wall_ns = boot_to_wall_ns

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def boot_to_wall_ns(self):
        """Wall clock minus CLOCK_BOOTTIME, added to kernel timestamps (refresh it when the wall
        clock steps)."""
        return self._opts.boot_to_wall_ns

    @boot_to_wall_ns.setter
    def boot_to_wall_ns(self, int64_t value):
        if value < 0:
            raise ValueError(f"boot_to_wall_ns is wall clock minus boot time, >= 0, not {value}")
        self._opts.boot_to_wall_ns = <uint64_t>value

    cdef int _reserve(self, size_t size) except -1:
        cdef uint8_t *p
        if size <= self._cap:
            return 0
        p = <uint8_t *>PyMem_Realloc(self._buf, size)
        if p == NULL:
            raise MemoryError(f"cannot allocate {size} bytes to encode a batch into")
        self._buf = p
        self._cap = size
        return 0

    def encode(self, EventArena arena not None, uint64_t batch_id, uint64_t first_seq,
               uint64_t kernel_drops=0, uint64_t processor_drops=0, uint64_t buffer_drops=0,
               int path=2, created_at_ns=None, order=None, uint64_t last_seq=0, ledger=None,
               seq_range=None):
        """The arena's events (or the slots listed in `order`, a uint32 buffer such as
        array('I'), in that order) as the bytes of one TapioStreamEventsRequest{batch}.
        The event in slot s gets the id ebpf-<first_seq + s>; created_at_ns defaults to now.
        The batch accounts for the sequence numbers first_seq..last_seq (0: through the arena's
        last slot; events left out by `order` were filtered or collapsed). `ledger` is the
        collector's running totals, six ints in tapio.v1.Ledger field order, or None.
        seq_range: (first, last) written as the batch's range instead, verbatim, (0, 0) for
        none: for one of several batches cut from one arena, whose range starts past slot 0."""
        cdef const uint32_t[::1] order_view
        cdef const uint32_t *slots = NULL
        cdef const arena_t *a = &arena.c
        cdef size_t n = a.count
        cdef size_t k, head, tail, body
        cdef uint64_t created = time.time_ns() if created_at_ns is None else created_at_ns
        cdef bytes cid = self._collector_id
        cdef bytes node = self._node_name
        cdef uint64_t totals[6]
        cdef size_t ledger_size = 0
        cdef uint8_t *start
        cdef uint8_t *w
        if not 0 <= path <= 2:
            raise ValueError(f"path is a BatchPath: 0, 1 (raw) or 2 (semantic), not {path}")
        if order is not None:
            order_view = order
            n = order_view.shape[0]
            if n:
                slots = &order_view[0]
            for k in range(n):
                if slots[k] >= a.count:
                    raise ValueError(f"order[{k}] is slot {slots[k]}, but the arena holds "
                                     f"{a.count} events")
        if a.count and first_seq > UINT64_MAX - (a.count - 1):
            raise ValueError(f"event ids from ebpf-{first_seq} for {a.count} slots pass 2**64-1")
        if last_seq == 0:
            last_seq = first_seq + a.count - 1 if a.count else (first_seq - 1 if first_seq else 0)
        cdef uint64_t range_first = first_seq
        if seq_range is not None:
            range_first, last_seq = seq_range
        if ledger is not None:
            if len(ledger) != 6:
                raise ValueError("a ledger is six counts: seen, filtered, collapsed, dropped_kernel, "
                                 f"dropped_processor, dropped_buffer; not {ledger!r}")
            for k in range(6):
                totals[k] = ledger[k]
                ledger_size += sz_uint(totals[k])

        # The EventBatch goes into the buffer after HEAD bytes, where the request's tag and the
        # batch's length are put once the batch is written and its length known; the bytes
        # object is then one copy. The GIL stays held: nobody may change the arena (or free a
        # context blob it points to) while it is read.
        head = sz_uint(batch_id) + sz_len(len(cid))
        tail = ((9 if created else 0) + sz_uint(kernel_drops) + sz_uint(<uint32_t>path)
                + sz_len(len(node)) + sz_uint(processor_drops) + sz_uint(buffer_drops)
                + sz_uint(range_first) + sz_uint(last_seq) + (2 + ledger_size if ledger is not None else 0))
        self._reserve(HEAD + head + events_bound(a, slots, n) + tail)
        w = self._buf + HEAD
        w = w_uint(w, 0x08, batch_id)
        w = w_raw(w, 0x12, PyBytes_AS_STRING(cid), len(cid))
        w = write_events(w, a, slots, n, first_seq, &self._opts)
        if w == NULL:
            raise SystemError("an event was not written as measured: a bug in tapio/_fast/encode.pxd")
        w = w_fixed64(w, 0x21, created)
        w = w_uint(w, 0x28, kernel_drops)
        w = w_uint(w, 0x30, <uint32_t>path)
        w = w_raw(w, 0x3a, PyBytes_AS_STRING(node), len(node))
        w = w_uint(w, 0x40, processor_drops)
        w = w_uint(w, 0x48, buffer_drops)
        w = w_uint(w, 0x50, range_first)
        w = w_uint(w, 0x58, last_seq)
        if ledger is not None:
            w = w_message_head(w, 12, ledger_size)  # < 128: one byte of length
            for k in range(6):
                w = w_uint(w, <uint8_t>(0x08 + 8 * k), totals[k])
        body = <size_t>(w - (self._buf + HEAD))
        if body > MAX_MESSAGE:
            raise ValueError(f"{n} events take {body} bytes, over protobuf's 2 GiB limit for a "
                             "message: encode fewer events per batch")
        start = self._buf + HEAD - 1 - varint_size(body)
        w_message_head(start, 2, body)  # TapioStreamEventsRequest.batch
        return PyBytes_FromStringAndSize(<char *>start, w - start)


# ======================================================================================
# Decoding
# ======================================================================================

class DecodeError(ValueError):
    """The bytes are not a TapioStreamEventsRequest this codec can read."""


cdef dict WIRE_ERRORS = {
    WIRE_TRUNCATED: "a value runs past the end of its message",
    WIRE_VARINT_TOO_LONG: "a varint longer than 10 bytes",
    WIRE_LENGTH_PAST_END: "a length runs past the end of its message",
    WIRE_FIELD_ZERO: "field number 0",
    WIRE_TAG_TOO_LARGE: "a tag over 32 bits",
    WIRE_GROUP: "a group (wire type 3 or 4), which proto3 does not have",
    WIRE_BAD_WIRE_TYPE: "wire type 6 or 7, which does not exist",
    WIRE_WRONG_TYPE: "a known field with the wrong wire type",
    WIRE_TOO_MANY_EVENTS: f"more than {MAX_EVENTS} events",
    WIRE_NO_MEMORY: "out of memory for the decoded records",
}


cdef object decode_error(const wire_error *err, const uint8_t *buf):
    what = WIRE_ERRORS.get(err.code, f"error {err.code}")
    where = ""
    if err.message != NULL:
        name = (<bytes>err.message).decode()
        where = f" in field {err.field} of {name}" if err.field else f" in a tag of {name}"
    return DecodeError(f"malformed TapioStreamEventsRequest: {what}{where}, at byte {err.at - buf}")


cdef dict REQUEST_KINDS = {KIND_EVENT: "event", KIND_BATCH: "batch", KIND_CONTROL: "control",
                           KIND_HELLO: "hello"}


cdef class DecodedBatch:
    """A TapioStreamEventsRequest decoded into C records (records.pxd); dicts on demand."""

    def __cinit__(self):
        memset(&self.c, 0, sizeof(tapio_batch))

    def __init__(self):
        raise TypeError("a DecodedBatch comes from DecodedBatch.parse(data)")

    def __dealloc__(self):
        PyMem_RawFree(self.c.records)
        PyMem_RawFree(self.c.contexts)
        PyMem_RawFree(self.c.processes)
        PyMem_RawFree(self.c.collapses)
        PyMem_RawFree(self.c.spans)

    @staticmethod
    def parse(bytes data not None):
        """Decode the bytes of one TapioStreamEventsRequest; DecodeError when they are malformed."""
        cdef DecodedBatch self = DecodedBatch.__new__(DecodedBatch)
        cdef wire_error err
        cdef const uint8_t *done
        cdef size_t size = PyBytes_GET_SIZE(data)
        if size > UINT32_MAX:
            raise DecodeError(f"a request of {size} bytes is over the 4 GiB this codec reads")
        self.data = data
        self.c.buf = <const uint8_t *>PyBytes_AS_STRING(data)
        self.c.size = size
        memset(&err, 0, sizeof(err))
        with nogil:
            done = parse_request(&self.c, &err)
        if done == NULL:
            raise decode_error(&err, self.c.buf)
        if self.c.kind == KIND_NONE:
            raise DecodeError("the TapioStreamEventsRequest sets none of event, batch, control, hello")
        if self.c.kind == KIND_CONTROL or self.c.kind == KIND_HELLO:
            try:
                request = stream_pb2.TapioStreamEventsRequest.FromString(data)
            except LibraryDecodeError as e:
                raise DecodeError(f"malformed TapioStreamEventsRequest: {e}") from None
            self._message = getattr(request, REQUEST_KINDS[self.c.kind])
        return self

    def __len__(self):
        return self.c.count

    @property
    def kind(self):
        """"batch", "event", "hello" or "control": which member of the request oneof is set."""
        return REQUEST_KINDS[self.c.kind]

    @property
    def message(self):
        """For hello and control, the protobuf library's Hello / StreamControl; else None."""
        return self._message

    @property
    def batch_id(self):
        return self.c.batch_id

    @property
    def collector_id(self):
        return text(&self.c, self.c.collector_id)

    @property
    def node_name(self):
        return text(&self.c, self.c.node_name)

    @property
    def created_at_ns(self):
        return self.c.created_at_ns

    @property
    def kernel_drops(self):
        return self.c.kernel_drops

    @property
    def processor_drops(self):
        return self.c.processor_drops

    @property
    def buffer_drops(self):
        return self.c.buffer_drops

    @property
    def path(self):
        return self.c.path

    @property
    def first_seq(self):
        """The first of the collector's sequence numbers this batch accounts for (0: not sent)."""
        return self.c.first_seq

    @property
    def last_seq(self):
        """The last of the collector's sequence numbers this batch accounts for (0: not sent)."""
        return self.c.last_seq

    @property
    def ledger(self):
        """The collector's running totals ({seen, filtered, collapsed, dropped_kernel,
        dropped_processor, dropped_buffer}), or None when the batch carries none."""
        if not self.c.has_ledger:
            return None
        return dict(zip(LEDGER_FIELDS, self.c.ledger))

    def checksum(self):
        """The sum of every number and string length of every record, read in C: touches the
        decoded data the way a C consumer does (the benchmark uses it)."""
        cdef uint64_t s
        with nogil:
            s = batch_checksum(&self.c)
        return s

    def type_counts(self):
        """{type name: events of that type}, counted in C (metrics)."""
        cdef uint64_t known[8]  # EventType values 0..7
        cdef uint32_t i
        cdef int32_t t
        memset(known, 0, sizeof(known))
        other = {}
        for i in range(self.c.count):
            t = self.c.records[i].type
            if 0 <= t < 8:
                known[t] += 1
            else:  # a type this contract does not know: rare, counted in Python
                other[t] = other.get(t, 0) + 1
        counts = {vocab.event_type_name(t): known[t] for t in range(8) if known[t]}
        counts.update((vocab.event_type_name(t), n) for t, n in other.items())
        return counts

    def event_id(self, Py_ssize_t i):
        """The id of event i, without building its dict."""
        return text(&self.c, self.c.records[self._index(i)].id)

    def event_wire(self, Py_ssize_t i):
        """Event i's own serialized bytes, as they arrived (what events_pb2.Event.FromString
        reads): served on without encoding them again."""
        cdef const tapio_span *span = &self.c.records[self._index(i)].wire
        cdef const tapio_span *more
        if span.more == 0:  # one body: a slice of the input
            return PyBytes_FromStringAndSize(<const char *>self.c.buf + span.off, span.len)
        parts = [PyBytes_FromStringAndSize(<const char *>self.c.buf + span.off, span.len)]
        more = span
        while more.more:  # the event occurred more than once: protobuf merges the bodies
            more = &self.c.spans[more.more - 1]
            parts.append(PyBytes_FromStringAndSize(<const char *>self.c.buf + more.off, more.len))
        return b"".join(parts)

    def event_dict(self, Py_ssize_t i):
        """Event i in the JSON shape (see tapio.vocab)."""
        return record_dict(&self.c, &self.c.records[self._index(i)])

    cdef Py_ssize_t _index(self, Py_ssize_t i) except -1:
        """i as an index of an event (negative ones count from the end), or IndexError."""
        if i < 0:
            i += self.c.count
        if not 0 <= i < self.c.count:
            raise IndexError(f"event {i} is out of range: the batch holds {self.c.count}")
        return i

    def to_json_lines(self):
        """Every event as one compact JSON object per line, each line ending in a newline."""
        cdef uint32_t i
        return b"".join([vocab.dumps_line(record_dict(&self.c, &self.c.records[i]))
                         for i in range(self.c.count)])


# ---- dict views of records ----

# Ledger's fields in order, named as in the contract
cdef tuple LEDGER_FIELDS = tuple(f.name for f in stream_pb2.Ledger.DESCRIPTOR.fields)

# Context's string fields by number, named as in the contract
cdef dict CONTEXT_FIELDS = {
    f.number: f.name for f in events_pb2.Context.DESCRIPTOR.fields if f.type == f.TYPE_STRING
}


cdef inline str text(const tapio_batch *b, tapio_ref ref):
    # the collector scrubs what it sends, but bytes off the wire are not to be trusted: a view
    # never fails on bad UTF-8
    return PyUnicode_DecodeUTF8(ref_ptr(b, ref), ref.len, "replace")


cdef inline bytes raw(const tapio_batch *b, tapio_ref ref):
    return PyBytes_FromStringAndSize(ref_ptr(b, ref), ref.len)


cdef list exec_args(const tapio_batch *b, const tapio_exec_rec *x):
    cdef field_iter it
    cdef tapio_ref arg
    out = []
    if x.n_args:
        field_iter_init(&it, b, &x.body, 2)
        while field_iter_next(&it, &arg):
            out.append(text(b, arg))
    return out


cdef dict context_dict(const tapio_batch *b, const tapio_context_rec *c):
    cdef field_iter it
    cdef tapio_ref label, key, value
    out = {}
    for number, name in CONTEXT_FIELDS.items():
        if c.fields[<int>number].len:
            out[name] = text(b, c.fields[<int>number])
        if number == 10 and c.n_labels:  # labels are field 11: keep the contract's order
            labels = out["labels"] = {}
            field_iter_init(&it, b, &c.body, 11)
            while field_iter_next(&it, &label):
                label_key_value(b, label, &key, &value)
                labels[text(b, key)] = text(b, value)
    return out


cdef dict process_dict(const tapio_batch *b, const tapio_process_rec *p):
    cdef uint32_t i, n = p.n_ancestors if p.n_ancestors < MAX_ANCESTORS else MAX_ANCESTORS
    return {
        "executable": text(b, p.executable),
        "command_line": text(b, p.command_line),
        "user": text(b, p.user),
        "ancestors": [p.ancestors[i] for i in range(n)],
        "start_time_ns": p.start_time_ns,
    }


cdef dict collapsed_dict(const tapio_collapsed_rec *c):
    return {"first_timestamp_ns": c.first_timestamp_ns, "last_timestamp_ns": c.last_timestamp_ns,
            "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
            "duration_min_ns": c.duration_min_ns, "duration_max_ns": c.duration_max_ns,
            "duration_total_ns": c.duration_total_ns, "sport_min": c.sport_min,
            "sport_max": c.sport_max}


cdef dict details_dict(const tapio_batch *b, const tapio_record *rec):
    cdef const tapio_details *d = &rec.d
    if rec.details == TAPIO_EVENT_EXEC:
        return {"filename": text(b, d.exec.filename), "args": exec_args(b, &d.exec),
                "args_count": d.exec.args_count, "args_truncated": bool(d.exec.args_truncated)}
    if rec.details == TAPIO_EVENT_EXIT:
        return {"exit_code": d.exit.exit_code, "signal": d.exit.signal,
                "signal_name": vocab.signal_name(d.exit.signal),
                "core_dumped": bool(d.exit.core_dumped), "start_time_ns": d.exit.start_time_ns,
                "duration_ns": d.exit.duration_ns}
    if rec.details == TAPIO_EVENT_OOM_KILL:
        return {"trigger_pid": d.oom.trigger_pid, "trigger_comm": text(b, d.oom.trigger_comm),
                "memcg_id": d.oom.memcg_id, "memcg_name": text(b, d.oom.memcg_name),
                "memcg_limit_bytes": d.oom.memcg_limit_bytes,
                "memcg_usage_bytes": d.oom.memcg_usage_bytes,
                "total_vm_bytes": d.oom.total_vm_bytes, "rss_bytes": d.oom.rss_bytes}
    if rec.details == TAPIO_EVENT_SIGNAL:
        return {"signal": d.signal.signal, "signal_name": vocab.signal_name(d.signal.signal),
                "code": d.signal.code, "sender_pid": d.signal.sender_pid,
                "sender_comm": text(b, d.signal.sender_comm)}
    # tcp_connect, tcp_accept, tcp_close
    out = {"family": vocab.ip_family_name(d.tcp.family),
           "saddr": vocab.format_addr(raw(b, d.tcp.saddr)), "sport": d.tcp.sport,
           "daddr": vocab.format_addr(raw(b, d.tcp.daddr)), "dport": d.tcp.dport}
    if rec.details == TAPIO_EVENT_TCP_CONNECT:
        out["result"] = vocab.connect_result_name(d.tcp.result)
    out["error"] = d.tcp.error
    out["duration_ns"] = d.tcp.duration_ns
    out["bytes_sent"] = d.tcp.bytes_sent
    out["bytes_received"] = d.tcp.bytes_received
    out["passive"] = bool(d.tcp.passive)
    return out


cdef dict record_dict(const tapio_batch *b, const tapio_record *rec):
    out = {
        "id": text(b, rec.id),
        "type": vocab.event_type_name(rec.type),
        "timestamp_ns": rec.timestamp_ns,
        "time": vocab.format_time(rec.timestamp_ns),
        "pid": rec.pid, "tid": rec.tid, "ppid": rec.ppid, "uid": rec.uid, "gid": rec.gid,
        "cgroup_id": rec.cgroup_id,
        "comm": text(b, rec.comm),
    }
    if rec.count > 1:
        out["count"] = rec.count
    if b.node_name.len:
        out["node"] = text(b, b.node_name)
    if b.collector_id.len:
        out["collector"] = text(b, b.collector_id)
    if b.batch_id:                   # with the collector: what the server de-duplicates by
        out["batch"] = b.batch_id
    if rec.context:
        out["context"] = context_dict(b, record_context(b, rec))
    if rec.process:
        out["process"] = process_dict(b, record_process(b, rec))
    if rec.collapsed:
        out["collapsed"] = collapsed_dict(record_collapsed(b, rec))
    if rec.details:  # the details' key is their type's name: "exec", "tcp_close", ...
        out[vocab.event_type_name(rec.details)] = details_dict(b, rec)
    return out


cdef uint64_t batch_checksum(const tapio_batch *b) noexcept nogil:
    cdef uint64_t s = b.batch_id + b.created_at_ns + b.kernel_drops + b.collector_id.len
    cdef uint32_t i, j
    cdef const tapio_record *rec
    cdef const tapio_details *d
    cdef const tapio_context_rec *c
    cdef const tapio_process_rec *p
    cdef const tapio_collapsed_rec *k
    s += b.first_seq + b.last_seq
    for i in range(b.count):
        rec = &b.records[i]
        d = &rec.d
        s += (rec.timestamp_ns + rec.cgroup_id + rec.id.len + rec.comm.len + <uint32_t>rec.type
              + rec.pid + rec.tid + rec.ppid + rec.uid + rec.gid + rec.count)
        if rec.details == TAPIO_EVENT_EXEC:
            s += d.exec.filename.len + d.exec.n_args + d.exec.args_count + d.exec.args_truncated
        elif rec.details == TAPIO_EVENT_EXIT:
            s += (<uint32_t>d.exit.exit_code + d.exit.signal + d.exit.core_dumped
                  + d.exit.start_time_ns + d.exit.duration_ns)
        elif rec.details == TAPIO_EVENT_OOM_KILL:
            s += (d.oom.trigger_pid + d.oom.trigger_comm.len + d.oom.memcg_id + d.oom.memcg_name.len
                  + d.oom.memcg_limit_bytes + d.oom.memcg_usage_bytes + d.oom.total_vm_bytes
                  + d.oom.rss_bytes)
        elif rec.details == TAPIO_EVENT_SIGNAL:
            s += (d.signal.signal + <uint32_t>d.signal.code + d.signal.sender_pid
                  + d.signal.sender_comm.len)
        elif rec.details:
            s += (<uint32_t>d.tcp.family + d.tcp.saddr.len + d.tcp.daddr.len + d.tcp.sport
                  + d.tcp.dport + <uint32_t>d.tcp.result + <uint32_t>d.tcp.error
                  + d.tcp.duration_ns + d.tcp.bytes_sent + d.tcp.bytes_received + d.tcp.passive)
        c = record_context(b, rec)
        if c != NULL:
            for j in range(13):
                s += c.fields[j].len
            s += c.n_labels
        p = record_process(b, rec)
        if p != NULL:
            s += p.executable.len + p.command_line.len + p.user.len + p.start_time_ns + p.n_ancestors
            for j in range(p.n_ancestors if p.n_ancestors < MAX_ANCESTORS else MAX_ANCESTORS):
                s += p.ancestors[j]
        k = record_collapsed(b, rec)
        if k != NULL:
            s += (k.first_timestamp_ns + k.last_timestamp_ns + k.bytes_sent + k.bytes_received
                  + k.duration_min_ns + k.duration_max_ns + k.duration_total_ns + k.sport_min
                  + k.sport_max)
    return s


# ======================================================================================
# Event latency: kernel timestamp -> decoded at the server

cdef inline uint32_t latency_bucket(uint64_t d) noexcept nogil:
    """Log-linear buckets: four per power of two (25% wide); 0..7 exact; 260 in all."""
    cdef uint32_t e
    if d < 8:
        return <uint32_t>d
    e = 64 - __builtin_clzll(d)                       # bit length: 4..64
    return e * 4 + <uint32_t>((d >> (e - 3)) & 3)


cdef inline uint64_t bucket_upper(uint32_t i) noexcept nogil:
    cdef uint32_t e = i // 4
    if i < 8:
        return i
    return ((<uint64_t>4 + (i & 3) + 1) << (e - 3)) - 1


cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef class LatencyHistogram:
    """How long events took from their kernel timestamp to being decoded here, for p50/p99.
    Updated in C once per event of a batch; the figures are accurate to 25%."""
    cdef uint64_t counts[260]     # latency_bucket() of 2**64-1 is 259
    cdef readonly uint64_t total

    def add_batch(self, DecodedBatch batch not None, uint64_t now_ns):
        cdef uint32_t i
        cdef uint64_t ts
        with nogil:
            for i in range(batch.c.count):
                ts = batch.c.records[i].timestamp_ns
                self.counts[latency_bucket(now_ns - ts if now_ns > ts else 0)] += 1
            self.total += batch.c.count

    def percentile(self, double q):
        """The q-quantile (0 < q <= 1) in nanoseconds (the upper edge of its bucket); None when
        empty."""
        cdef uint64_t rank, seen = 0
        cdef uint32_t i
        if self.total == 0:
            return None
        rank = <uint64_t>(q * self.total + 0.999999)
        for i in range(260):
            seen += self.counts[i]
            if seen >= rank:
                return bucket_upper(i)
        return bucket_upper(259)

    def reset(self):
        memset(self.counts, 0, sizeof(self.counts))
        self.total = 0
