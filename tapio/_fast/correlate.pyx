# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The correlation engine's hot path: per-collector state updated from decoded records in C.

`Correlator.feed(batch)` walks a DecodedBatch's records in one nogil loop and keeps, without a
Python object per event:

* the process table: every exec and exit, linked into trees (a process under the process that
  started it; a process whose parent is unknown, or that entered another cgroup than its parent's,
  starts a tree of its own). A tree is finished when its root and every descendant have exited;
  after a grace period (events of one collector round may arrive out of order: failed exits are
  sent ahead of the rest) `tick()` hands the trees that qualify (enough processes, or a failure)
  to Python and frees the others in C;
* the connection table: failed connects per (cgroup, destination); when `threshold` failures fall
  within `window`, the destination opens a group, which then counts failures and the successes in
  between until it has been quiet for `close_after`.

Everything else that may become a group is rare (a failed exit, a fatal signal, an OOM kill):
`feed()` returns those records' indices and Python looks at them.

Event references (`evref`) name an event by its batch's ordinal (the Python side keeps recent
batches) and its index there, plus the number of its id, so that a group can still name an event
whose batch is gone. Collapsed events (count > 1) count as many times as they occurred.
"""
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free, PyMem_Calloc
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
    P_FREE = 0
    P_LIVE = 1
    P_EXITED = 2

    PF_EXEC = 1               # an exec of it was seen
    PF_EXIT = 2               # its exit was seen
    PF_PLACEHOLDER = 4        # known as an ancestor only (forked, never exec'd as far as we saw)
    PF_FORCED = 8             # (root) closed before it finished: max duration, or shutdown

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


cdef class Correlator:
    """The hot correlation state of one collector. Not thread-safe: one thread feeds and ticks."""

    # process table
    cdef proc_t *procs
    cdef uint32_t procs_cap
    cdef uint32_t procs_used
    cdef uint32_t procs_bump          # slots above it were never used (pages not touched yet)
    cdef uint32_t free_proc
    cdef u64map pids                  # pid -> slot of its newest process
    cdef uint32_t *roots              # open trees
    cdef uint32_t n_roots
    cdef uint32_t *closing            # finished trees waiting for their grace period
    cdef uint32_t n_closing
    cdef uint32_t *scratch            # a tree's slots, while it is walked
    cdef uint32_t scratch_cap
    # connection table
    cdef conn_t *conns
    cdef uint32_t conns_cap
    cdef uint32_t conns_used
    cdef uint32_t conns_bump
    cdef uint32_t free_conn
    cdef u64map conn_keys             # destination key -> slot
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
    # configuration
    cdef uint32_t max_tree_procs
    cdef uint32_t min_procs
    cdef uint32_t min_procs_failed
    cdef uint64_t tree_grace_ns
    cdef uint64_t tree_max_ns
    cdef bint split_on_cgroup
    cdef uint32_t conn_threshold
    cdef uint64_t conn_window_ns
    cdef uint64_t conn_close_ns
    cdef uint64_t conn_max_ns
    cdef uint32_t conn_fail_mask      # bit r: ConnectResult r is a failure
    cdef uint64_t hot_signal_mask     # bit s: a signal-s event goes to Python
    # counters
    cdef readonly uint32_t ordinal    # of the last batch fed
    cdef readonly uint64_t events, execs, exits, connects, connect_failures
    cdef readonly uint64_t procs_untracked, tree_procs_dropped, trees_closed, trees_emitted
    cdef readonly uint64_t trees_forced, conns_untracked, conn_groups, conn_key_collisions
    cdef readonly uint64_t trees_suppressed, trees_dropped
    cdef long long tree_budget        # qualifying trees tick() may still hand over (-1: any)
    cdef uint64_t last_scan_ns

    def __cinit__(self, *, uint32_t max_processes=65536, uint32_t max_tree_processes=512,
                  uint32_t min_processes=3, uint32_t min_processes_failed=2,
                  double tree_grace_s=2.0, double tree_max_s=600.0, bint split_on_cgroup=True,
                  uint32_t max_connections=16384, uint32_t conn_threshold=5,
                  double conn_window_s=30.0, double conn_close_after_s=15.0,
                  double conn_max_s=600.0, conn_failures=(1, 2, 3, 4, 5), hot_signals=None):
        if max_processes < 16 or max_processes > (1 << 26):
            raise ValueError(f"max_processes must be within 16..{1 << 26}, not {max_processes}")
        if max_connections < 16 or max_connections > (1 << 24):
            raise ValueError(f"max_connections must be within 16..{1 << 24}, not {max_connections}")
        if not 1 <= conn_threshold <= RING_MAX:
            raise ValueError(f"the connectivity threshold must be within 1..{RING_MAX}, not {conn_threshold}")
        if max_tree_processes < 1:
            raise ValueError("max_tree_processes must be at least 1")
        self.procs = <proc_t *>PyMem_Calloc(max_processes, sizeof(proc_t))
        self.roots = <uint32_t *>PyMem_Malloc(max_processes * sizeof(uint32_t))
        self.closing = <uint32_t *>PyMem_Malloc(max_processes * sizeof(uint32_t))
        self.conns = <conn_t *>PyMem_Calloc(max_connections, sizeof(conn_t))
        if self.procs == NULL or self.roots == NULL or self.closing == NULL or self.conns == NULL:
            raise MemoryError()
        u64map_init(&self.pids, max_processes * 2)
        u64map_init(&self.conn_keys, max_connections * 2)
        self.procs_cap = max_processes
        self.free_proc = NO_SLOT
        self.conns_cap = max_connections
        self.free_conn = NO_SLOT
        self.max_tree_procs = max_tree_processes
        self.min_procs = min_processes
        self.min_procs_failed = min_processes_failed
        self.tree_grace_ns = <uint64_t>(tree_grace_s * 1e9)
        self.tree_max_ns = <uint64_t>(tree_max_s * 1e9)
        self.split_on_cgroup = split_on_cgroup
        self.conn_threshold = conn_threshold
        self.conn_window_ns = <uint64_t>(conn_window_s * 1e9)
        self.conn_close_ns = <uint64_t>(conn_close_after_s * 1e9)
        self.conn_max_ns = <uint64_t>(conn_max_s * 1e9)
        self.conn_fail_mask = 0
        for r in conn_failures:
            if not 0 < r < N_RESULTS:
                raise ValueError(f"{r} is not a failed ConnectResult (1..{N_RESULTS - 1})")
            self.conn_fail_mask |= 1u << <uint32_t>r
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
        PyMem_Free(self.procs)
        PyMem_Free(self.roots)
        PyMem_Free(self.closing)
        PyMem_Free(self.scratch)
        PyMem_Free(self.conns)
        PyMem_Free(self.hot)
        PyMem_Free(self.opened)
        if self.pids.keys != NULL:
            u64map_free(&self.pids)
        if self.conn_keys.keys != NULL:
            u64map_free(&self.conn_keys)

    # ---- feeding ------------------------------------------------------------------------------

    def feed(self, DecodedBatch batch not None):
        """Update the state from every record of `batch`. Returns (ordinal, hot, opened, max_ts):
        the ordinal this Correlator gave the batch (event references name it), the indices of
        records for Python (failed exits, fatal signals, OOM kills, exits in watched cgroups), the
        connection slots that opened a group, and the newest event timestamp."""
        cdef uint64_t max_ts = 0
        cdef uint32_t n = batch.c.count
        if self.hot_cap < n:
            self._grow(&self.hot, &self.hot_cap, n)
        if self.opened_cap < n:
            self._grow(&self.opened, &self.opened_cap, n)
        self.ordinal += 1
        if self.ordinal == 0:
            self.ordinal = 1
        with nogil:
            max_ts = self._feed(&batch.c, self.ordinal)
        hot = [self.hot[i] for i in range(self.n_hot)] if self.n_hot else None
        opened = [self.opened[i] for i in range(self.n_opened)] if self.n_opened else None
        return self.ordinal, hot, opened, max_ts

    cdef int _grow(self, uint32_t **array, uint32_t *cap, uint32_t need) except -1:
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

    cdef uint64_t _feed(self, const tapio_batch *b, uint32_t ordinal) noexcept nogil:
        cdef uint32_t i
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
                self._on_connect(b, rec, ordinal, i)
            elif t == TAPIO_EVENT_EXEC:
                self.execs += 1
                self._on_exec(b, rec, ordinal, i)
            elif t == TAPIO_EVENT_EXIT:
                self.exits += 1
                self._on_exit(b, rec, ordinal, i)
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

    # ---- the process table ----------------------------------------------------------------------

    cdef inline uint32_t _lookup(self, uint32_t pid) noexcept nogil:
        cdef uint32_t slot
        if u64map_get(&self.pids, pid, &slot):
            return slot
        return NO_SLOT

    cdef uint32_t _alloc(self, uint32_t pid) noexcept nogil:
        cdef uint32_t slot = self.free_proc
        cdef proc_t *p
        if slot != NO_SLOT:
            self.free_proc = self.procs[slot].next_sibling
        elif self.procs_bump < self.procs_cap:
            slot = self.procs_bump
            self.procs_bump += 1
        else:
            self.procs_untracked += 1
            return NO_SLOT
        p = &self.procs[slot]
        memset(p, 0, sizeof(proc_t))
        p.pid = pid
        p.parent = p.first_child = p.next_sibling = NO_SLOT
        p.root = slot
        p.root_pos = NO_SLOT
        clear_ref(&p.first_exec)
        clear_ref(&p.last_exec)
        clear_ref(&p.exit)
        self.procs_used += 1
        return slot

    cdef void _release(self, uint32_t slot) noexcept nogil:
        cdef proc_t *p = &self.procs[slot]
        cdef uint32_t mapped
        if u64map_get(&self.pids, p.pid, &mapped) and mapped == slot:
            u64map_del(&self.pids, p.pid)
        p.state = P_FREE
        p.next_sibling = self.free_proc
        self.free_proc = slot
        self.procs_used -= 1

    cdef void _add_root(self, uint32_t slot, uint64_t now) noexcept nogil:
        cdef proc_t *p = &self.procs[slot]
        p.root = slot
        p.parent = NO_SLOT
        p.opened_ns = now
        p.root_pos = self.n_roots
        self.roots[self.n_roots] = slot
        self.n_roots += 1

    cdef void _drop_root(self, uint32_t slot) noexcept nogil:
        cdef proc_t *p = &self.procs[slot]
        cdef uint32_t last
        if p.root_pos == NO_SLOT:
            return
        last = self.roots[self.n_roots - 1]
        self.roots[p.root_pos] = last
        self.procs[last].root_pos = p.root_pos
        self.n_roots -= 1
        p.root_pos = NO_SLOT

    cdef inline bint _live_parent(self, uint32_t slot, uint64_t at) noexcept nogil:
        """Whether the process in `slot` may be the parent of one that started at `at`."""
        cdef proc_t *p = &self.procs[slot]
        return p.state == P_LIVE or (p.state == P_EXITED and p.exit_ns >= at)

    cdef void _link(self, uint32_t parent, uint32_t child) noexcept nogil:
        cdef proc_t *c = &self.procs[child]
        cdef proc_t *q = &self.procs[parent]
        c.parent = parent
        c.root = q.root
        c.next_sibling = q.first_child
        q.first_child = child

    cdef void _schedule_close(self, uint32_t root, uint64_t now) noexcept nogil:
        cdef proc_t *r = &self.procs[root]
        r.close_at = now + self.tree_grace_ns
        if not r.closing:
            r.closing = 1
            self.closing[self.n_closing] = root
            self.n_closing += 1

    cdef uint32_t _parent_for(self, const tapio_batch *b, const tapio_record *rec, uint64_t at,
                              uint64_t cgroup_id) noexcept nogil:
        """The slot to put a new process under: its parent, or the nearest ancestor we know with
        placeholders for the forks in between; NO_SLOT: it starts a tree."""
        cdef uint32_t slot = self._lookup(rec.ppid)
        cdef const tapio_process_rec *pr
        cdef uint32_t i, j, n, anc, ph
        if slot != NO_SLOT and not self._live_parent(slot, at):
            slot = NO_SLOT
        if slot == NO_SLOT:
            # the process facts list ppid, its parent, ...: find one we know
            pr = record_process(b, rec)
            if pr == NULL or pr.n_ancestors < 2 or pr.ancestors[0] != rec.ppid:
                return NO_SLOT
            n = pr.n_ancestors if pr.n_ancestors < MAX_ANCESTORS else MAX_ANCESTORS
            for i in range(1, n):
                anc = self._lookup(pr.ancestors[i])
                if anc != NO_SLOT and self._live_parent(anc, at):
                    break
            else:
                return NO_SLOT
            if self.split_on_cgroup and self.procs[anc].cgroup_id != cgroup_id:
                return NO_SLOT
            # placeholders for ancestors[i-1] .. ancestors[0]: forks that never exec'd
            j = i
            while j > 0:
                j -= 1
                if self.procs[self.procs[anc].root].n_procs >= self.max_tree_procs:
                    self.procs[self.procs[anc].root].n_dropped += 1
                    self.tree_procs_dropped += 1
                    return NO_SLOT
                ph = self._alloc(pr.ancestors[j])
                if ph == NO_SLOT:
                    return NO_SLOT
                self.procs[ph].state = P_LIVE
                self.procs[ph].flags = PF_PLACEHOLDER
                self.procs[ph].ppid = self.procs[anc].pid
                self.procs[ph].start_ns = at
                self.procs[ph].cgroup_id = self.procs[anc].cgroup_id
                memcpy(self.procs[ph].comm, self.procs[anc].comm, 16)
                self._link(anc, ph)
                self.procs[self.procs[ph].root].n_procs += 1
                self.procs[self.procs[ph].root].n_live += 1
                u64map_put(&self.pids, pr.ancestors[j], ph)
                anc = ph
            return anc
        if self.split_on_cgroup and self.procs[slot].cgroup_id != cgroup_id:
            return NO_SLOT
        return slot

    cdef void _on_exec(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
                       uint32_t index) noexcept nogil:
        cdef uint64_t at = rec.timestamp_ns
        cdef uint32_t slot = self._lookup(rec.pid)
        cdef uint32_t parent, root
        cdef proc_t *p
        if slot != NO_SLOT:
            p = &self.procs[slot]
            if p.state == P_LIVE:
                # another exec in the same process (sh -c 'exec prog'), or a placeholder's first
                if not p.flags & PF_EXEC:
                    p.start_ns = at
                    set_ref(&p.first_exec, b, rec, ordinal, index)
                    p.flags = (p.flags & ~PF_PLACEHOLDER) | PF_EXEC
                p.exec_ns = at
                set_ref(&p.last_exec, b, rec, ordinal, index)
                p.n_execs += 1
                copy_comm(p.comm, b, rec.comm)
                if p.cgroup_id != rec.cgroup_id:
                    self._moved(slot, rec.cgroup_id, at)
                return
            if p.state == P_EXITED and at <= p.exit_ns:
                # its exit (a failed one, sent ahead) came first: fill in the exec
                if not p.flags & PF_EXEC or at < p.start_ns:
                    p.start_ns = at
                    set_ref(&p.first_exec, b, rec, ordinal, index)
                if not p.flags & PF_EXEC or at >= p.exec_ns:
                    p.exec_ns = at
                    set_ref(&p.last_exec, b, rec, ordinal, index)
                p.flags = (p.flags & ~PF_PLACEHOLDER) | PF_EXEC
                p.n_execs += 1
                if p.parent == NO_SLOT:
                    # it started a tree of its own because its parent was unknown then
                    parent = self._lookup(rec.ppid)
                    if (parent != NO_SLOT and parent != slot and self._live_parent(parent, at)
                            and not (self.split_on_cgroup and self.procs[parent].cgroup_id != p.cgroup_id)):
                        self._adopt(slot, parent, at)
                return
            # else: the pid was reused by a new process; the old one stays in its tree
        parent = self._parent_for(b, rec, at, rec.cgroup_id)
        if parent != NO_SLOT and self.procs[self.procs[parent].root].n_procs >= self.max_tree_procs:
            self.procs[self.procs[parent].root].n_dropped += 1
            self.tree_procs_dropped += 1
            return
        slot = self._alloc(rec.pid)
        if slot == NO_SLOT:
            return
        p = &self.procs[slot]
        p.state = P_LIVE
        p.flags = PF_EXEC
        p.ppid = rec.ppid
        p.start_ns = p.exec_ns = at
        p.cgroup_id = rec.cgroup_id
        p.n_execs = 1
        copy_comm(p.comm, b, rec.comm)
        set_ref(&p.first_exec, b, rec, ordinal, index)
        p.last_exec = p.first_exec
        if parent != NO_SLOT:
            self._link(parent, slot)
            root = p.root
        else:
            self._add_root(slot, at)
            root = slot
        self.procs[root].n_procs += 1
        self.procs[root].n_live += 1
        u64map_put(&self.pids, rec.pid, slot)

    cdef void _adopt(self, uint32_t child, uint32_t parent, uint64_t at) noexcept nogil:
        """Move the tree rooted at `child` under `parent` (whose exec or exit came later)."""
        cdef proc_t *c = &self.procs[child]
        cdef uint32_t new_root = self.procs[parent].root
        cdef proc_t *r = &self.procs[new_root]
        cdef uint32_t node
        if new_root == child or r.n_procs + c.n_procs > self.max_tree_procs:
            return
        self._drop_root(child)
        if c.closing:
            self._unlist_closing(child)
        r.n_procs += c.n_procs
        r.n_live += c.n_live
        r.n_failed += c.n_failed
        r.n_signaled += c.n_signaled
        r.n_dropped += c.n_dropped
        c.close_at = 0
        self._link(parent, child)
        # every node of the moved subtree now belongs to the new root
        node = child
        while True:
            self.procs[node].root = new_root
            if self.procs[node].first_child != NO_SLOT:
                node = self.procs[node].first_child
                continue
            while node != child and self.procs[node].next_sibling == NO_SLOT:
                node = self.procs[node].parent
            if node == child:
                break
            node = self.procs[node].next_sibling
        if r.n_live == 0 and r.state == P_EXITED:
            self._schedule_close(new_root, at)

    cdef void _moved(self, uint32_t slot, uint64_t cgroup_id, uint64_t at) noexcept nogil:
        """A process exec'd in another cgroup than before (a container's entrypoint, after runc
        moved it): it starts a tree of its own, when it has no children yet."""
        cdef proc_t *p = &self.procs[slot]
        cdef proc_t *old_root
        cdef uint32_t s
        p.cgroup_id = cgroup_id
        if not self.split_on_cgroup or p.parent == NO_SLOT or p.first_child != NO_SLOT:
            return
        # unlink from the parent's children
        s = self.procs[p.parent].first_child
        if s == slot:
            self.procs[p.parent].first_child = p.next_sibling
        else:
            while s != NO_SLOT and self.procs[s].next_sibling != slot:
                s = self.procs[s].next_sibling
            if s == NO_SLOT:
                return
            self.procs[s].next_sibling = p.next_sibling
        old_root = &self.procs[p.root]
        old_root.n_procs -= 1
        old_root.n_live -= 1
        if old_root.n_live == 0 and old_root.state == P_EXITED:
            self._schedule_close(p.root, at)
        p.next_sibling = NO_SLOT
        p.n_procs = 1
        p.n_live = 1
        p.n_failed = p.n_signaled = p.n_dropped = 0
        p.closing = 0
        p.close_at = 0
        self._add_root(slot, at)

    cdef void _on_exit(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
                       uint32_t index) noexcept nogil:
        cdef uint64_t at = rec.timestamp_ns
        cdef uint32_t slot = self._lookup(rec.pid)
        cdef uint32_t parent, root
        cdef proc_t *p
        cdef proc_t *r
        cdef bint failed = rec.d.exit.exit_code != 0 or rec.d.exit.signal != 0
        if slot != NO_SLOT and self.procs[slot].state == P_LIVE:
            p = &self.procs[slot]
            root = p.root
            r = &self.procs[root]
            r.n_live -= 1
        else:
            # a process we did not see start: exec'd before we ran, forked without exec, or its
            # exec is still on its way (sent after its failed exit)
            parent = self._lookup(rec.ppid)
            if parent != NO_SLOT and not self._live_parent(parent, at):
                parent = NO_SLOT
            if parent != NO_SLOT and self.procs[self.procs[parent].root].n_procs >= self.max_tree_procs:
                return       # (counted when it started, if it exec'd)
            slot = self._alloc(rec.pid)
            if slot == NO_SLOT:
                return
            p = &self.procs[slot]
            p.ppid = rec.ppid
            p.cgroup_id = rec.cgroup_id
            p.start_ns = rec.d.exit.start_time_ns if rec.d.exit.start_time_ns else at
            if parent != NO_SLOT:
                self._link(parent, slot)
                root = p.root
            else:
                self._add_root(slot, at)
                root = slot
            r = &self.procs[root]
            r.n_procs += 1
            u64map_put(&self.pids, rec.pid, slot)
        p.state = P_EXITED
        p.flags |= PF_EXIT
        p.exit_ns = at
        p.exit_code = rec.d.exit.exit_code
        p.signal = rec.d.exit.signal
        p.core_dumped = rec.d.exit.core_dumped
        if p.flags & PF_PLACEHOLDER and rec.d.exit.start_time_ns:
            p.start_ns = rec.d.exit.start_time_ns
        copy_comm(p.comm, b, rec.comm)
        set_ref(&p.exit, b, rec, ordinal, index)
        if failed:
            r.n_failed += 1
            if rec.d.exit.signal:
                r.n_signaled += 1
        if r.n_live == 0 and r.state == P_EXITED:
            self._schedule_close(root, at)

    # ---- the connection table ---------------------------------------------------------------

    cdef void _on_connect(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
                          uint32_t index) noexcept nogil:
        cdef uint32_t result = <uint32_t>rec.d.tcp.result
        cdef tapio_ref daddr = rec.d.tcp.daddr
        cdef const uint8_t *addr = <const uint8_t *>ref_ptr(b, daddr)
        cdef uint32_t alen = daddr.len if daddr.len <= 16 else 16
        cdef uint64_t key = mix(mix(0x7461706F, rec.cgroup_id),
                                (<uint64_t>rec.d.tcp.dport << 32) | <uint32_t>rec.d.tcp.family)
        cdef uint32_t i, slot, n = count_of(rec), k
        cdef conn_t *c
        cdef uint64_t word
        cdef bint failed = result < N_RESULTS and (self.conn_fail_mask >> result) & 1
        self.connects += n
        for i in range(0, alen, 8):
            word = 0
            memcpy(&word, addr + i, 8 if alen - i >= 8 else alen - i)
            key = mix(key, word)
        if key == UINT64_MAX:
            key -= 1
        if u64map_get(&self.conn_keys, key, &slot):
            c = &self.conns[slot]
            if (c.cgroup_id != rec.cgroup_id or c.dport != rec.d.tcp.dport or c.daddr_len != alen
                    or memcmp(c.daddr, addr, alen) != 0):
                self.conn_key_collisions += 1
                return
        elif not failed:
            return                    # a success to a destination without failures: nothing to do
        else:
            slot = self.free_conn
            if slot == NO_SLOT:
                if self.conns_bump >= self.conns_cap:
                    self.conns_untracked += n
                    return
                slot = self.conns_bump
            if not u64map_put(&self.conn_keys, key, slot):
                self.conns_untracked += n
                return
            if slot == self.free_conn:
                self.free_conn = self.conns[slot].next_free
            else:
                self.conns_bump += 1
            c = &self.conns[slot]
            self.conns_used += 1
            memset(c, 0, sizeof(conn_t))
            c.used = 1
            c.key = key
            c.cgroup_id = rec.cgroup_id
            c.family = <uint32_t>rec.d.tcp.family
            c.dport = rec.d.tcp.dport
            c.daddr_len = alen
            memcpy(c.daddr, addr, alen)
            c.next_free = NO_SLOT
        if result < N_RESULTS:
            c.by_result[result] += n
        if not failed:
            c.successes += n
            c.last_ok_ns = rec.timestamp_ns
            if c.open:
                c.dirty = 1
                if c.n_ok_refs < CONN_OK_REFS:
                    set_ref(&c.ok_refs[c.n_ok_refs], b, rec, ordinal, index)
                    c.n_ok_refs += 1
            return
        self.connect_failures += n
        c.failures += n
        c.pid = rec.pid
        copy_comm(c.comm, b, rec.comm)
        if c.first_ns == 0:
            c.first_ns = rec.timestamp_ns
        c.last_fail_ns = rec.timestamp_ns
        if c.n_fail_refs < CONN_FAIL_REFS:
            set_ref(&c.fail_refs[c.n_fail_refs], b, rec, ordinal, index)
            c.n_fail_refs += 1
        if c.open:
            c.dirty = 1
            return
        # the newest `threshold` failure times: when they span at most `window`, a group opens
        k = n if n < self.conn_threshold else self.conn_threshold
        for i in range(k):
            c.ring[c.ring_head] = rec.timestamp_ns
            c.ring_head = (c.ring_head + 1) % self.conn_threshold
            if c.ring_n < self.conn_threshold:
                c.ring_n += 1
        if c.ring_n == self.conn_threshold:
            # the oldest of the ring is at ring_head once it is full
            word = c.ring[c.ring_head % self.conn_threshold]
            if rec.timestamp_ns - word <= self.conn_window_ns or word > rec.timestamp_ns:
                c.open = 1
                c.dirty = 0
                c.opened_ns = rec.timestamp_ns
                self.conn_groups += 1
                self.opened[self.n_opened] = slot
                self.n_opened += 1

    cdef void _free_conn(self, uint32_t slot) noexcept nogil:
        cdef conn_t *c = &self.conns[slot]
        u64map_del(&self.conn_keys, c.key)
        c.used = 0
        c.open = 0
        c.next_free = self.free_conn
        self.free_conn = slot
        self.conns_used -= 1

    # ---- time ----------------------------------------------------------------------------------

    def tick(self, uint64_t now_ns, bint force=False, long long max_trees=-1):
        """Close what is due at `now_ns` (the collector's clock). Returns (trees, updated, closed):
        the finished trees that qualify as groups (each a (root info, nodes) pair, nodes as
        NODE_FIELDS tuples, parents first), at most `max_trees` of them (-1: all; the rest are
        freed and counted as trees_suppressed: a rate limit that costs nothing per tree), the
        open connection groups that changed since the last tick (slots), and the connection
        groups that closed (conn_info dicts). With force (shutdown), finished trees and open
        connection groups close now, and unfinished trees are dropped."""
        cdef uint32_t i, slot
        cdef proc_t *r
        cdef conn_t *c
        trees = []
        updated = []
        closed = []
        self.tree_budget = max_trees
        # expire OOM watches
        i = 0
        while i < self.n_watches:
            if self.watch_until[i] < now_ns:
                self.n_watches -= 1
                self.watch_ids[i] = self.watch_ids[self.n_watches]
                self.watch_until[i] = self.watch_until[self.n_watches]
            else:
                i += 1
        # finished trees past their grace period
        i = 0
        while i < self.n_closing:
            slot = self.closing[i]
            r = &self.procs[slot]
            if r.n_live > 0 or r.state != P_EXITED:     # something new arrived in the tree
                r.closing = 0
                self.n_closing -= 1
                self.closing[i] = self.closing[self.n_closing]
                continue
            if r.close_at <= now_ns or force:
                r.closing = 0
                self.n_closing -= 1
                self.closing[i] = self.closing[self.n_closing]
                self._close_tree(slot, trees, True)
                continue
            i += 1
        # trees open for too long (a daemon, a login session): closed as they are
        if force or now_ns - self.last_scan_ns >= 1000000000 or now_ns < self.last_scan_ns:
            self.last_scan_ns = now_ns
            i = 0
            while i < self.n_roots:
                slot = self.roots[i]
                r = &self.procs[slot]
                if force or (now_ns > r.opened_ns and now_ns - r.opened_ns >= self.tree_max_ns):
                    # too old: closed as it is; at shutdown (force), an unfinished tree is
                    # dropped instead (it would only be a fragment)
                    r.flags |= PF_FORCED
                    if r.closing:
                        self._unlist_closing(slot)
                    if force:
                        self.trees_dropped += 1
                    else:
                        self.trees_forced += 1
                    self._close_tree(slot, trees, not force)    # swaps another root into position i
                    continue
                i += 1
        # destinations: open groups close when quiet (or too old); the others expire
        if self.conns_used:
            for slot in range(self.conns_bump):
                c = &self.conns[slot]
                if not c.used:
                    continue
                if c.open:
                    if (force or now_ns >= c.last_fail_ns + self.conn_close_ns
                            or now_ns >= c.opened_ns + self.conn_max_ns):
                        closed.append(self.conn_info(slot))
                        self._free_conn(slot)
                    elif c.dirty:
                        c.dirty = 0
                        updated.append(slot)
                elif force or c.last_fail_ns + self.conn_window_ns < now_ns:
                    self._free_conn(slot)
        return trees, updated, closed

    cdef void _unlist_closing(self, uint32_t slot) noexcept nogil:
        # (closing is scanned linearly: it only holds trees in their few seconds of grace)
        cdef uint32_t i
        for i in range(self.n_closing):
            if self.closing[i] == slot:
                self.n_closing -= 1
                self.closing[i] = self.closing[self.n_closing]
                break
        self.procs[slot].closing = 0

    cdef int _close_tree(self, uint32_t root, list out, bint emit) except -1:
        """Free a tree; when it qualifies (and emit), append (info, nodes) to `out` first."""
        cdef proc_t *r = &self.procs[root]
        cdef uint32_t n, i
        cdef bint qualifies = emit and (r.n_procs >= self.min_procs
                                        or (r.n_failed > 0 and r.n_procs >= self.min_procs_failed))
        self._drop_root(root)
        n = self._walk(root)
        self.trees_closed += 1
        if qualifies and self.tree_budget == 0:
            self.trees_suppressed += 1
        elif qualifies:
            if self.tree_budget > 0:
                self.tree_budget -= 1
            self.trees_emitted += 1
            out.append((self._tree_info(root), self._nodes(n)))
        for i in range(n):
            self._release(self.scratch[i])
        return 0

    cdef uint32_t _walk(self, uint32_t root) except? 0xFFFFFFFF:
        """Put the slots of the tree under `root` into scratch, parents before children."""
        cdef uint32_t n = 0, node = root
        while True:
            if n >= self.scratch_cap:
                self._grow(&self.scratch, &self.scratch_cap, n + 1)
            self.scratch[n] = node
            n += 1
            if self.procs[node].first_child != NO_SLOT:
                node = self.procs[node].first_child
                continue
            while node != root and self.procs[node].next_sibling == NO_SLOT:
                node = self.procs[node].parent
            if node == root:
                return n
            node = self.procs[node].next_sibling

    cdef dict _tree_info(self, uint32_t root):
        cdef proc_t *r = &self.procs[root]
        return {"processes": r.n_procs, "live": r.n_live, "failed": r.n_failed,
                "signaled": r.n_signaled, "dropped": r.n_dropped,
                "forced": bool(r.flags & PF_FORCED), "opened_ns": r.opened_ns}

    cdef list _nodes(self, uint32_t n):
        """The nodes in scratch[:n] as tuples (see tree_nodes)."""
        cdef uint32_t i, j, slot
        cdef proc_t *p
        index = {}
        out = []
        for i in range(n):
            slot = self.scratch[i]
            index[slot] = i
        for i in range(n):
            slot = self.scratch[i]
            p = &self.procs[slot]
            parent = index.get(p.parent, -1) if p.parent != NO_SLOT else -1
            out.append(self._node(p, parent))
        return out

    cdef tuple _node(self, proc_t *p, object parent):
        state = "running" if p.state == P_LIVE else "exited"
        return (p.pid, p.ppid, parent, comm_text(p.comm), p.start_ns, p.exec_ns,
                p.exit_ns if p.state == P_EXITED else 0, p.exit_code, p.signal,
                bool(p.core_dumped), state, bool(p.flags & PF_EXEC), p.n_execs, p.cgroup_id,
                ref_tuple(&p.first_exec), ref_tuple(&p.last_exec), ref_tuple(&p.exit))

    NODE_FIELDS = ("pid", "ppid", "parent", "comm", "start_ns", "exec_ns", "exit_ns", "exit_code",
                   "signal", "core_dumped", "state", "exec_seen", "execs", "cgroup_id",
                   "first_exec", "last_exec", "exit_event")

    # ---- what Python asks ------------------------------------------------------------------------

    def process(self, uint32_t pid):
        """What the table knows of pid's newest process (a dict of NODE_FIELDS), or None."""
        cdef uint32_t slot = self._lookup(pid)
        if slot == NO_SLOT:
            return None
        return dict(zip(self.NODE_FIELDS, self._node(&self.procs[slot], None)))

    def conn_info(self, uint32_t slot):
        """The connection entry in `slot` as a dict."""
        cdef conn_t *c
        cdef uint32_t i
        if slot >= self.conns_bump or not self.conns[slot].used:
            return None
        c = &self.conns[slot]
        return {
            "cgroup_id": c.cgroup_id, "family": c.family, "daddr": bytes(c.daddr[:c.daddr_len]),
            "dport": c.dport, "pid": c.pid, "comm": comm_text(c.comm),
            "first_ns": c.first_ns, "last_fail_ns": c.last_fail_ns, "last_ok_ns": c.last_ok_ns,
            "opened_ns": c.opened_ns, "failures": c.failures, "successes": c.successes,
            "by_result": [c.by_result[i] for i in range(<uint32_t>N_RESULTS)],
            "fail_refs": [ref_tuple(&c.fail_refs[i]) for i in range(c.n_fail_refs)],
            "ok_refs": [ref_tuple(&c.ok_refs[i]) for i in range(c.n_ok_refs)],
            "slot": slot,
        }

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
        return {
            "events": self.events, "execs": self.execs, "exits": self.exits,
            "connects": self.connects, "connect_failures": self.connect_failures,
            "processes": self.procs_used, "process_capacity": self.procs_cap,
            "open_trees": self.n_roots, "finished_trees": self.n_closing,
            "trees_closed": self.trees_closed, "trees_emitted": self.trees_emitted,
            "trees_forced": self.trees_forced, "trees_suppressed": self.trees_suppressed,
            "trees_dropped_unfinished": self.trees_dropped,
            "processes_untracked": self.procs_untracked,
            "tree_processes_dropped": self.tree_procs_dropped,
            "destinations": self.conns_used, "destination_capacity": self.conns_cap,
            "connectivity_groups": self.conn_groups, "destinations_untracked": self.conns_untracked,
            "destination_key_collisions": self.conn_key_collisions,
        }


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
