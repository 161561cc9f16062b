# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The correlation engine's hot path: per-collector state updated from decoded records in C.

`Correlator.feed(batch)` walks a DecodedBatch's records in one nogil loop and keeps, without a
Python object per event, two tables (one extension module; calls between them are C calls):

    correlate_procs.pxi   ProcessTable: every exec and exit, linked into trees
    correlate_conns.pxi   ConnectionTable: failed connects per (cgroup, destination)

The Correlator owns both, dispatches each record to the table it concerns, and collects what
Python must look at.

Everything else that may become a group is rare (a failed exit, a fatal signal, an OOM kill):
`feed()` returns those records' indices and Python looks at them.

Event references (`evref`) name an event by its batch's ordinal (the Python side keeps recent
batches) and its index there, plus the number of its id, so that a group can still name an event
whose batch is gone. Collapsed events (count > 1) count as many times as they occurred.
"""
from cpython.mem cimport PyMem_Realloc, PyMem_Free, PyMem_RawMalloc, PyMem_RawRealloc, PyMem_RawFree
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, UINT64_MAX
from libc.string cimport memcpy, memset, memcmp

from tapio._fast.codec cimport DecodedBatch
from tapio._fast.records cimport (
    tapio_batch, tapio_record, tapio_ref, tapio_process_rec, tapio_context_rec, ref_ptr,
    record_process, record_context, MAX_ANCESTORS,
)
from tapio._fast.events cimport (
    TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_OOM_KILL,
    TAPIO_EVENT_SIGNAL,
)
from tapio._fast.hashmap cimport (u64map, u64map_init, u64map_free, u64map_get, u64map_put,
                                  u64map_del)

cdef enum:
    MAX_WATCHES = 64          # cgroups whose every exit goes to Python for a while (OOM follow-up)
    CTX_CONTAINER_ID = 1      # Context field numbers
    CTX_CONTAINER_NAME = 9


# ---- small helpers ----------------------------------------------------------------------------

cdef inline uint64_t id_seq(const tapio_batch *b, tapio_ref r) noexcept nogil:
    """n of an id "ebpf-<n>"; 0 for any other form."""
    cdef const char *p = ref_ptr(b, r)
    cdef uint64_t n = 0
    cdef uint32_t i
    cdef char c
    if r.len < 6 or r.len > 24 or memcmp(p, b"ebpf-", 5) != 0:
        return 0
    for i in range(5, r.len):
        c = p[i]
        if c < 48 or c > 57:
            return 0
        n = n * 10 + <uint64_t>(c - 48)
    return n


cdef inline void set_ref(evref *ref, const tapio_batch *b, const tapio_record *rec,
                         uint32_t ordinal, uint32_t index) noexcept nogil:
    ref.seq = id_seq(b, rec.id)
    ref.batch = ordinal
    ref.index = index


cdef inline void clear_ref(evref *ref) noexcept nogil:
    ref.seq = 0
    ref.batch = 0
    ref.index = NO_SLOT


cdef inline void copy_comm(char *dst, const tapio_batch *b, tapio_ref r) noexcept nogil:
    cdef uint32_t n = r.len if r.len < 15 else 15
    memcpy(dst, ref_ptr(b, r), n)
    memset(dst + n, 0, 16 - n)


cdef inline uint64_t mix(uint64_t h, uint64_t v) noexcept nogil:
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2)
    return h


cdef inline uint32_t count_of(const tapio_record *rec) noexcept nogil:
    return rec.count if rec.count else 1


cdef inline object ref_tuple(const evref *r):
    if r.index == NO_SLOT:
        return None
    return (r.seq, r.batch, r.index)


cdef inline str comm_text(const char *comm):
    cdef size_t n = 0
    while n < 16 and comm[n] != 0:
        n += 1
    return comm[:n].decode("utf-8", "replace")


cdef int grow_u32(uint32_t **array, uint32_t *cap, uint32_t need) except -1:
    cdef uint32_t size = cap[0] if cap[0] else 256
    cdef uint32_t *p
    while size < need:
        size *= 2
    p = <uint32_t *>PyMem_Realloc(array[0], size * sizeof(uint32_t))
    if p == NULL:
        raise MemoryError()
    array[0] = p
    cap[0] = size
    return 0


NODE_FIELDS = ("pid", "ppid", "parent", "comm", "start_ns", "exec_ns", "exit_ns", "exit_code",
               "signal", "core_dumped", "state", "exec_seen", "execs", "cgroup_id",
               "first_exec", "last_exec", "exit_event")

include "correlate_procs.pxi"
include "correlate_conns.pxi"


cdef class Correlator:
    """The hot correlation state of one collector. Not thread-safe: one thread feeds and ticks."""

    cdef ProcessTable procs
    cdef ConnectionTable conns
    # per feed() output
    cdef uint32_t *hot
    cdef uint32_t n_hot
    cdef uint32_t hot_cap
    cdef uint32_t *opened
    cdef uint32_t n_opened
    cdef uint32_t opened_cap
    # cgroups watched after an OOM kill: every exit there is hot until `until`
    cdef uint64_t watch_ids[64]
    cdef uint64_t watch_until[64]
    cdef uint32_t n_watches
    cdef uint64_t hot_signal_mask     # bit s: a signal-s event goes to Python
    # counters
    cdef readonly uint32_t ordinal    # of the last batch fed
    cdef readonly uint64_t events, execs, exits

    NODE_FIELDS = NODE_FIELDS

    def __cinit__(self, *, uint32_t max_processes=65536, uint32_t max_tree_processes=512,
                  uint32_t min_processes=3, uint32_t min_processes_failed=2,
                  double tree_grace_s=2.0, double tree_max_s=600.0, bint split_on_cgroup=True,
                  uint32_t max_connections=16384, uint32_t conn_threshold=5,
                  double conn_window_s=30.0, double conn_close_after_s=15.0,
                  double conn_max_s=600.0, conn_failures=(1, 2, 3, 4, 5), hot_signals=None):
        self.procs = ProcessTable(max_processes, max_tree_processes, min_processes,
                                  min_processes_failed, tree_grace_s, tree_max_s, split_on_cgroup)
        self.conns = ConnectionTable(max_connections, conn_threshold, conn_window_s,
                                     conn_close_after_s, conn_max_s, conn_failures)
        # the signals Python needs to see (fatal-signal groups, OOM victims' SIGKILL): a SIGTERM
        # a service gets on every deploy is no group's business and stays in C
        self.hot_signal_mask = ~<uint64_t>0
        if hot_signals is not None:
            self.hot_signal_mask = 0
            for sig in hot_signals:
                if not 0 < sig < 64:
                    raise ValueError(f"{sig} is not a signal number (1..63)")
                self.hot_signal_mask |= <uint64_t>1 << <uint64_t>sig

    def __dealloc__(self):
        PyMem_Free(self.hot)
        PyMem_Free(self.opened)

    # ---- feeding ------------------------------------------------------------------------------

    def feed(self, DecodedBatch batch not None):
        """Update the state from every record of `batch`. Returns (ordinal, hot, opened, max_ts):
        the ordinal this Correlator gave the batch (event references name it), the indices of
        records for Python (failed exits, fatal signals, OOM kills, exits in watched cgroups), the
        connection slots that opened a group, and the newest event timestamp."""
        cdef uint64_t max_ts = 0
        cdef uint32_t n = batch.c.count
        if self.hot_cap < n:
            grow_u32(&self.hot, &self.hot_cap, n)
        if self.opened_cap < n:
            grow_u32(&self.opened, &self.opened_cap, n)
        self.ordinal += 1
        if self.ordinal == 0:
            self.ordinal = 1
        with nogil:
            max_ts = self._feed(&batch.c, self.ordinal)
        hot = [self.hot[i] for i in range(self.n_hot)] if self.n_hot else None
        opened = [self.opened[i] for i in range(self.n_opened)] if self.n_opened else None
        return self.ordinal, hot, opened, max_ts

    cdef uint64_t _feed(self, const tapio_batch *b, uint32_t ordinal) noexcept nogil:
        cdef uint32_t i, slot
        cdef const tapio_record *rec
        cdef uint64_t max_ts = 0
        cdef int32_t t
        self.n_hot = 0
        self.n_opened = 0
        for i in range(b.count):
            rec = &b.records[i]
            t = rec.type
            self.events += count_of(rec)
            if rec.timestamp_ns > max_ts:
                max_ts = rec.timestamp_ns
            if rec.details != <uint8_t>t:
                continue      # no details, or details of another type: nothing to correlate
            if t == TAPIO_EVENT_TCP_CONNECT:
                slot = self.conns.on_connect(b, rec, ordinal, i)
                if slot != NO_SLOT:
                    self.opened[self.n_opened] = slot
                    self.n_opened += 1
            elif t == TAPIO_EVENT_EXEC:
                self.execs += 1
                self.procs.on_exec(b, rec, ordinal, i)
            elif t == TAPIO_EVENT_EXIT:
                self.exits += 1
                self.procs.on_exit(b, rec, ordinal, i)
                if rec.d.exit.exit_code != 0 or rec.d.exit.signal != 0 or self._watched(rec):
                    self.hot[self.n_hot] = i
                    self.n_hot += 1
            elif (t == TAPIO_EVENT_OOM_KILL or (t == TAPIO_EVENT_SIGNAL and rec.d.signal.signal < 64
                    and self.hot_signal_mask & (<uint64_t>1 << rec.d.signal.signal))):
                self.hot[self.n_hot] = i
                self.n_hot += 1
        return max_ts

    cdef inline bint _watched(self, const tapio_record *rec) noexcept nogil:
        cdef uint32_t i
        for i in range(self.n_watches):
            if self.watch_ids[i] == rec.cgroup_id and rec.timestamp_ns <= self.watch_until[i]:
                return True
        return False

    # ---- time ----------------------------------------------------------------------------------

    def tick(self, uint64_t now_ns, bint force=False, long long max_trees=-1):
        """Close what is due at `now_ns` (the collector's clock): tick_trees, tick_connections and
        expire_watches in one call. Returns (trees, updated, closed) as those do."""
        self.expire_watches(now_ns)
        trees = self.tick_trees(now_ns, force, max_trees)
        updated, closed = self.tick_connections(now_ns, force)
        return trees, updated, closed

    def tick_trees(self, uint64_t now_ns, bint force=False, long long max_trees=-1):
        """The finished trees that qualify as groups, each a (root info, nodes) pair, nodes as
        NODE_FIELDS tuples, parents first; at most `max_trees` of them (-1: all; the rest are
        freed and counted as trees_suppressed: a rate limit that costs nothing per tree). With
        force (shutdown), finished trees close now and unfinished trees are dropped."""
        return self.procs.tick(now_ns, force, max_trees)

    def tick_connections(self, uint64_t now_ns, bint force=False):
        """(updated, closed): the open connection groups that changed since the last call
        (slots), and those that closed (conn_info dicts); with force, all open ones close."""
        return self.conns.tick(now_ns, force)

    def expire_watches(self, uint64_t now_ns):
        """Forget the cgroup watches (watch_cgroup) that ended before `now_ns`."""
        cdef uint32_t i = 0
        while i < self.n_watches:
            if self.watch_until[i] < now_ns:
                self.n_watches -= 1
                self.watch_ids[i] = self.watch_ids[self.n_watches]
                self.watch_until[i] = self.watch_until[self.n_watches]
            else:
                i += 1

    # ---- what Python asks ------------------------------------------------------------------------

    @property
    def trees_suppressed(self):
        return self.procs.trees_suppressed

    def process(self, uint32_t pid):
        """What the table knows of pid's newest process (a dict of NODE_FIELDS), or None."""
        return self.procs.process(pid)

    def conn_info(self, uint32_t slot):
        """The connection entry in `slot` as a dict."""
        return self.conns.info(slot)

    def watch_cgroup(self, uint64_t cgroup_id, uint64_t until_ns):
        """Report every exit in `cgroup_id` until `until_ns` as hot (after an OOM kill there)."""
        cdef uint32_t i
        for i in range(self.n_watches):
            if self.watch_ids[i] == cgroup_id:
                if until_ns > self.watch_until[i]:
                    self.watch_until[i] = until_ns
                return True
        if self.n_watches >= MAX_WATCHES:
            return False
        self.watch_ids[self.n_watches] = cgroup_id
        self.watch_until[self.n_watches] = until_ns
        self.n_watches += 1
        return True

    def stats(self):
        out = {"events": self.events, "execs": self.execs, "exits": self.exits}
        out.update(self.procs.stats())
        out.update(self.conns.stats())
        return out


# ---- record queries (the store's recent events) -------------------------------------------------

def match_records(DecodedBatch batch not None, int event_type=0, uint32_t pid=0, comm=None,
                  container=None, Py_ssize_t limit=-1):
    """Indices of the batch's records that match, newest (last) first: type (0: any), pid (0:
    any), comm (exact, bytes), container (bytes: a prefix of the container id, or the container
    name). At most `limit` (-1: all)."""
    cdef const tapio_batch *b = &batch.c
    cdef const tapio_record *rec
    cdef const tapio_context_rec *ctx
    cdef const char *cp = NULL
    cdef const char *kp = NULL
    cdef Py_ssize_t cn = 0, kn = 0
    cdef uint32_t i
    cdef tapio_ref r
    out = []
    if comm is not None:
        cp = comm
        cn = len(comm)
    if container is not None:
        kp = container
        kn = len(container)
    i = b.count
    while i > 0 and limit != 0:
        i -= 1
        rec = &b.records[i]
        if event_type and rec.type != event_type:
            continue
        if pid and rec.pid != pid:
            continue
        if cp != NULL and (rec.comm.len != cn or memcmp(ref_ptr(b, rec.comm), cp, cn) != 0):
            continue
        if kp != NULL:
            ctx = record_context(b, rec)
            if ctx == NULL:
                continue
            r = ctx.fields[CTX_CONTAINER_ID]
            if not (kn and r.len >= kn and memcmp(ref_ptr(b, r), kp, kn) == 0):
                r = ctx.fields[CTX_CONTAINER_NAME]
                if not (r.len == kn and memcmp(ref_ptr(b, r), kp, kn) == 0):
                    continue
        out.append(i)
        if limit > 0:
            limit -= 1
    return out


def max_timestamp(DecodedBatch batch not None):
    """The newest event timestamp of a batch (0 when it has none)."""
    cdef uint64_t m = 0
    cdef uint32_t i
    for i in range(batch.c.count):
        if batch.c.records[i].timestamp_ns > m:
            m = batch.c.records[i].timestamp_ns
    return m
