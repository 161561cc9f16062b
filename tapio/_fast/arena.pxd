from libc.stdint cimport uint32_t, uint64_t, UINT32_MAX, UINT64_MAX
from libc.string cimport memcpy
from tapio._fast.redact cimport redact_config, redact_exec
from tapio._fast.throttle cimport throttle_t, throttle_admit
from tapio._fast.events cimport (
    tapio_event, tapio_header, tapio_exec, tapio_exit, tapio_tcp, tapio_oom, tapio_signal,
    TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT,
    TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_OOM_KILL, TAPIO_EVENT_SIGNAL, TAPIO_EVENT_THROTTLED,
    tapio_throttled,
)


cdef struct slot_totals:
    # What a slot that stands for several events (repeat > 1) sums up: tapio.v1.Collapsed, in
    # kernel units (CLOCK_BOOTTIME stamps). Only valid while repeat > 1: arena_fold() fills it
    # from the slot's own event when the first repeat arrives, so a push never touches it.
    uint64_t first_ns
    uint64_t last_ns
    uint64_t bytes_sent
    uint64_t bytes_received
    uint64_t duration_min_ns
    uint64_t duration_max_ns
    uint64_t duration_total_ns
    uint32_t sport_min
    uint32_t sport_max


cdef struct arena_t:
    # Slot i holds one event in its kernel layout (union tapio_event). The side arrays hold what
    # the collector's processor adds before encoding: how many repeats the event stands for and
    # their totals, and references to pre-encoded Context/Process fields (tag, length and body). Such a
    # reference points into a bytes object owned by an enrichment cache, which keeps it alive
    # until the arena is encoded and reset (the processor does both without yielding between).
    char *slots
    uint32_t capacity       # slots allocated
    uint32_t limit          # slots in use before the arena reports full (<= capacity)
    uint32_t count
    uint64_t malformed      # records refused for a bad size or type
    uint32_t *repeat
    slot_totals *totals
    const char **ctx_ptr
    uint32_t *ctx_len
    const char **proc_ptr
    uint32_t *proc_len
    const redact_config *redact     # secrets out of argv as exec events come in; NULL: kept
    throttle_t *throttle            # the per-cgroup budget records must fit; NULL: none


# arena_push() results
cdef enum:
    PUSH_OK = 0
    PUSH_FULL = 1        # stored, and the arena is now full (count == limit)
    PUSH_MALFORMED = 2   # not stored: counted in `malformed`
    PUSH_THROTTLED = 3   # not stored: over its cgroup's budget, counted in the throttle


cdef inline tapio_event *arena_slot(const arena_t *a, uint32_t i) noexcept nogil:
    # every event struct is a multiple of 8 bytes (tests/test_layout.py): slots stay aligned
    return <tapio_event *>(a.slots + <size_t>i * sizeof(tapio_event))


cdef inline size_t event_size(uint32_t type) noexcept nogil:
    """The size a record of this type has in the kernel layout; 0 for an unknown type."""
    if type == TAPIO_EVENT_EXEC:
        return sizeof(tapio_exec)
    if type == TAPIO_EVENT_EXIT:
        return sizeof(tapio_exit)
    if type == TAPIO_EVENT_TCP_CONNECT or type == TAPIO_EVENT_TCP_ACCEPT or type == TAPIO_EVENT_TCP_CLOSE:
        return sizeof(tapio_tcp)
    if type == TAPIO_EVENT_OOM_KILL:
        return sizeof(tapio_oom)
    if type == TAPIO_EVENT_SIGNAL:
        return sizeof(tapio_signal)
    if type == TAPIO_EVENT_THROTTLED:
        return sizeof(tapio_throttled)
    return 0


cdef inline bint event_is_tcp(uint32_t type) noexcept nogil:
    return type == TAPIO_EVENT_TCP_CONNECT or type == TAPIO_EVENT_TCP_ACCEPT or type == TAPIO_EVENT_TCP_CLOSE


cdef inline uint64_t add_saturating(uint64_t a, uint64_t b) noexcept nogil:
    # a sum that passes 2**64-1 stays there: a huge total must not wrap into a small one
    return a + b if a <= UINT64_MAX - b else UINT64_MAX


cdef inline void totals_add(slot_totals *t, const tapio_event *e) noexcept nogil:
    cdef uint32_t type = e.hdr.type
    cdef uint64_t duration = 0
    if e.hdr.timestamp_ns < t.first_ns:
        t.first_ns = e.hdr.timestamp_ns
    if e.hdr.timestamp_ns > t.last_ns:
        t.last_ns = e.hdr.timestamp_ns
    if event_is_tcp(type):
        t.bytes_sent = add_saturating(t.bytes_sent, e.tcp.bytes_sent)
        t.bytes_received = add_saturating(t.bytes_received, e.tcp.bytes_received)
        if e.tcp.sport < t.sport_min:
            t.sport_min = e.tcp.sport
        if e.tcp.sport > t.sport_max:
            t.sport_max = e.tcp.sport
        duration = e.tcp.duration_ns
    elif type == TAPIO_EVENT_EXIT:
        duration = e.exit.duration_ns
    if duration < t.duration_min_ns:
        t.duration_min_ns = duration
    if duration > t.duration_max_ns:
        t.duration_max_ns = duration
    t.duration_total_ns = add_saturating(t.duration_total_ns, duration)


cdef inline void arena_fold(arena_t *a, uint32_t i, const tapio_event *e) noexcept nogil:
    """Count event e (a repeat of slot i's event, not stored) into slot i: its repeat count and
    its totals, so that what e said is not lost when it is dropped."""
    cdef slot_totals *t = &a.totals[i]
    if a.repeat[i] <= 1:  # the first repeat: start from the slot's own event
        t.first_ns = t.duration_min_ns = UINT64_MAX
        t.last_ns = t.bytes_sent = t.bytes_received = t.duration_max_ns = t.duration_total_ns = 0
        t.sport_max = 0
        t.sport_min = UINT32_MAX if event_is_tcp(e.hdr.type) else 0  # no ports: no range
        totals_add(t, arena_slot(a, i))
        a.repeat[i] = 1
    totals_add(t, e)
    a.repeat[i] += 1


cdef inline tapio_event *arena_claim(arena_t *a) noexcept nogil:
    """The next free slot, its side data reset, counted in; the caller fills the event (and has
    made sure there is a free slot)."""
    cdef uint32_t i = a.count
    a.repeat[i] = 1
    a.ctx_ptr[i] = NULL
    a.ctx_len[i] = 0
    a.proc_ptr[i] = NULL
    a.proc_len[i] = 0
    a.count = i + 1
    return arena_slot(a, i)


cdef inline int arena_push(arena_t *a, const void *data, size_t size) noexcept nogil:
    """Copy one record into the next free slot (the caller makes sure there is one).

    The ring buffer promises no alignment, so the header is read through memcpy; the record must
    have exactly the size its type declares."""
    cdef tapio_header hdr
    cdef tapio_event *e
    if size < sizeof(tapio_header):
        a.malformed += 1
        return PUSH_MALFORMED
    memcpy(&hdr, data, sizeof(hdr))
    if size != event_size(hdr.type):
        a.malformed += 1
        return PUSH_MALFORMED
    if a.throttle != NULL and not throttle_admit(a.throttle, &hdr):
        return PUSH_THROTTLED   # before the copy: a suppressed event costs a lookup, no more
    e = arena_claim(a)
    memcpy(e, data, size)
    if hdr.type == TAPIO_EVENT_EXEC and a.redact != NULL:
        redact_exec(a.redact, &e.exec)   # here, so that no path and no reader sees the secret
    return PUSH_FULL if a.count >= a.limit else PUSH_OK


cdef class EventArena:
    cdef arena_t c
    cdef object redactor            # owns the config that c.redact points at
    cdef object throttler           # owns the table that c.throttle points at
