# The process table and its trees: included by correlate.pyx (one extension, C calls between
# its parts). Every exec and exit is linked into trees: a process under the process that started
# it; a process whose parent is unknown, or that entered another cgroup than its parent's, starts
# a tree of its own. A tree is finished when its root and every descendant have exited; after a
# grace period (events of one collector round may arrive out of order: failed exits are sent
# ahead of the rest) tick() hands the trees that qualify (enough processes, or a failure) to
# Python and frees the others in C.

cdef enum:
    P_FREE = 0
    P_LIVE = 1
    P_EXITED = 2

    PF_EXEC = 1               # an exec of it was seen
    PF_EXIT = 2               # its exit was seen
    PF_PLACEHOLDER = 4        # known as an ancestor only (forked, never exec'd as far as we saw)
    PF_FORCED = 8             # (root) closed before it finished: max duration, or shutdown


@cython.final
cdef class ProcessTable:
    """The processes of one collector, linked into trees. Not thread-safe."""

    cdef proc_t *procs                # procs, roots and closing: procs_size slots each, doubled
    cdef uint32_t procs_size          # when a slot is needed and none is free, up to procs_cap
    cdef uint32_t procs_cap
    cdef uint32_t procs_used
    cdef uint32_t procs_bump          # slots from it up were never used
    cdef uint32_t free_proc
    cdef u64map pids                  # pid -> slot of its newest process
    cdef uint32_t *roots              # open trees (each a slot in use: at most procs_size)
    cdef uint32_t n_roots
    cdef uint32_t *closing            # finished trees waiting for their grace period
    cdef uint32_t n_closing
    cdef uint32_t *scratch            # a tree's slots, while it is walked
    cdef uint32_t scratch_cap
    # configuration
    cdef uint32_t max_tree_procs
    cdef uint32_t min_procs
    cdef uint32_t min_procs_failed
    cdef uint64_t tree_grace_ns
    cdef uint64_t tree_max_ns
    cdef bint split_on_cgroup
    # counters
    cdef uint64_t procs_untracked, tree_procs_dropped, trees_closed, trees_emitted
    cdef uint64_t trees_forced, trees_suppressed, trees_dropped
    cdef long long tree_budget        # qualifying trees tick() may still hand over (-1: any)
    cdef uint64_t last_scan_ns

    def __cinit__(self, uint32_t max_processes, uint32_t max_tree_processes,
                  uint32_t min_processes, uint32_t min_processes_failed, double tree_grace_s,
                  double tree_max_s, bint split_on_cgroup):
        if max_processes < 16 or max_processes > (1 << 26):
            raise ValueError(f"max_processes must be within 16..{1 << 26}, not {max_processes}")
        if max_tree_processes < 1:
            raise ValueError("max_tree_processes must be at least 1")
        self.procs_cap = max_processes
        if not self._grow(PROCS_START if max_processes > PROCS_START else max_processes):
            raise MemoryError()
        u64map_init(&self.pids, max_processes * 2, self.procs_size * 2)
        self.free_proc = NO_SLOT
        self.max_tree_procs = max_tree_processes
        self.min_procs = min_processes
        self.min_procs_failed = min_processes_failed
        self.tree_grace_ns = <uint64_t>(tree_grace_s * 1e9)
        self.tree_max_ns = <uint64_t>(tree_max_s * 1e9)
        self.split_on_cgroup = split_on_cgroup

    def __dealloc__(self):
        PyMem_RawFree(self.procs)
        PyMem_RawFree(self.roots)
        PyMem_RawFree(self.closing)
        PyMem_Free(self.scratch)
        u64map_free(&self.pids)

    cdef bint _grow(self, uint32_t size) noexcept nogil:
        """Give procs, roots and closing `size` slots (more than now, at most procs_cap); False
        when memory is short (the tables stay as they were). Slot numbers stay valid: pointers
        into procs do not."""
        cdef void *p
        p = PyMem_RawRealloc(self.roots, size * sizeof(uint32_t))
        if p == NULL:
            return False
        self.roots = <uint32_t *>p
        p = PyMem_RawRealloc(self.closing, size * sizeof(uint32_t))
        if p == NULL:
            return False
        self.closing = <uint32_t *>p
        p = PyMem_RawRealloc(self.procs, size * sizeof(proc_t))
        if p == NULL:
            return False
        self.procs = <proc_t *>p
        self.procs_size = size
        return True

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
        elif self.procs_bump < self.procs_size or (
                self.procs_size < self.procs_cap
                and self._grow(self.procs_size * 2 if self.procs_size * 2 < self.procs_cap
                               else self.procs_cap)):
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

    cdef void on_exec(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
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

    cdef void on_exit(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
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

    # ---- time ----------------------------------------------------------------------------------

    cdef list tick(self, uint64_t now_ns, bint force, long long max_trees):
        """The finished trees past their grace period, and those open too long, that qualify as
        groups: (root info, nodes) pairs, at most `max_trees` (-1: all; the rest are freed and
        counted as trees_suppressed). With force (shutdown), finished trees close now and
        unfinished ones are dropped."""
        cdef uint32_t i, slot
        cdef proc_t *r
        trees = []
        self.tree_budget = max_trees
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
        return trees

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
                grow_u32(&self.scratch, &self.scratch_cap, n + 1)
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

    cdef object process(self, uint32_t pid):
        cdef uint32_t slot = self._lookup(pid)
        if slot == NO_SLOT:
            return None
        return dict(zip(NODE_FIELDS, self._node(&self.procs[slot], None)))

    cdef dict stats(self):
        return {
            "processes": self.procs_used, "process_capacity": self.procs_cap,
            "process_slots": self.procs_size,
            "open_trees": self.n_roots, "finished_trees": self.n_closing,
            "trees_closed": self.trees_closed, "trees_emitted": self.trees_emitted,
            "trees_forced": self.trees_forced, "trees_suppressed": self.trees_suppressed,
            "trees_dropped_unfinished": self.trees_dropped,
            "processes_untracked": self.procs_untracked,
            "tree_processes_dropped": self.tree_procs_dropped,
        }
