# The per-cgroup budget (--cgroup-budget), in C: whether a routine event may enter the arena.
#
# Each cgroup has a token bucket, kept as the generic cell rate algorithm keeps one: a single
# "theoretical arrival time" (tat) per cgroup. An event at time `now` fits when tat <= now + tau,
# and then moves tat on by one event's share of the interval (period). tau = (burst - 1) * period
# lets `burst` events through back to back. Times are the events' own CLOCK_BOOTTIME stamps, so the
# verdict says what the cgroup did, not how late the collector read it.
#
# What does not fit is counted by type in the cgroup's entry; throttling.pyx turns the counts into
# one `throttled` event per cgroup and interval. Exits, OOM kills and fatal signals always pass and
# cost nothing against the budget: they are what a person on call needs of a noisy cgroup.
#
# This runs where the collector first touches an event (arena_push, from the ring-buffer callback),
# before the record is copied, so a suppressed event costs one hash lookup. Why here and not in the
# BPF programs, measured on the same machine: here it adds ~9 ns per event on the collector's CPU
# (benchmarks/codec.py, "cgroup budget"); the same bucket in a BPF hash map adds ~100 ns to every
# run of the program, in the workload's own context (benchmarks/throttle_where.py), where the BPF
# time per event is already over its 1 us target, and the summaries' interval timer, counts by
# type and cgroup context all live in userspace anyway. The price: a storm's events still pass
# through the ring buffer (routine events may use 3/4 of it; priority ones keep the rest).
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from tapio._fast.events cimport (tapio_header, TAPIO_EVENT_EXEC, TAPIO_EVENT_TCP_CONNECT,
                                 TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE)
from tapio._fast.hashmap cimport u64map, u64map_get, u64map_put

cdef enum:
    THROTTLE_KINDS = 4          # exec, tcp_connect, tcp_accept, tcp_close: the routine types


cdef struct throttle_entry:
    uint64_t cgroup_id
    uint64_t tat                # the bucket: see above
    uint64_t due_ns             # end of the interval its pending counts belong to; 0: none pending
    uint64_t sent_ns            # due_ns of the latest summary made: the next one is for a later interval
    uint64_t first_ns           # the first and last suppressed event of the pending counts
    uint64_t last_ns
    uint64_t counts[4]          # THROTTLE_KINDS, pending
    tapio_header last           # the last suppressed event's header: who was so busy


cdef struct throttle_t:
    u64map index                # cgroup id -> position in entries
    throttle_entry *entries
    uint32_t n_entries
    uint32_t capacity
    uint64_t period_ns          # interval_ns / budget: one event's share
    uint64_t tau_ns             # (burst - 1) * period_ns
    uint64_t interval_ns
    uint32_t budget
    uint32_t burst
    uint64_t suppressed         # every event held back so far (the ledger's `throttled`)
    uint64_t untracked          # routine events let through because the table was full


cdef inline int throttle_kind(uint32_t type) noexcept nogil:
    """The routine type's index in counts[], or -1: a type that is never throttled."""
    if type == TAPIO_EVENT_EXEC:
        return 0
    if type == TAPIO_EVENT_TCP_CONNECT:
        return 1
    if type == TAPIO_EVENT_TCP_ACCEPT:
        return 2
    if type == TAPIO_EVENT_TCP_CLOSE:
        return 3
    return -1


cdef inline throttle_entry *throttle_entry_for(throttle_t *t, uint64_t cgroup_id) noexcept nogil:
    """The cgroup's entry, made fresh (a full bucket) on first sight; NULL when the table is full
    (emit() frees idle entries between rounds)."""
    cdef uint32_t i
    cdef throttle_entry *e
    if u64map_get(&t.index, cgroup_id, &i):
        return &t.entries[i]
    if t.n_entries >= t.capacity or not u64map_put(&t.index, cgroup_id, t.n_entries):
        return NULL
    e = &t.entries[t.n_entries]
    t.n_entries += 1
    e.cgroup_id = cgroup_id
    e.tat = 0
    e.due_ns = 0
    e.sent_ns = 0
    e.counts[0] = e.counts[1] = e.counts[2] = e.counts[3] = 0
    return e


cdef inline bint throttle_admit(throttle_t *t, const tapio_header *h) noexcept nogil:
    """Whether the event may go on; when not, it is counted against its cgroup."""
    cdef int kind = throttle_kind(h.type)
    cdef uint64_t now = h.timestamp_ns
    cdef throttle_entry *e
    if kind < 0:
        return True
    e = throttle_entry_for(t, h.cgroup_id)
    if e == NULL:
        t.untracked += 1
        return True
    if e.tat <= now or e.tat - now <= t.tau_ns:     # (no sum that could wrap)
        e.tat = (e.tat if e.tat > now else now) + t.period_ns
        return True
    if e.due_ns == 0:
        # the summary of this interval is due at its end; an event read after that interval's
        # summary was made (it waited in the ring buffer) goes into the next one: one summary
        # per cgroup and interval
        e.due_ns = (now // t.interval_ns + 1) * t.interval_ns
        if e.due_ns <= e.sent_ns:
            e.due_ns = e.sent_ns + t.interval_ns
        e.first_ns = now
        e.last_ns = now
    elif now < e.first_ns:
        e.first_ns = now
    if now > e.last_ns:
        e.last_ns = now
    e.counts[kind] += 1
    memcpy(&e.last, h, sizeof(tapio_header))
    t.suppressed += 1
    return False
