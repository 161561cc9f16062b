# Included by codec.pyx. The collector's side of the codec: BatchEncoder writes the events of an
# EventArena as the bytes of one TapioStreamEventsRequest{batch}, in a buffer it reuses; each event
# is measured and written by encode_event.pxi. Also the helpers that build the pre-encoded
# Context / Process fields the arena's slots point at.

cdef uint64_t PAGE_SIZE = <uint64_t>sysconf(_SC_PAGESIZE)

# protobuf refuses messages of 2 GiB and more
cdef size_t MAX_MESSAGE = 0x7FFFFFFF
# room for the request's tag and the batch's length, a varint of a size < 2 GiB
cdef size_t HEAD = 1 + 5


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
        collector's running totals, seven ints in tapio.v1.Ledger field order, or None.
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
        cdef uint64_t totals[7]
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
            if len(ledger) != 7:
                raise ValueError("a ledger is seven counts: seen, filtered, collapsed, dropped_kernel, "
                                 f"dropped_processor, dropped_buffer, throttled; not {ledger!r}")
            for k in range(7):
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
            raise SystemError("an event was not written as measured: a bug in tapio/_fast/encode_event.pxi")
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
            for k in range(7):
                w = w_uint(w, <uint8_t>(0x08 + 8 * k), totals[k])
        body = <size_t>(w - (self._buf + HEAD))
        if body > MAX_MESSAGE:
            raise ValueError(f"{n} events take {body} bytes, over protobuf's 2 GiB limit for a "
                             "message: encode fewer events per batch")
        start = self._buf + HEAD - 1 - varint_size(body)
        w_message_head(start, 2, body)  # TapioStreamEventsRequest.batch
        return PyBytes_FromStringAndSize(<char *>start, w - start)
