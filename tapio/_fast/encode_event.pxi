# Included by codec.pyx (its cimports serve here).
# One kernel event (an arena slot, in its bpf/tapio_events.h layout) as a tapio.v1.Event message
# body: event_size() measures it, event_write() writes exactly that many bytes. Output is what the
# protobuf library writes: fields in number order, and a field with a one-byte tag (1-15) that
# holds zero, an empty string or false is left out, as proto3 does.

# kernel address families (linux/socket.h) and their IpFamily values on the wire
cdef enum:
    AF_INET = 2
    AF_INET6 = 10
    IP_FAMILY_IPV4 = 4
    IP_FAMILY_IPV6 = 6


cdef struct encode_opts:
    uint64_t boot_to_wall_ns  # added to CLOCK_BOOTTIME stamps: wall clock
    uint64_t page_size        # OOM page counts become bytes


# ---- fields ----

cdef inline size_t cstr_len(const char *s, size_t cap) noexcept nogil:
    """Length of a NUL-terminated kernel string in a buffer of cap bytes (cap when unterminated)."""
    cdef const char *nul = <const char *>memchr(s, 0, cap)
    return <size_t>(nul - s) if nul != NULL else cap


cdef inline size_t sz_uint(uint64_t v) noexcept nogil:
    return 1 + varint_size(v) if v else 0


cdef inline size_t sz_len(size_t n) noexcept nogil:
    return 1 + varint_size(n) + n if n else 0


cdef inline size_t sz_int32(int32_t v) noexcept nogil:
    # negative int32 values are sign-extended to 64 bits: ten bytes
    return sz_uint(<uint64_t><int64_t>v)


cdef inline uint8_t *w_uint(uint8_t *w, uint8_t tag, uint64_t v) noexcept nogil:
    if v:
        w[0] = tag
        w = put_varint(w + 1, v)
    return w


cdef inline uint8_t *w_int32(uint8_t *w, uint8_t tag, int32_t v) noexcept nogil:
    return w_uint(w, tag, <uint64_t><int64_t>v)


cdef inline uint8_t *w_bool(uint8_t *w, uint8_t tag, bint v) noexcept nogil:
    if v:
        w[0] = tag
        w[1] = 1
        w += 2
    return w


cdef inline uint8_t *w_fixed64(uint8_t *w, uint8_t tag, uint64_t v) noexcept nogil:
    if v:
        w[0] = tag
        w = put_fixed64(w + 1, v)
    return w


cdef inline uint8_t *w_text(uint8_t *w, uint8_t tag, const char *s, size_t n) noexcept nogil:
    """A kernel string as a proto3 string: bytes outside valid UTF-8 become '?'."""
    if n:
        w[0] = tag
        w = put_varint(w + 1, n)
        w = scrub_copy(w, <const uint8_t *>s, n)
    return w


cdef inline uint8_t *w_raw(uint8_t *w, uint8_t tag, const void *s, size_t n) noexcept nogil:
    if n:
        w[0] = tag
        w = put_varint(w + 1, n)
        memcpy(w, s, n)
        w += n
    return w


cdef inline uint8_t *w_message_head(uint8_t *w, uint32_t field, size_t n) noexcept nogil:
    """Tag and length of a submessage, written even when it is empty (that marks a oneof)."""
    return put_varint(put_varint(w, field << 3 | WT_LEN), n)


cdef struct event_id:
    # "ebpf-<n>" for consecutive n: incremented in place, no division per event
    uint8_t text[25]          # "ebpf-" and the up to 20 digits of a uint64
    size_t len


cdef inline void event_id_init(event_id *id, uint64_t n) noexcept nogil:
    cdef uint8_t digits[20]
    cdef size_t i = 20
    while True:
        i -= 1
        digits[i] = <uint8_t>(0x30 + n % 10)  # '0' + digit
        n //= 10
        if n == 0:
            break
    memcpy(id.text, b"ebpf-", 5)
    memcpy(id.text + 5, digits + i, 20 - i)
    id.len = 5 + 20 - i


cdef inline void event_id_next(event_id *id) noexcept nogil:
    cdef size_t i = id.len
    while i > 5 and id.text[i - 1] == 0x39:  # '9' carries
        i -= 1
        id.text[i] = 0x30
    if i > 5:
        id.text[i - 1] += 1
    else:  # all nines: one digit more (the caller keeps ids below 2**64)
        id.text[5] = 0x31
        id.text[id.len] = 0x30
        id.len += 1


# ---- exec: argv is args[0:args_size], NUL-separated; a final NUL ends the last argument ----

cdef inline size_t args_used(const tapio_exec *x) noexcept nogil:
    return x.args_size if x.args_size < TAPIO_ARGS_LEN else TAPIO_ARGS_LEN


cdef inline size_t args_fields_size(const tapio_exec *x) noexcept nogil:
    cdef const char *p = <const char *>&x.args[0]
    cdef const char *end = p + args_used(x)
    cdef const char *nul
    cdef size_t total = 0, n
    while p < end:
        nul = <const char *>memchr(p, 0, <size_t>(end - p))
        n = <size_t>((nul if nul != NULL else end) - p)
        total += 1 + varint_size(n) + n  # an empty argument is an element too
        if nul == NULL:
            break  # cut off by the kernel's copy: the last argument has no NUL
        p = nul + 1
    return total


cdef inline uint8_t *args_fields_write(uint8_t *w, const tapio_exec *x) noexcept nogil:
    cdef const char *p = <const char *>&x.args[0]
    cdef const char *end = p + args_used(x)
    cdef const char *nul
    cdef size_t n
    while p < end:
        nul = <const char *>memchr(p, 0, <size_t>(end - p))
        n = <size_t>((nul if nul != NULL else end) - p)
        w[0] = 0x12  # ExecDetails.args
        w = put_varint(w + 1, n)
        w = scrub_copy(w, <const uint8_t *>p, n)
        if nul == NULL:
            break
        p = nul + 1
    return w


cdef inline size_t exec_size(const tapio_exec *x) noexcept nogil:
    return (sz_len(cstr_len(x.filename, TAPIO_FILENAME_LEN)) + args_fields_size(x)
            + sz_uint(x.args_count) + (2 if x.flags & TAPIO_EXEC_ARGS_TRUNCATED else 0)
            + (2 if x.flags & TAPIO_EXEC_ARGS_REDACTED else 0))


cdef inline uint8_t *exec_write(uint8_t *w, const tapio_exec *x) noexcept nogil:
    w = w_text(w, 0x0a, x.filename, cstr_len(x.filename, TAPIO_FILENAME_LEN))
    w = args_fields_write(w, x)
    w = w_uint(w, 0x18, x.args_count)
    w = w_bool(w, 0x20, x.flags & TAPIO_EXEC_ARGS_TRUNCATED)
    return w_bool(w, 0x28, x.flags & TAPIO_EXEC_ARGS_REDACTED)


# ---- exit ----

cdef inline size_t exit_size(const tapio_exit *x, const encode_opts *o) noexcept nogil:
    return (sz_int32(x.exit_code) + sz_uint(x.signal) + (2 if x.core_dumped else 0)
            + (9 if x.start_ns + o.boot_to_wall_ns else 0) + sz_uint(x.duration_ns))


cdef inline uint8_t *exit_write(uint8_t *w, const tapio_exit *x, const encode_opts *o) noexcept nogil:
    w = w_int32(w, 0x08, x.exit_code)
    w = w_uint(w, 0x10, x.signal)
    w = w_bool(w, 0x18, x.core_dumped != 0)
    w = w_fixed64(w, 0x21, x.start_ns + o.boot_to_wall_ns)
    return w_uint(w, 0x28, x.duration_ns)


# ---- tcp connect / accept / close ----

cdef inline uint32_t ip_family(const tapio_tcp *x) noexcept nogil:
    if x.family == AF_INET:
        return IP_FAMILY_IPV4
    if x.family == AF_INET6:
        return IP_FAMILY_IPV6
    return 0  # the kernel side only sends the two above; anything else goes without addresses


cdef inline size_t addr_len(uint32_t family) noexcept nogil:
    return 4 if family == IP_FAMILY_IPV4 else 16 if family == IP_FAMILY_IPV6 else 0


cdef inline uint32_t connect_result(const tapio_tcp *x) noexcept nogil:
    """ConnectResult of a connect event from its errno; OK (0) for the other TCP events."""
    if x.hdr.type != TAPIO_EVENT_TCP_CONNECT or x.error == 0:
        return 0
    if x.error == 111:  # ECONNREFUSED
        return 1
    if x.error == 110:  # ETIMEDOUT
        return 2
    if x.error == 104:  # ECONNRESET
        return 3
    if x.error == 113 or x.error == 101:  # EHOSTUNREACH, ENETUNREACH
        return 4
    return 5


cdef inline size_t tcp_size(const tapio_tcp *x) noexcept nogil:
    cdef uint32_t family = ip_family(x)
    return (sz_uint(family) + 2 * sz_len(addr_len(family)) + sz_uint(x.sport) + sz_uint(x.dport)
            + sz_uint(connect_result(x)) + sz_int32(x.error) + sz_uint(x.duration_ns)
            + sz_uint(x.bytes_sent) + sz_uint(x.bytes_received)
            + (2 if x.direction == TAPIO_TCP_PASSIVE else 0))


cdef inline uint8_t *tcp_write(uint8_t *w, const tapio_tcp *x) noexcept nogil:
    cdef uint32_t family = ip_family(x)
    w = w_uint(w, 0x08, family)
    w = w_raw(w, 0x12, x.saddr, addr_len(family))
    w = w_raw(w, 0x1a, x.daddr, addr_len(family))
    w = w_uint(w, 0x20, x.sport)
    w = w_uint(w, 0x28, x.dport)
    w = w_uint(w, 0x30, connect_result(x))
    w = w_int32(w, 0x38, x.error)
    w = w_uint(w, 0x40, x.duration_ns)
    w = w_uint(w, 0x48, x.bytes_sent)
    w = w_uint(w, 0x50, x.bytes_received)
    return w_bool(w, 0x58, x.direction == TAPIO_TCP_PASSIVE)


# ---- oom kill and signal ----

cdef inline uint64_t page_bytes(uint64_t pages, const encode_opts *o) noexcept nogil:
    # saturates instead of wrapping: a garbage page count must not pass for a small size
    return pages * o.page_size if pages <= UINT64_MAX // o.page_size else UINT64_MAX


cdef inline size_t oom_size(const tapio_oom *x, const encode_opts *o) noexcept nogil:
    return (sz_uint(x.trigger_pid) + sz_len(cstr_len(x.trigger_comm, TAPIO_COMM_LEN))
            + sz_uint(x.memcg_id) + sz_len(cstr_len(x.memcg_name, TAPIO_CGROUP_NAME_LEN))
            + sz_uint(page_bytes(x.memcg_limit_pages, o)) + sz_uint(page_bytes(x.memcg_usage_pages, o))
            + sz_uint(page_bytes(x.total_vm_pages, o)) + sz_uint(page_bytes(x.rss_pages, o)))


cdef inline uint8_t *oom_write(uint8_t *w, const tapio_oom *x, const encode_opts *o) noexcept nogil:
    w = w_uint(w, 0x08, x.trigger_pid)
    w = w_text(w, 0x12, x.trigger_comm, cstr_len(x.trigger_comm, TAPIO_COMM_LEN))
    w = w_uint(w, 0x18, x.memcg_id)
    w = w_text(w, 0x22, x.memcg_name, cstr_len(x.memcg_name, TAPIO_CGROUP_NAME_LEN))
    w = w_uint(w, 0x28, page_bytes(x.memcg_limit_pages, o))
    w = w_uint(w, 0x30, page_bytes(x.memcg_usage_pages, o))
    w = w_uint(w, 0x38, page_bytes(x.total_vm_pages, o))
    return w_uint(w, 0x40, page_bytes(x.rss_pages, o))


cdef inline size_t signal_size(const tapio_signal *x) noexcept nogil:
    return (sz_uint(x.signal) + sz_int32(x.code) + sz_uint(x.sender_pid)
            + sz_len(cstr_len(x.sender_comm, TAPIO_COMM_LEN)))


cdef inline uint8_t *signal_write(uint8_t *w, const tapio_signal *x) noexcept nogil:
    w = w_uint(w, 0x08, x.signal)
    w = w_int32(w, 0x10, x.code)
    w = w_uint(w, 0x18, x.sender_pid)
    return w_text(w, 0x22, x.sender_comm, cstr_len(x.sender_comm, TAPIO_COMM_LEN))


# ---- throttled: what the per-cgroup budget held back (made by the collector) ----

cdef inline size_t throttled_size(const tapio_throttled *x, const encode_opts *o) noexcept nogil:
    return ((9 if x.first_ns + o.boot_to_wall_ns else 0) + (9 if x.last_ns + o.boot_to_wall_ns else 0)
            + sz_uint(x.exec) + sz_uint(x.tcp_connect) + sz_uint(x.tcp_accept)
            + sz_uint(x.tcp_close) + sz_uint(x.budget) + sz_uint(x.burst) + sz_uint(x.interval_ns))


cdef inline uint8_t *throttled_write(uint8_t *w, const tapio_throttled *x, const encode_opts *o) noexcept nogil:
    w = w_fixed64(w, 0x09, x.first_ns + o.boot_to_wall_ns)
    w = w_fixed64(w, 0x11, x.last_ns + o.boot_to_wall_ns)
    w = w_uint(w, 0x18, x.exec)
    w = w_uint(w, 0x20, x.tcp_connect)
    w = w_uint(w, 0x28, x.tcp_accept)
    w = w_uint(w, 0x30, x.tcp_close)
    w = w_uint(w, 0x38, x.budget)
    w = w_uint(w, 0x40, x.burst)
    return w_uint(w, 0x48, x.interval_ns)


# ---- collapsed: the totals of a slot that stands for several events ----

cdef inline size_t collapsed_size(const slot_totals *t, const encode_opts *o) noexcept nogil:
    return ((9 if t.first_ns + o.boot_to_wall_ns else 0) + (9 if t.last_ns + o.boot_to_wall_ns else 0)
            + sz_uint(t.bytes_sent) + sz_uint(t.bytes_received) + sz_uint(t.duration_min_ns)
            + sz_uint(t.duration_max_ns) + sz_uint(t.duration_total_ns) + sz_uint(t.sport_min)
            + sz_uint(t.sport_max))


cdef inline uint8_t *collapsed_write(uint8_t *w, const slot_totals *t, size_t size,
                                     const encode_opts *o) noexcept nogil:
    w = w_message_head(w, 14, size)  # Event.collapsed
    w = w_fixed64(w, 0x09, t.first_ns + o.boot_to_wall_ns)
    w = w_fixed64(w, 0x11, t.last_ns + o.boot_to_wall_ns)
    w = w_uint(w, 0x18, t.bytes_sent)
    w = w_uint(w, 0x20, t.bytes_received)
    w = w_uint(w, 0x28, t.duration_min_ns)
    w = w_uint(w, 0x30, t.duration_max_ns)
    w = w_uint(w, 0x38, t.duration_total_ns)
    w = w_uint(w, 0x40, t.sport_min)
    return w_uint(w, 0x48, t.sport_max)


# ---- one event ----

cdef inline size_t details_size(const tapio_event *e, const encode_opts *o) noexcept nogil:
    cdef uint32_t t = e.hdr.type
    if t == TAPIO_EVENT_EXEC:
        return exec_size(&e.exec)
    if t == TAPIO_EVENT_EXIT:
        return exit_size(&e.exit, o)
    if t == TAPIO_EVENT_TCP_CONNECT or t == TAPIO_EVENT_TCP_ACCEPT or t == TAPIO_EVENT_TCP_CLOSE:
        return tcp_size(&e.tcp)
    if t == TAPIO_EVENT_OOM_KILL:
        return oom_size(&e.oom, o)
    if t == TAPIO_EVENT_SIGNAL:
        return signal_size(&e.signal)
    if t == TAPIO_EVENT_THROTTLED:
        return throttled_size(&e.throttled, o)
    return 0  # the arena refuses other types


cdef inline uint8_t *details_write(uint8_t *w, const tapio_event *e, const encode_opts *o) noexcept nogil:
    cdef uint32_t t = e.hdr.type
    if t == TAPIO_EVENT_EXEC:
        return exec_write(w, &e.exec)
    if t == TAPIO_EVENT_EXIT:
        return exit_write(w, &e.exit, o)
    if t == TAPIO_EVENT_TCP_CONNECT or t == TAPIO_EVENT_TCP_ACCEPT or t == TAPIO_EVENT_TCP_CLOSE:
        return tcp_write(w, &e.tcp)
    if t == TAPIO_EVENT_OOM_KILL:
        return oom_write(w, &e.oom, o)
    if t == TAPIO_EVENT_SIGNAL:
        return signal_write(w, &e.signal)
    if t == TAPIO_EVENT_THROTTLED:
        return throttled_write(w, &e.throttled, o)
    return w


cdef inline size_t event_size(const arena_t *a, uint32_t slot, const event_id *id, size_t details,
                              const encode_opts *o) noexcept nogil:
    """Size of the Event body of slot `slot`, whose details body is `details` bytes."""
    cdef const tapio_header *h = &arena_slot(a, slot).hdr
    cdef size_t collapsed
    cdef size_t n = 2 + id.len  # id: tag, length (< 128), "ebpf-<n>"
    n += 2  # type: 1..8
    n += 9 if h.timestamp_ns + o.boot_to_wall_ns else 0
    n += sz_uint(h.pid) + sz_uint(h.tid) + sz_uint(h.ppid) + sz_uint(h.uid) + sz_uint(h.gid)
    n += sz_uint(h.cgroup_id) + sz_len(cstr_len(h.comm, TAPIO_COMM_LEN))
    if a.repeat[slot] > 1:
        collapsed = collapsed_size(&a.totals[slot], o)
        n += 1 + varint_size(a.repeat[slot]) + 2 + collapsed  # count; collapsed: tag, length (< 128)
    if a.ctx_ptr[slot] != NULL:
        n += a.ctx_len[slot]
    if a.proc_ptr[slot] != NULL:
        n += a.proc_len[slot]
    return n + 2 + varint_size(details) + details  # details fields 16..23: two-byte tags


cdef inline uint8_t *event_write(uint8_t *w, const arena_t *a, uint32_t slot, const event_id *id,
                                 size_t details, const encode_opts *o) noexcept nogil:
    cdef const tapio_event *e = arena_slot(a, slot)
    cdef const tapio_header *h = &e.hdr
    w[0] = 0x0a
    w[1] = <uint8_t>id.len
    memcpy(w + 2, id.text, id.len)
    w += 2 + id.len
    w[0] = 0x10
    w[1] = <uint8_t>h.type
    w = w_fixed64(w + 2, 0x19, h.timestamp_ns + o.boot_to_wall_ns)
    w = w_uint(w, 0x20, h.pid)
    w = w_uint(w, 0x28, h.tid)
    w = w_uint(w, 0x30, h.ppid)
    w = w_uint(w, 0x38, h.uid)
    w = w_uint(w, 0x40, h.gid)
    w = w_uint(w, 0x48, h.cgroup_id)
    w = w_text(w, 0x52, h.comm, cstr_len(h.comm, TAPIO_COMM_LEN))
    if a.repeat[slot] > 1:
        w = w_uint(w, 0x58, a.repeat[slot])
    # context (12) and process (13) arrive encoded, tag and length included
    if a.ctx_ptr[slot] != NULL:
        memcpy(w, a.ctx_ptr[slot], a.ctx_len[slot])
        w += a.ctx_len[slot]
    if a.proc_ptr[slot] != NULL:
        memcpy(w, a.proc_ptr[slot], a.proc_len[slot])
        w += a.proc_len[slot]
    if a.repeat[slot] > 1:
        w = collapsed_write(w, &a.totals[slot], collapsed_size(&a.totals[slot], o), o)
    w = w_message_head(w, 15 + h.type, details)  # the type's oneof member: exec = 16, ...
    return details_write(w, e, o)


# ---- the events of a batch ----

cdef enum:
    # The most bytes one Event can take besides its context and process blobs, every field at its
    # widest: id, type, timestamp, five uint32s, cgroup id, comm, count, collapsed (tag, length,
    # two fixed64s, five uint64s, two uint32s), the details' tag and length, and the widest
    # details (exec: filename, then argv at worst 3 bytes per byte of args[] (a one-byte argument
    # cut off without NUL), args_count, args_truncated, args_redacted).
    MAX_EVENT_BYTES = (2 + 5 + 20 + 2 + 9 + 5 * 6 + 11 + 2 + TAPIO_COMM_LEN + 6
                       + 2 + 2 * 9 + 5 * 11 + 2 * 6 + 2 + 2
                       + 3 + TAPIO_FILENAME_LEN + 3 * TAPIO_ARGS_LEN + 6 + 2 + 2)


cdef inline size_t events_bound(const arena_t *a, const uint32_t *slots, size_t n) noexcept nogil:
    """An upper bound of what n events take inside an EventBatch (reads no event, only the sizes
    of their blobs)."""
    cdef size_t k, total = 0
    cdef uint32_t slot
    for k in range(n):
        slot = slots[k] if slots != NULL else <uint32_t>k
        total += 1 + 10 + MAX_EVENT_BYTES
        if a.ctx_ptr[slot] != NULL:
            total += a.ctx_len[slot]
        if a.proc_ptr[slot] != NULL:
            total += a.proc_len[slot]
    return total


cdef inline uint8_t *write_events(uint8_t *w, const arena_t *a, const uint32_t *slots, size_t n,
                                  uint64_t first_seq, const encode_opts *o) noexcept nogil:
    """Event k is slot slots[k] (or k without slots); the event in slot s has the id
    ebpf-<first_seq + s>, whichever batch and order it is sent in (the raw and semantic paths
    name a kernel event alike). Each event is measured and then written at once, while its slot
    is in the L1 cache. NULL if a written event is not the size measured: a bug in this file."""
    cdef size_t k, details, size
    cdef uint32_t slot, previous = 0
    cdef uint8_t *body
    cdef event_id id
    for k in range(n):
        slot = slots[k] if slots != NULL else <uint32_t>k
        if k == 0 or slot != previous + 1:
            event_id_init(&id, first_seq + slot)
        else:
            event_id_next(&id)           # consecutive slots: no division
        previous = slot
        details = details_size(arena_slot(a, slot), o)
        size = event_size(a, slot, &id, details, o)
        w[0] = 0x1a  # EventBatch.events
        body = put_varint(w + 1, size)
        w = event_write(body, a, slot, &id, details, o)
        if w != body + size:
            return NULL
    return w
