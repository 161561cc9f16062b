# Included by codec.pyx. The server's side of the codec: DecodedBatch parses the bytes of one
# TapioStreamEventsRequest into C records (decode_request.pxi, nogil, every read bounds-checked)
# and builds Python views of them (dicts in the JSON shape of tapio.vocab, each event's own wire
# bytes) only when asked.

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
    WIRE_TOO_LONG: "a string (or list) longer than a collector makes",
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
    def nbytes(self):
        """The memory this batch holds: its input bytes and the record arrays decoded from them
        (as allocated), for owners that bound what they keep in bytes (the server's store)."""
        return (self.c.size + self.c.records_cap * sizeof(tapio_record)
                + self.c.contexts_cap * sizeof(tapio_context_rec)
                + self.c.processes_cap * sizeof(tapio_process_rec)
                + self.c.collapses_cap * sizeof(tapio_collapsed_rec)
                + self.c.spans_cap * sizeof(tapio_span))

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
        dropped_processor, dropped_buffer, throttled}), or None when the batch carries none."""
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
        cdef uint64_t known[9]  # EventType values 0..8
        cdef uint32_t i
        cdef int32_t t
        memset(known, 0, sizeof(known))
        other = {}
        for i in range(self.c.count):
            t = self.c.records[i].type
            if 0 <= t < 9:
                known[t] += 1
            else:  # a type this contract does not know: rare, counted in Python
                other[t] = other.get(t, 0) + 1
        counts = {vocab.event_type_name(t): known[t] for t in range(9) if known[t]}
        counts.update((vocab.event_type_name(t), n) for t, n in other.items())
        return counts

    def throttled_counts(self):
        """{type name: events held back} summed over the batch's `throttled` events, read in C
        ({} without any): what collectors' budgets suppressed (metrics)."""
        cdef uint64_t n[4]
        cdef uint32_t i
        cdef const tapio_throttled_rec *x
        cdef bint any = False
        memset(n, 0, sizeof(n))
        for i in range(self.c.count):
            if self.c.records[i].details == TAPIO_EVENT_THROTTLED:
                x = &self.c.records[i].d.throttled
                n[0] += x.exec
                n[1] += x.tcp_connect
                n[2] += x.tcp_accept
                n[3] += x.tcp_close
                any = True
        if not any:
            return {}
        return {"exec": n[0], "tcp_connect": n[1], "tcp_accept": n[2], "tcp_close": n[3]}

    def event_id(self, Py_ssize_t i):
        """The id of event i, without building its dict."""
        return text(&self.c, self.c.records[self._index(i)].id)

    def event_wire(self, Py_ssize_t i):
        """Event i's own serialized bytes, as they arrived (what events_pb2.Event.FromString
        reads): served on without encoding them again."""
        cdef tapio_ref wire = self.c.records[self._index(i)].wire
        cdef const tapio_span *piece = &self.c.event_pieces
        if self.c.kind != KIND_EVENT or piece.more == 0:  # one body: a slice of the input
            return PyBytes_FromStringAndSize(<const char *>self.c.buf + wire.off, wire.len)
        # a single event sent in several pieces: protobuf merges them, so their bytes joined
        # are the event
        parts = [PyBytes_FromStringAndSize(<const char *>self.c.buf + piece.off, piece.len)]
        while piece.more:
            piece = &self.c.spans[piece.more - 1]
            parts.append(PyBytes_FromStringAndSize(<const char *>self.c.buf + piece.off, piece.len))
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
        x = {"filename": text(b, d.exec.filename), "args": exec_args(b, &d.exec),
             "args_count": d.exec.args_count, "args_truncated": bool(d.exec.args_truncated)}
        if d.exec.args_redacted:    # only then: the shape of every other exec stays as it was
            x["args_redacted"] = True
        return x
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
    if rec.details == TAPIO_EVENT_THROTTLED:
        return {"first_timestamp_ns": d.throttled.first_timestamp_ns,
                "last_timestamp_ns": d.throttled.last_timestamp_ns, "exec": d.throttled.exec,
                "tcp_connect": d.throttled.tcp_connect, "tcp_accept": d.throttled.tcp_accept,
                "tcp_close": d.throttled.tcp_close, "budget": d.throttled.budget,
                "burst": d.throttled.burst, "interval_ns": d.throttled.interval_ns}
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
        elif rec.details == TAPIO_EVENT_THROTTLED:
            s += (d.throttled.first_timestamp_ns + d.throttled.last_timestamp_ns + d.throttled.exec
                  + d.throttled.tcp_connect + d.throttled.tcp_accept + d.throttled.tcp_close
                  + d.throttled.budget + d.throttled.burst + d.throttled.interval_ns)
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
