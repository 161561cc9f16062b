# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The collector's per-cgroup budget (--cgroup-budget): the table (throttle.pxd does the per-event
work, in C) and the `throttled` summaries it turns into events.

An EventArena given a Throttle (EventArena.set_throttle) asks it about every record pushed into
it, kernel or test, before the record is copied: both paths, raw and semantic, only ever see what
the budget let through. `emit()` writes one `throttled` event per cgroup whose interval with
suppressed events has ended into the arena, where it goes the way of every other event (enriched
with its cgroup's context on the semantic path, encoded, delivered, counted in the ledger).
"""
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from tapio._fast.arena cimport EventArena, arena_t, arena_claim
from tapio._fast.events cimport tapio_event, tapio_throttled, TAPIO_EVENT_THROTTLED
from tapio._fast.hashmap cimport u64map_init, u64map_free, u64map_put, u64map_clear
from tapio._fast.throttle cimport throttle_entry, THROTTLE_KINDS

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec *tp)
    enum:
        CLOCK_BOOTTIME

# the routine types in the order of throttle_entry.counts
KINDS = ("exec", "tcp_connect", "tcp_accept", "tcp_close")
DEFAULT_CGROUPS = 4096


cdef uint64_t boottime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_BOOTTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef class Throttle:
    """`budget` routine events per `interval_ns` for each cgroup, `burst` at once (default: one
    interval's budget). At most `cgroups` cgroups are tracked at a time; idle ones are forgotten
    (a fresh entry is a full bucket, so forgetting them changes no verdict); while the table is
    full, new cgroups' events pass and are counted as `untracked`."""

    def __cinit__(self, uint32_t budget, uint64_t interval_ns=1000000000, uint32_t burst=0,
                  uint32_t cgroups=DEFAULT_CGROUPS):
        if budget == 0:
            raise ValueError("a cgroup budget needs at least 1 event per interval")
        if interval_ns < 1000000 or interval_ns > 3600 * 1000000000:
            raise ValueError("a cgroup budget's interval is between 1ms and 1h")
        if interval_ns // budget == 0:
            raise ValueError(f"a budget of {budget} events per {interval_ns} ns is more than one "
                             "event per nanosecond")
        if burst and (burst - 1) > (1 << 62) // (interval_ns // budget):
            raise ValueError(f"a burst of {burst} events at {budget} per {interval_ns} ns spans "
                             "more time than the budget can count")
        if cgroups < 16:
            raise ValueError("a cgroup budget tracks at least 16 cgroups")
        self.c.budget = budget
        self.c.burst = burst or budget
        self.c.interval_ns = interval_ns
        self.c.period_ns = interval_ns // budget
        self.c.tau_ns = (self.c.burst - 1) * self.c.period_ns
        self.c.capacity = cgroups
        self.c.entries = <throttle_entry *>PyMem_Calloc(cgroups, sizeof(throttle_entry))
        if self.c.entries == NULL:
            raise MemoryError()
        u64map_init(&self.c.index, cgroups * 2)

    def __dealloc__(self):
        PyMem_Free(self.c.entries)
        u64map_free(&self.c.index)

    def attach(self, EventArena arena not None):
        """Judge every record pushed into `arena` from now on (the arena keeps this alive)."""
        arena.throttler = self
        arena.c.throttle = &self.c

    @staticmethod
    def detach(EventArena arena not None):
        """Let every record into `arena` again."""
        arena.c.throttle = NULL
        arena.throttler = None

    @property
    def budget(self):
        return self.c.budget

    @property
    def burst(self):
        return self.c.burst

    @property
    def interval_ns(self):
        return self.c.interval_ns

    @property
    def suppressed(self):
        """Events held back so far (each is in exactly one `throttled` event, sent or pending)."""
        return self.c.suppressed

    @property
    def untracked(self):
        """Routine events let through unjudged because every entry of the table was in use."""
        return self.c.untracked

    @property
    def cgroups(self):
        """Cgroups in the table now."""
        return self.c.n_entries

    @property
    def pending(self):
        """Suppressed events whose `throttled` event has not been made yet."""
        cdef uint32_t i, k
        cdef uint64_t n = 0
        for i in range(self.c.n_entries):
            for k in range(THROTTLE_KINDS):
                n += self.c.entries[i].counts[k]
        return n

    def emit(self, EventArena arena not None, bint everything=False, now_ns=None):
        """Write a `throttled` event into the arena for each cgroup whose interval with
        suppressed events has ended by `now_ns` (CLOCK_BOOTTIME; default: now), or for every
        cgroup with suppressed events when `everything` (at exit). Stops when the arena is full:
        the rest wait for the next call. Returns [(cgroup_id, counts by KINDS)] of the events
        written (one tuple per cgroup and interval: the collector's metrics add them up)."""
        cdef arena_t *a = &arena.c
        cdef uint64_t now = boottime_ns() if now_ns is None else now_ns
        cdef throttle_entry *e
        cdef tapio_event *ev
        cdef tapio_throttled *x
        cdef uint32_t i
        out = []
        for i in range(self.c.n_entries):
            e = &self.c.entries[i]
            if e.due_ns == 0 or (e.due_ns > now and not everything):
                continue
            if a.count >= a.limit:
                break
            ev = arena_claim(a)
            x = &ev.throttled
            memset(x, 0, sizeof(tapio_throttled))
            memcpy(&x.hdr, &e.last, sizeof(x.hdr))
            x.hdr.type = TAPIO_EVENT_THROTTLED
            x.hdr.timestamp_ns = e.due_ns if e.due_ns <= now else now   # cut short at exit
            x.first_ns = e.first_ns
            x.last_ns = e.last_ns
            x.exec, x.tcp_connect, x.tcp_accept, x.tcp_close = (
                e.counts[0], e.counts[1], e.counts[2], e.counts[3])
            x.interval_ns = self.c.interval_ns
            x.budget = self.c.budget
            x.burst = self.c.burst
            out.append((e.cgroup_id, (e.counts[0], e.counts[1], e.counts[2], e.counts[3])))
            e.sent_ns = e.due_ns
            e.due_ns = 0
            e.counts[0] = e.counts[1] = e.counts[2] = e.counts[3] = 0
        if self.c.n_entries * 2 > self.c.capacity:
            self._forget_idle(now)
        return out

    cdef void _forget_idle(self, uint64_t now) noexcept:
        """Drop the entries with nothing pending whose bucket is full again (tat <= now): a
        fresh entry would judge their next event alike."""
        cdef uint32_t i, kept = 0
        u64map_clear(&self.c.index)
        for i in range(self.c.n_entries):
            if self.c.entries[i].due_ns == 0 and self.c.entries[i].tat <= now:
                continue
            if kept != i:
                self.c.entries[kept] = self.c.entries[i]
            u64map_put(&self.c.index, self.c.entries[kept].cgroup_id, kept)
            kept += 1
        self.c.n_entries = kept

    def stats(self):
        return {"suppressed": self.c.suppressed, "untracked": self.c.untracked,
                "cgroups": self.c.n_entries, "pending": self.pending}
