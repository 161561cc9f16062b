# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The semantic path's per-event work, over the arena in C: filter, enrich, collapse, prioritise.

For each batch of events in an EventArena, `SemanticProcessor.process()`:
  1. drops events of the collector's own process tree and of excluded commands, and keeps only
     events from included cgroups (when an include filter is set);
  2. points each kept event at its pre-encoded Context (by cgroup id) and Process (by pid), from
     C hash maps; only a miss calls into Python (the enrichment modules), once per cgroup or
     process, not once per event;
  3. collapses repeats inside the batch into the first one, with a count and the totals of
     what they said (bytes, times, durations, ports: tapio.v1.Collapsed);
  4. orders the survivors: priority events (OOM kills, fatal signals, failed exits) first.
Exec and exit events also keep the process table current (a Python call each: they are the
rare kind; connection events, the common kind, never leave C).

The result is an array of slot indices for BatchEncoder.encode(order=...); nothing is copied.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

cdef extern from "string.h" nogil:
    size_t strnlen(const char *s, size_t maxlen)

from tapio._fast.arena cimport EventArena, arena_t, arena_slot, arena_fold
from tapio._fast.events cimport (
    tapio_event, tapio_header, TAPIO_COMM_LEN, TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT,
    TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_OOM_KILL,
    TAPIO_EVENT_SIGNAL,
)
from tapio._fast.hashmap cimport (u64map, u64map_init, u64map_free, u64map_get, u64map_put,
                                  u64map_del, u64map_clear)

cdef enum:
    NO_BLOB = 0xFFFFFFFF        # a cached "nothing to attach"
    MAX_EXCLUDED_COMMS = 64


cdef inline bint is_priority(const tapio_event *e) noexcept nogil:
    cdef uint32_t t = e.hdr.type
    if t == TAPIO_EVENT_OOM_KILL or t == TAPIO_EVENT_SIGNAL:
        return True
    return t == TAPIO_EVENT_EXIT and (e.exit.exit_code != 0 or e.exit.signal != 0)


cdef inline uint64_t mix(uint64_t h, uint64_t v) noexcept nogil:
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2)
    return h


cdef uint64_t repeat_key(const tapio_event *e) noexcept nogil:
    """A hash of what makes two events the same occurrence again (not when they happened)."""
    cdef uint64_t h = mix(e.hdr.type, e.hdr.pid)
    cdef uint32_t t = e.hdr.type
    cdef int i
    h = mix(h, e.hdr.cgroup_id)
    if t == TAPIO_EVENT_TCP_CONNECT or t == TAPIO_EVENT_TCP_ACCEPT or t == TAPIO_EVENT_TCP_CLOSE:
        for i in range(0, 16, 8):
            h = mix(h, (<const uint64_t *>&e.tcp.daddr[i])[0])
        h = mix(h, (<uint64_t>e.tcp.dport << 32) | <uint32_t>e.tcp.error)
    elif t == TAPIO_EVENT_SIGNAL:
        h = mix(h, (<uint64_t>e.signal.signal << 32) | e.signal.sender_pid)
    elif t == TAPIO_EVENT_EXIT:
        h = mix(h, (<uint64_t>e.exit.signal << 32) | <uint32_t>e.exit.exit_code)
    return h


cdef bint same_occurrence(const tapio_event *a, const tapio_event *b) noexcept nogil:
    """Whether b repeats a: the same process doing the same thing (the hash only narrows down)."""
    cdef uint32_t t = a.hdr.type
    if t != b.hdr.type or a.hdr.pid != b.hdr.pid or a.hdr.cgroup_id != b.hdr.cgroup_id:
        return False
    if memcmp(a.hdr.comm, b.hdr.comm, TAPIO_COMM_LEN) != 0:
        return False
    if t == TAPIO_EVENT_TCP_CONNECT or t == TAPIO_EVENT_TCP_ACCEPT or t == TAPIO_EVENT_TCP_CLOSE:
        return (memcmp(a.tcp.daddr, b.tcp.daddr, 16) == 0 and a.tcp.dport == b.tcp.dport
                and a.tcp.error == b.tcp.error and a.tcp.family == b.tcp.family
                and a.tcp.direction == b.tcp.direction)
    if t == TAPIO_EVENT_SIGNAL:
        return a.signal.signal == b.signal.signal and a.signal.sender_pid == b.signal.sender_pid
    if t == TAPIO_EVENT_EXIT:
        return a.exit.exit_code == b.exit.exit_code and a.exit.signal == b.exit.signal
    # exec and OOM kill events are each their own occurrence
    return False


cdef class BlobCache:
    """uint64 key -> pre-encoded field bytes (or nothing), bounded; misses ask `resolve(key)`.

    Arena slots point into the cached bytes until their batch is encoded, so the cache only
    sheds entries between batches (begin_batch); a miss that finds it full is served uncached.
    """
    cdef u64map index
    cdef list blobs                 # the bytes, kept alive; the index maps keys to positions
    cdef object resolve
    cdef uint32_t capacity
    cdef bint stale                 # forget everything at the next batch
    cdef readonly uint64_t hits, misses, resets

    def __cinit__(self, resolve, uint32_t capacity):
        u64map_init(&self.index, capacity)
        self.capacity = capacity
        self.blobs = []
        self.resolve = resolve

    def __dealloc__(self):
        u64map_free(&self.index)

    cdef void begin_batch(self):
        if self.stale or self.index.used * 2 > self.capacity or len(self.blobs) > 2 * self.capacity:
            self.resets += 1
            self.stale = False
            u64map_clear(&self.index)
            self.blobs = []

    cdef inline uint32_t lookup(self, uint64_t key) except? 0xFFFFFFFE:
        """Position of the key's bytes in self.blobs, or NO_BLOB."""
        cdef uint32_t i
        if u64map_get(&self.index, key, &i):
            self.hits += 1
            return i
        self.misses += 1
        blob = self.resolve(key)
        if blob is None or not len(blob):
            i = NO_BLOB
        else:
            i = len(self.blobs)
            self.blobs.append(bytes(blob))
        u64map_put(&self.index, key, i)      # when full, just not cached until begin_batch
        return i

    cdef inline void forget(self, uint64_t key) noexcept:
        """The next lookup of `key` asks again (a process exec'd something new)."""
        u64map_del(&self.index, key)

    def __len__(self):
        return self.index.used


cdef class SemanticProcessor:
    """See the module docstring. Built by tapio.collector.processor from the enrichment modules."""
    cdef BlobCache contexts
    cdef BlobCache processes
    cdef u64map own_tree            # pids of the collector and its descendants
    cdef u64map repeats             # repeat key -> slot of its first occurrence (per batch)
    cdef u64map included            # cgroup id -> 1 (traced) / 0 (not), when include_cgroup is set
    cdef object include_cgroup
    cdef object on_exec
    cdef object on_exit
    cdef char excluded[MAX_EXCLUDED_COMMS][16]
    cdef int n_excluded
    cdef bint collapse
    cdef uint32_t *order            # the result: priority slots, then routine ones
    cdef uint32_t *routine          # routine slots while they are being collected
    cdef uint32_t order_cap
    cdef readonly uint64_t filtered, collapsed, priority

    def __cinit__(self, context_for, process_for, on_exec=None, on_exit=None, exclude_comms=(),
                  include_cgroup=None, uint32_t self_pid=0, bint collapse=True,
                  uint32_t cache_size=16384):
        """context_for(cgroup_id) / process_for(pid): pre-encoded Event.context / Event.process
        fields (encode_field(12|13, ...)) or None. on_exec(pid, ppid, uid, filename, args,
        boot_ns, cgroup_id) and on_exit(pid, cgroup_id, boot_ns) keep the process table current.
        include_cgroup(cgroup_id) -> bool, or None to trace every cgroup."""
        self.contexts = BlobCache(context_for, cache_size)
        self.processes = BlobCache(process_for, cache_size * 4)
        u64map_init(&self.own_tree, 1024)
        u64map_init(&self.repeats, 1024)
        u64map_init(&self.included, cache_size)
        if self_pid:
            u64map_put(&self.own_tree, self_pid, 1)
        self.include_cgroup = include_cgroup
        self.on_exec = on_exec
        self.on_exit = on_exit
        if len(exclude_comms) > MAX_EXCLUDED_COMMS:
            raise ValueError(f"at most {MAX_EXCLUDED_COMMS} commands can be excluded")
        self.n_excluded = 0
        for comm in exclude_comms:
            raw = comm.encode() if isinstance(comm, str) else bytes(comm)
            if not raw or len(raw) > 15:
                raise ValueError(f"{comm!r} is not a command name (1 to 15 bytes, as in /proc/PID/comm)")
            memcpy(self.excluded[self.n_excluded], <char *>raw, len(raw))
            self.excluded[self.n_excluded][len(raw)] = 0
            self.n_excluded += 1
        self.collapse = collapse
        self.order = NULL
        self.routine = NULL
        self.order_cap = 0

    def __dealloc__(self):
        u64map_free(&self.own_tree)
        u64map_free(&self.repeats)
        u64map_free(&self.included)
        PyMem_Free(self.order)
        PyMem_Free(self.routine)

    cdef bint excluded_comm(self, const char *comm) noexcept nogil:
        cdef int i
        cdef size_t n = strnlen(comm, TAPIO_COMM_LEN)
        for i in range(self.n_excluded):
            if strnlen(self.excluded[i], 16) == n and memcmp(self.excluded[i], comm, n) == 0:
                return True
        return False

    cdef bint cgroup_traced(self, uint64_t cgroup_id) except -1:
        cdef uint32_t verdict
        if self.include_cgroup is None:
            return True
        if not u64map_get(&self.included, cgroup_id, &verdict):
            verdict = 1 if self.include_cgroup(cgroup_id) else 0
            if not u64map_put(&self.included, cgroup_id, verdict):
                u64map_clear(&self.included)
                u64map_put(&self.included, cgroup_id, verdict)
        return verdict == 1

    def process(self, EventArena arena not None):
        """Filter, enrich, collapse and order the arena's events. Returns (order, n_priority):
        a memoryview of slot indices, priority events first."""
        cdef arena_t *a = &arena.c
        cdef tapio_event *e
        cdef tapio_event *first
        cdef uint32_t i, j, n = a.count, kept = 0, n_prio = 0, blob, dummy
        cdef uint64_t key
        cdef bytes data
        self._reserve(n)
        self.contexts.begin_batch()
        self.processes.begin_batch()
        u64map_clear(&self.repeats)

        # exec events first: the process table (and so every later event's Process) must know
        # the new program before the batch is enriched
        for i in range(n):
            e = arena_slot(a, i)
            if e.hdr.type == TAPIO_EVENT_EXEC:
                if u64map_get(&self.own_tree, e.hdr.ppid, &dummy):
                    u64map_put(&self.own_tree, e.hdr.pid, 1)
                if self.on_exec is not None:
                    self.on_exec(e.hdr.pid, e.hdr.ppid, e.hdr.uid,
                                 e.exec.filename[:strnlen(e.exec.filename, sizeof(e.exec.filename))],
                                 e.exec.args[:min(e.exec.args_size, sizeof(e.exec.args))],
                                 e.hdr.timestamp_ns, e.hdr.cgroup_id)
                self.processes.forget(e.hdr.pid)

        # the order array holds priority events from the front and routine ones from the back
        for i in range(n):
            e = arena_slot(a, i)
            if (u64map_get(&self.own_tree, e.hdr.pid, &dummy) or self.excluded_comm(e.hdr.comm)
                    or not self.cgroup_traced(e.hdr.cgroup_id)):
                self.filtered += 1
                continue
            if self.collapse:
                key = repeat_key(e)
                if u64map_get(&self.repeats, key, &j) and same_occurrence(arena_slot(a, j), e):
                    arena_fold(a, j, e)   # slot j keeps e's bytes, time, duration and port
                    self.collapsed += 1
                    continue
                u64map_put(&self.repeats, key, i)
            blob = self.contexts.lookup(e.hdr.cgroup_id)
            if blob != NO_BLOB:
                data = <bytes>self.contexts.blobs[blob]
                a.ctx_ptr[i] = PyBytes_AS_STRING(data)
                a.ctx_len[i] = <uint32_t>PyBytes_GET_SIZE(data)
            blob = self.processes.lookup(e.hdr.pid)
            if blob != NO_BLOB:
                data = <bytes>self.processes.blobs[blob]
                a.proc_ptr[i] = PyBytes_AS_STRING(data)
                a.proc_len[i] = <uint32_t>PyBytes_GET_SIZE(data)
            if is_priority(e):
                self.order[n_prio] = i
                n_prio += 1
            else:
                self.routine[kept - n_prio] = i
            kept += 1

        memcpy(&self.order[n_prio], self.routine, (kept - n_prio) * sizeof(uint32_t))
        self.priority += n_prio

        if self.on_exit is not None:
            for i in range(n):
                e = arena_slot(a, i)
                if e.hdr.type == TAPIO_EVENT_EXIT:
                    self.on_exit(e.hdr.pid, e.hdr.cgroup_id, e.hdr.timestamp_ns)
        return (<uint32_t[:max(kept, 1)]>self.order)[:kept], n_prio

    cdef int _reserve(self, uint32_t n) except -1:
        cdef uint32_t cap = max(n, 16)
        if n <= self.order_cap:
            return 0
        PyMem_Free(self.order)
        PyMem_Free(self.routine)
        self.order = <uint32_t *>PyMem_Malloc(cap * sizeof(uint32_t))
        self.routine = <uint32_t *>PyMem_Malloc(cap * sizeof(uint32_t))
        self.order_cap = 0 if self.order == NULL or self.routine == NULL else cap
        if self.order_cap == 0:
            raise MemoryError()
        return 0

    def forget_contexts(self):
        """Ask for every cgroup's context again from the next batch on (pod metadata arrived)."""
        self.contexts.stale = True

    def stats(self):
        return {"filtered": self.filtered, "collapsed": self.collapsed, "priority": self.priority,
                "context_hits": self.contexts.hits, "context_misses": self.contexts.misses,
                "process_hits": self.processes.hits, "process_misses": self.processes.misses,
                "cache_resets": self.contexts.resets + self.processes.resets}
