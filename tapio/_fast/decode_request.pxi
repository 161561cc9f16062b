# Included by codec.pyx (its cimports serve here).
# tapio.v1.TapioStreamEventsRequest wire bytes -> the C records of records.pxd.
#
# One parse function per message, over its body p..end; it returns end, or NULL with the first
# error in `err`. Each loops over its fields and dispatches on the whole tag (field number and
# wire type) with a C switch; anything else goes to skip_other(): an error for a known field with
# the wrong wire type, skipped when the field is unknown. Repeated occurrences of a singular field
# follow protobuf: for a scalar the last one wins, messages merge, and a oneof that switches
# member starts the new member over.

cdef inline int grow(void **array, uint32_t *cap, size_t item, size_t need) noexcept nogil:
    """Make room for `need` items, doubling; -1 when memory runs out."""
    cdef size_t new_cap = cap[0] if cap[0] else 16
    cdef void *p
    if need <= cap[0]:
        return 0
    while new_cap < need:
        new_cap *= 2
    if new_cap > UINT32_MAX:
        return -1
    p = PyMem_RawRealloc(array[0], new_cap * item)
    if p == NULL:
        return -1
    array[0] = p
    cap[0] = <uint32_t>new_cap
    return 0


# What a collector can put into a string at most, in bytes. The kernel's fields are fixed
# (bpf/tapio_events.h), and each byte that is not UTF-8 becomes U+FFFD (3 bytes) on the way;
# paths and command lines read from /proc are bounded by PATH_MAX and the collector's 4 KiB
# cmdline read, names and ids by what Kubernetes and the flags allow. Longer is not something a
# collector sent: the request is refused (DecodeError, INVALID_ARGUMENT), nothing is cut.
cdef enum:
    MAX_ID_BYTES = 128          # Event.id
    MAX_COMM_BYTES = 64         # comm, trigger_comm, sender_comm: TASK_COMM_LEN 16, x3
    MAX_KERNEL_PATH_BYTES = 1024    # ExecDetails.filename (256, x3); one argv element (256, x3)
    MAX_ARGS = 256              # argv elements: each takes a byte of the kernel's 256 at least
    MAX_ARGS_BYTES = 1024       # all of argv (256, x3, with room for *** of redaction)
    MAX_ADDRESS_BYTES = 64      # saddr, daddr (16)
    MAX_CGROUP_NAME_BYTES = 256     # memcg_name (64, x3)
    MAX_PROC_TEXT_BYTES = 16384     # executable, command_line, context strings (4096, x3)
    MAX_NAME_BYTES = 1024       # user, collector_id, node_name, a label's key or value
    MAX_LABELS = 1024           # labels of one Context


cdef inline const uint8_t *get_ref(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                   tapio_ref *ref, uint32_t max_len, wire_error *err) noexcept nogil:
    """A string or bytes field of at most max_len bytes, referenced where it is in the input."""
    cdef const uint8_t *body = NULL
    p = get_len(p, end, &body, err)
    if p != NULL:
        if <size_t>(p - body) > max_len:
            return wire_fail(err, WIRE_TOO_LONG, body)
        ref.off = <uint32_t>(body - b.buf)
        ref.len = <uint32_t>(p - body)
    return p


cdef inline void span_set(const tapio_batch *b, tapio_span *span, const uint8_t *body,
                          const uint8_t *end) noexcept nogil:
    span.off = <uint32_t>(body - b.buf)
    span.len = <uint32_t>(end - body)
    span.more = span.tail = 0


cdef inline const uint8_t *span_append(tapio_batch *b, tapio_span *head, const uint8_t *body,
                                       const uint8_t *end, wire_error *err) noexcept nogil:
    """Chain one more body of a message that occurred again (protobuf merges the occurrences)."""
    if grow(<void **>&b.spans, &b.spans_cap, sizeof(tapio_span), b.n_spans + 1) < 0:
        return wire_fail(err, WIRE_NO_MEMORY, body)
    span_set(b, &b.spans[b.n_spans], body, end)
    b.n_spans += 1
    if head.more == 0:
        head.more = b.n_spans
    else:
        b.spans[head.tail - 1].more = b.n_spans
    head.tail = b.n_spans
    return end


cdef inline const uint8_t *parse_label(const uint8_t *p, const uint8_t *end, wire_error *err) noexcept nogil:
    """Labels are read on demand (label_key_value); here they are only checked."""
    cdef uint32_t tag = 0
    cdef const uint8_t *body
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Label", 0)
        if tag == 0x0a or tag == 0x12:
            p = get_len(p, end, &body, err)
            if p != NULL and <size_t>(p - body) > MAX_NAME_BYTES:
                p = wire_fail(err, WIRE_TOO_LONG, body)
        else:
            p = skip_other(p, end, tag, field_mask(1, 2), err)
        if p == NULL:
            return wire_fail_in(err, "Label", tag >> 3)
    return p


cdef inline const uint8_t *parse_context(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                         tapio_context_rec *c, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0, field = 0
    cdef const uint8_t *body = NULL
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Context", 0)
        field = tag >> 3
        if tag == (11 << 3 | WT_LEN):  # labels
            p = get_len(p, end, &body, err)
            if c.n_labels >= MAX_LABELS:
                p = wire_fail(err, WIRE_TOO_LONG, body)
            elif p != NULL and parse_label(body, p, err) != NULL:
                c.n_labels += 1
            else:
                p = NULL
        elif tag & 7 == WT_LEN and 1 <= field <= 12:  # the string fields
            p = get_ref(b, p, end, &c.fields[field], MAX_PROC_TEXT_BYTES, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 12), err)
        if p == NULL:
            return wire_fail_in(err, "Context", field)
    return p


cdef inline void add_ancestor(tapio_process_rec *proc, uint64_t v) noexcept nogil:
    if proc.n_ancestors < MAX_ANCESTORS:
        proc.ancestors[proc.n_ancestors] = <uint32_t>v
    if proc.n_ancestors < UINT32_MAX:
        proc.n_ancestors += 1


cdef inline const uint8_t *parse_process(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                         tapio_process_rec *proc, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    cdef uint64_t v = 0
    cdef const uint8_t *q
    cdef const uint8_t *packed_end
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Process", 0)
        if tag == 0x0a:
            p = get_ref(b, p, end, &proc.executable, MAX_PROC_TEXT_BYTES, err)
        elif tag == 0x12:
            p = get_ref(b, p, end, &proc.command_line, MAX_PROC_TEXT_BYTES, err)
        elif tag == 0x1a:
            p = get_ref(b, p, end, &proc.user, MAX_NAME_BYTES, err)
        elif tag == 0x20:  # ancestors, one per field (unpacked)
            p = get_varint(p, end, &v, err)
            if p != NULL:
                add_ancestor(proc, v)
        elif tag == 0x22:  # ancestors, packed: varints back to back
            q = NULL
            packed_end = get_len(p, end, &q, err)
            p = packed_end
            while p != NULL and q < packed_end:
                q = get_varint(q, packed_end, &v, err)
                if q == NULL:
                    p = NULL
                else:
                    add_ancestor(proc, v)
        elif tag == 0x29:
            p = get_fixed64(p, end, &proc.start_time_ns, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 5), err)
        if p == NULL:
            return wire_fail_in(err, "Process", tag >> 3)
    return p


cdef inline const uint8_t *parse_exec(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                      tapio_exec_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    cdef const uint8_t *body
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "ExecDetails", 0)
        if tag == 0x0a:
            p = get_ref(b, p, end, &x.filename, MAX_KERNEL_PATH_BYTES, err)
        elif tag == 0x12:  # argv: counted here, read on demand
            p = get_len(p, end, &body, err)
            if p != NULL:
                x.args_bytes += <uint32_t>(p - body)
                x.n_args += 1
                if x.n_args > MAX_ARGS or x.args_bytes > MAX_ARGS_BYTES:
                    p = wire_fail(err, WIRE_TOO_LONG, body)
        elif tag == 0x18:
            p = get_u32(p, end, &x.args_count, err)
        elif tag == 0x20:
            p = get_bool(p, end, &x.args_truncated, err)
        elif tag == 0x28:
            p = get_bool(p, end, &x.args_redacted, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 5), err)
        if p == NULL:
            return wire_fail_in(err, "ExecDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_exit(const uint8_t *p, const uint8_t *end, tapio_exit_rec *x,
                                      wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "ExitDetails", 0)
        if tag == 0x08:
            p = get_u32(p, end, <uint32_t *>&x.exit_code, err)
        elif tag == 0x10:
            p = get_u32(p, end, &x.signal, err)
        elif tag == 0x18:
            p = get_bool(p, end, &x.core_dumped, err)
        elif tag == 0x21:
            p = get_fixed64(p, end, &x.start_time_ns, err)
        elif tag == 0x28:
            p = get_varint(p, end, &x.duration_ns, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 5), err)
        if p == NULL:
            return wire_fail_in(err, "ExitDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_tcp(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                     tapio_tcp_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "TcpDetails", 0)
        if tag == 0x08:
            p = get_u32(p, end, <uint32_t *>&x.family, err)
        elif tag == 0x12:
            p = get_ref(b, p, end, &x.saddr, MAX_ADDRESS_BYTES, err)
        elif tag == 0x1a:
            p = get_ref(b, p, end, &x.daddr, MAX_ADDRESS_BYTES, err)
        elif tag == 0x20:
            p = get_u32(p, end, &x.sport, err)
        elif tag == 0x28:
            p = get_u32(p, end, &x.dport, err)
        elif tag == 0x30:
            p = get_u32(p, end, <uint32_t *>&x.result, err)
        elif tag == 0x38:
            p = get_u32(p, end, <uint32_t *>&x.error, err)
        elif tag == 0x40:
            p = get_varint(p, end, &x.duration_ns, err)
        elif tag == 0x48:
            p = get_varint(p, end, &x.bytes_sent, err)
        elif tag == 0x50:
            p = get_varint(p, end, &x.bytes_received, err)
        elif tag == 0x58:
            p = get_bool(p, end, &x.passive, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 11), err)
        if p == NULL:
            return wire_fail_in(err, "TcpDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_oom(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                     tapio_oom_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "OomKillDetails", 0)
        if tag == 0x08:
            p = get_u32(p, end, &x.trigger_pid, err)
        elif tag == 0x12:
            p = get_ref(b, p, end, &x.trigger_comm, MAX_COMM_BYTES, err)
        elif tag == 0x18:
            p = get_varint(p, end, &x.memcg_id, err)
        elif tag == 0x22:
            p = get_ref(b, p, end, &x.memcg_name, MAX_CGROUP_NAME_BYTES, err)
        elif tag == 0x28:
            p = get_varint(p, end, &x.memcg_limit_bytes, err)
        elif tag == 0x30:
            p = get_varint(p, end, &x.memcg_usage_bytes, err)
        elif tag == 0x38:
            p = get_varint(p, end, &x.total_vm_bytes, err)
        elif tag == 0x40:
            p = get_varint(p, end, &x.rss_bytes, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 8), err)
        if p == NULL:
            return wire_fail_in(err, "OomKillDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_signal(const tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                        tapio_signal_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "SignalDetails", 0)
        if tag == 0x08:
            p = get_u32(p, end, &x.signal, err)
        elif tag == 0x10:
            p = get_u32(p, end, <uint32_t *>&x.code, err)
        elif tag == 0x18:
            p = get_u32(p, end, &x.sender_pid, err)
        elif tag == 0x22:
            p = get_ref(b, p, end, &x.sender_comm, MAX_COMM_BYTES, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 4), err)
        if p == NULL:
            return wire_fail_in(err, "SignalDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_throttled(const uint8_t *p, const uint8_t *end,
                                           tapio_throttled_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "ThrottledDetails", 0)
        if tag == 0x09:
            p = get_fixed64(p, end, &x.first_timestamp_ns, err)
        elif tag == 0x11:
            p = get_fixed64(p, end, &x.last_timestamp_ns, err)
        elif tag == 0x18:
            p = get_varint(p, end, &x.exec, err)
        elif tag == 0x20:
            p = get_varint(p, end, &x.tcp_connect, err)
        elif tag == 0x28:
            p = get_varint(p, end, &x.tcp_accept, err)
        elif tag == 0x30:
            p = get_varint(p, end, &x.tcp_close, err)
        elif tag == 0x38:
            p = get_u32(p, end, &x.budget, err)
        elif tag == 0x40:
            p = get_u32(p, end, &x.burst, err)
        elif tag == 0x48:
            p = get_varint(p, end, &x.interval_ns, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 9), err)
        if p == NULL:
            return wire_fail_in(err, "ThrottledDetails", tag >> 3)
    return p


cdef inline const uint8_t *parse_collapsed(const uint8_t *p, const uint8_t *end,
                                           tapio_collapsed_rec *x, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Collapsed", 0)
        if tag == 0x09:
            p = get_fixed64(p, end, &x.first_timestamp_ns, err)
        elif tag == 0x11:
            p = get_fixed64(p, end, &x.last_timestamp_ns, err)
        elif tag == 0x18:
            p = get_varint(p, end, &x.bytes_sent, err)
        elif tag == 0x20:
            p = get_varint(p, end, &x.bytes_received, err)
        elif tag == 0x28:
            p = get_varint(p, end, &x.duration_min_ns, err)
        elif tag == 0x30:
            p = get_varint(p, end, &x.duration_max_ns, err)
        elif tag == 0x38:
            p = get_varint(p, end, &x.duration_total_ns, err)
        elif tag == 0x40:
            p = get_u32(p, end, &x.sport_min, err)
        elif tag == 0x48:
            p = get_u32(p, end, &x.sport_max, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 9), err)
        if p == NULL:
            return wire_fail_in(err, "Collapsed", tag >> 3)
    return p


cdef inline const uint8_t *parse_details(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                         tapio_record *rec, uint8_t kind, wire_error *err) noexcept nogil:
    """One occurrence of a details oneof member: another member starts over, the same one merges."""
    cdef bint fresh = rec.details != kind
    if fresh:  # (new records leave `d` as it was: it is zeroed here, when it is first set)
        memset(&rec.d, 0, sizeof(rec.d))
        rec.details = kind
    if kind == TAPIO_EVENT_EXEC:
        if fresh:
            span_set(b, &rec.d.exec.body, p, end)
        elif span_append(b, &rec.d.exec.body, p, end, err) == NULL:
            return NULL
        return parse_exec(b, p, end, &rec.d.exec, err)
    if kind == TAPIO_EVENT_EXIT:
        return parse_exit(p, end, &rec.d.exit, err)
    if kind == TAPIO_EVENT_OOM_KILL:
        return parse_oom(b, p, end, &rec.d.oom, err)
    if kind == TAPIO_EVENT_SIGNAL:
        return parse_signal(b, p, end, &rec.d.signal, err)
    if kind == TAPIO_EVENT_THROTTLED:
        return parse_throttled(p, end, &rec.d.throttled, err)
    return parse_tcp(b, p, end, &rec.d.tcp, err)


cdef inline const uint8_t *parse_event_context(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                               tapio_record *rec, wire_error *err) noexcept nogil:
    cdef tapio_context_rec *c
    if rec.context == 0:
        if grow(<void **>&b.contexts, &b.contexts_cap, sizeof(tapio_context_rec), b.n_contexts + 1) < 0:
            return wire_fail(err, WIRE_NO_MEMORY, p)
        c = &b.contexts[b.n_contexts]
        # two memsets of at most 64 bytes: GCC stores those inline, a larger one is `rep stos`
        memset(&c.fields[0], 0, 8 * sizeof(tapio_ref))
        memset(&c.fields[8], 0, 5 * sizeof(tapio_ref))
        c.n_labels = 0
        span_set(b, &c.body, p, end)
        b.n_contexts += 1
        rec.context = b.n_contexts
    else:
        c = &b.contexts[rec.context - 1]
        if span_append(b, &c.body, p, end, err) == NULL:
            return NULL
    return parse_context(b, p, end, c, err)


cdef inline const uint8_t *parse_event_process(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                               tapio_record *rec, wire_error *err) noexcept nogil:
    cdef tapio_process_rec *proc
    if rec.process == 0:
        if grow(<void **>&b.processes, &b.processes_cap, sizeof(tapio_process_rec), b.n_processes + 1) < 0:
            return wire_fail(err, WIRE_NO_MEMORY, p)
        proc = &b.processes[b.n_processes]
        memset(proc, 0, 3 * sizeof(tapio_ref))  # ancestors[] past n_ancestors are never read
        proc.start_time_ns = 0
        proc.n_ancestors = 0
        b.n_processes += 1
        rec.process = b.n_processes
    return parse_process(b, p, end, &b.processes[rec.process - 1], err)


cdef inline const uint8_t *parse_event_collapsed(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                                 tapio_record *rec, wire_error *err) noexcept nogil:
    if rec.collapsed == 0:  # another occurrence merges into the first (the last value wins)
        if grow(<void **>&b.collapses, &b.collapses_cap, sizeof(tapio_collapsed_rec), b.n_collapses + 1) < 0:
            return wire_fail(err, WIRE_NO_MEMORY, p)
        memset(&b.collapses[b.n_collapses], 0, sizeof(tapio_collapsed_rec))
        b.n_collapses += 1
        rec.collapsed = b.n_collapses
    return parse_collapsed(p, end, &b.collapses[rec.collapsed - 1], err)


cdef inline const uint8_t *parse_ledger(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                        wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    if not b.has_ledger:
        memset(b.ledger, 0, sizeof(b.ledger))
        b.has_ledger = 1
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Ledger", 0)
        if tag & 7 == WT_VARINT and 1 <= tag >> 3 <= 7:
            p = get_varint(p, end, &b.ledger[(tag >> 3) - 1], err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 7), err)
        if p == NULL:
            return wire_fail_in(err, "Ledger", tag >> 3)
    return p


cdef inline const uint8_t *parse_event(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                       tapio_record *rec, wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0, field = 0
    cdef const uint8_t *body = NULL
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "Event", 0)
        field = tag >> 3
        if tag == 0x0a:
            p = get_ref(b, p, end, &rec.id, MAX_ID_BYTES, err)
        elif tag == 0x10:
            p = get_u32(p, end, <uint32_t *>&rec.type, err)
        elif tag == 0x19:
            p = get_fixed64(p, end, &rec.timestamp_ns, err)
        elif tag == 0x20:
            p = get_u32(p, end, &rec.pid, err)
        elif tag == 0x28:
            p = get_u32(p, end, &rec.tid, err)
        elif tag == 0x30:
            p = get_u32(p, end, &rec.ppid, err)
        elif tag == 0x38:
            p = get_u32(p, end, &rec.uid, err)
        elif tag == 0x40:
            p = get_u32(p, end, &rec.gid, err)
        elif tag == 0x48:
            p = get_varint(p, end, &rec.cgroup_id, err)
        elif tag == 0x52:
            p = get_ref(b, p, end, &rec.comm, MAX_COMM_BYTES, err)
        elif tag == 0x58:
            p = get_u32(p, end, &rec.count, err)
        elif tag == 0x62:
            p = get_len(p, end, &body, err)
            if p != NULL:
                p = parse_event_context(b, body, p, rec, err)
        elif tag == 0x6a:
            p = get_len(p, end, &body, err)
            if p != NULL:
                p = parse_event_process(b, body, p, rec, err)
        elif tag == 0x72:
            p = get_len(p, end, &body, err)
            if p != NULL:
                p = parse_event_collapsed(b, body, p, rec, err)
        else:  # (nested, so that the tests above compile to a C switch)
            if tag & 7 == WT_LEN and 16 <= field <= 23:  # the details oneof
                p = get_len(p, end, &body, err)
                if p != NULL:
                    p = parse_details(b, body, p, rec, <uint8_t>(field - 15), err)
            else:
                p = skip_other(p, end, tag, field_mask(1, 14) | field_mask(16, 23), err)
        if p == NULL:
            return wire_fail_in(err, "Event", field)
    return p


cdef inline tapio_record *new_record(tapio_batch *b, const uint8_t *at, wire_error *err) noexcept nogil:
    cdef tapio_record *rec
    if b.count >= MAX_EVENTS:
        wire_fail(err, WIRE_TOO_MANY_EVENTS, at)
        return NULL
    if grow(<void **>&b.records, &b.records_cap, sizeof(tapio_record), b.count + 1) < 0:
        wire_fail(err, WIRE_NO_MEMORY, at)
        return NULL
    rec = &b.records[b.count]
    # everything but the details union, which parse_details() zeroes when it is set
    rec.timestamp_ns = rec.cgroup_id = 0
    rec.id.off = rec.id.len = rec.comm.off = rec.comm.len = 0
    rec.type = 0
    rec.pid = rec.tid = rec.ppid = rec.uid = rec.gid = rec.count = 0
    rec.context = rec.process = rec.collapsed = 0
    rec.details = 0
    b.count += 1
    return rec


cdef inline const uint8_t *parse_batch(tapio_batch *b, const uint8_t *p, const uint8_t *end,
                                       wire_error *err) noexcept nogil:
    cdef uint32_t tag = 0
    cdef const uint8_t *body = NULL
    cdef tapio_record *rec
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "EventBatch", 0)
        if tag == 0x1a:
            p = get_len(p, end, &body, err)
            if p != NULL:
                rec = new_record(b, body, err)
                if rec != NULL:
                    rec.wire.off = <uint32_t>(body - b.buf)
                    rec.wire.len = <uint32_t>(p - body)
                p = parse_event(b, body, p, rec, err) if rec != NULL else NULL
        elif tag == 0x08:
            p = get_varint(p, end, &b.batch_id, err)
        elif tag == 0x12:
            p = get_ref(b, p, end, &b.collector_id, MAX_NAME_BYTES, err)
        elif tag == 0x21:
            p = get_fixed64(p, end, &b.created_at_ns, err)
        elif tag == 0x28:
            p = get_varint(p, end, &b.kernel_drops, err)
        elif tag == 0x30:
            p = get_u32(p, end, <uint32_t *>&b.path, err)
        elif tag == 0x3a:
            p = get_ref(b, p, end, &b.node_name, MAX_NAME_BYTES, err)
        elif tag == 0x40:
            p = get_varint(p, end, &b.processor_drops, err)
        elif tag == 0x48:
            p = get_varint(p, end, &b.buffer_drops, err)
        elif tag == 0x50:
            p = get_varint(p, end, &b.first_seq, err)
        elif tag == 0x58:
            p = get_varint(p, end, &b.last_seq, err)
        elif tag == 0x62:
            p = get_len(p, end, &body, err)
            if p != NULL:
                p = parse_ledger(b, body, p, err)
        else:
            p = skip_other(p, end, tag, field_mask(1, 12), err)
        if p == NULL:
            return wire_fail_in(err, "EventBatch", tag >> 3)
    return p


cdef inline void reset_request(tapio_batch *b, uint8_t kind) noexcept nogil:
    """The request oneof switched member: forget what the previous one held."""
    b.count = b.n_contexts = b.n_processes = b.n_collapses = b.n_spans = 0
    b.batch_id = b.created_at_ns = b.kernel_drops = b.processor_drops = b.buffer_drops = 0
    b.first_seq = b.last_seq = 0
    b.has_ledger = 0
    b.event_pieces.more = b.event_pieces.tail = 0
    b.collector_id.off = b.collector_id.len = b.node_name.off = b.node_name.len = 0
    b.path = 0
    b.kind = kind


cdef inline const uint8_t *parse_request(tapio_batch *b, wire_error *err) noexcept nogil:
    """The whole input, b.buf[0:b.size]; sets b.kind (KIND_NONE when no member is set)."""
    cdef const uint8_t *p = b.buf
    cdef const uint8_t *end = b.buf + b.size
    cdef const uint8_t *body = NULL
    cdef uint32_t tag = 0, field = 0
    cdef tapio_record *rec
    while p < end:
        p = get_tag(p, end, &tag, err)
        if p == NULL:
            return wire_fail_in(err, "TapioStreamEventsRequest", 0)
        field = tag >> 3
        if tag & 7 == WT_LEN and 1 <= field <= 4:
            p = get_len(p, end, &body, err)
            if p != NULL and b.kind != field:
                reset_request(b, <uint8_t>field)
                if field == KIND_EVENT:
                    rec = new_record(b, body, err)
                    if rec == NULL:
                        p = NULL
                    else:
                        rec.wire.off = <uint32_t>(body - b.buf)
                        rec.wire.len = <uint32_t>(p - body)
                        span_set(b, &b.event_pieces, body, p)
            elif p != NULL and field == KIND_EVENT:  # the event again: its bodies merge
                p = span_append(b, &b.event_pieces, body, p, err)
            if p != NULL and field == KIND_BATCH:
                p = parse_batch(b, body, p, err)
            elif p != NULL and field == KIND_EVENT:
                p = parse_event(b, body, p, &b.records[0], err)
            # control and hello are rare: the protobuf library reads them (DecodedBatch.parse)
        else:
            p = skip_other(p, end, tag, field_mask(1, 4), err)
        if p == NULL:
            return wire_fail_in(err, "TapioStreamEventsRequest", field)
    return end
