# The connection table: included by correlate.pyx. Failed connects per (cgroup, destination);
# when `threshold` failures fall within `window`, the destination opens a group, which then counts
# failures and the successes in between until it has been quiet for `close_after`.


@cython.final
cdef class ConnectionTable:
    """Failed connects of one collector, per (cgroup, destination). Not thread-safe."""

    cdef conn_t *conns                # conns_size slots, doubled when a slot is needed and
    cdef uint32_t conns_size          # none is free, up to conns_cap
    cdef uint32_t conns_cap
    cdef uint32_t conns_used
    cdef uint32_t conns_bump
    cdef uint32_t free_conn
    cdef u64map conn_keys             # destination key -> slot
    # configuration
    cdef uint32_t conn_threshold
    cdef uint64_t conn_window_ns
    cdef uint64_t conn_close_ns
    cdef uint64_t conn_max_ns
    cdef uint32_t conn_fail_mask      # bit r: ConnectResult r is a failure
    # counters
    cdef uint64_t connects, connect_failures, conns_untracked, conn_groups, conn_key_collisions

    def __cinit__(self, uint32_t max_connections, uint32_t conn_threshold, double conn_window_s,
                  double conn_close_after_s, double conn_max_s, conn_failures):
        if max_connections < 16 or max_connections > (1 << 24):
            raise ValueError(f"max_connections must be within 16..{1 << 24}, not {max_connections}")
        if not 1 <= conn_threshold <= RING_MAX:
            raise ValueError(f"the connectivity threshold must be within 1..{RING_MAX}, not {conn_threshold}")
        self.conns_cap = max_connections
        self.conns_size = CONNS_START if max_connections > CONNS_START else max_connections
        self.conns = <conn_t *>PyMem_RawMalloc(self.conns_size * sizeof(conn_t))
        if self.conns == NULL:
            raise MemoryError()
        u64map_init(&self.conn_keys, max_connections * 2, self.conns_size * 2)
        self.free_conn = NO_SLOT
        self.conn_threshold = conn_threshold
        self.conn_window_ns = <uint64_t>(conn_window_s * 1e9)
        self.conn_close_ns = <uint64_t>(conn_close_after_s * 1e9)
        self.conn_max_ns = <uint64_t>(conn_max_s * 1e9)
        self.conn_fail_mask = 0
        for r in conn_failures:
            if not 0 < r < N_RESULTS:
                raise ValueError(f"{r} is not a failed ConnectResult (1..{N_RESULTS - 1})")
            self.conn_fail_mask |= 1u << <uint32_t>r

    def __dealloc__(self):
        PyMem_RawFree(self.conns)
        u64map_free(&self.conn_keys)

    cdef bint _grow(self) noexcept nogil:
        """Double conns (at most conns_cap); False at the cap or when memory is short (the table
        stays as it was). Slot numbers stay valid: pointers into conns do not."""
        cdef uint32_t size = self.conns_size * 2 if self.conns_size * 2 < self.conns_cap else self.conns_cap
        cdef conn_t *p
        if self.conns_size >= self.conns_cap:
            return False
        p = <conn_t *>PyMem_RawRealloc(self.conns, size * sizeof(conn_t))
        if p == NULL:
            return False
        self.conns = p
        self.conns_size = size
        return True

    cdef uint32_t on_connect(self, const tapio_batch *b, const tapio_record *rec, uint32_t ordinal,
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
                return NO_SLOT
        elif not failed:
            return NO_SLOT            # a success to a destination without failures: nothing to do
        else:
            slot = self.free_conn
            if slot == NO_SLOT:
                if self.conns_bump >= self.conns_size and not self._grow():
                    self.conns_untracked += n
                    return NO_SLOT
                slot = self.conns_bump
            if not u64map_put(&self.conn_keys, key, slot):
                self.conns_untracked += n
                return NO_SLOT
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
            return NO_SLOT
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
            return NO_SLOT
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
                return slot
        return NO_SLOT

    cdef void _free_conn(self, uint32_t slot) noexcept nogil:
        cdef conn_t *c = &self.conns[slot]
        u64map_del(&self.conn_keys, c.key)
        c.used = 0
        c.open = 0
        c.next_free = self.free_conn
        self.free_conn = slot
        self.conns_used -= 1

    cdef tuple tick(self, uint64_t now_ns, bint force):
        """(updated, closed): the open groups that changed since the last tick (slots), and those
        that closed (info dicts): quiet for close_after, too old, or force. Destinations without
        an open group expire after their window."""
        cdef uint32_t slot
        cdef conn_t *c
        updated = []
        closed = []
        if self.conns_used:
            for slot in range(self.conns_bump):
                c = &self.conns[slot]
                if not c.used:
                    continue
                if c.open:
                    if (force or now_ns >= c.last_fail_ns + self.conn_close_ns
                            or now_ns >= c.opened_ns + self.conn_max_ns):
                        closed.append(self.info(slot))
                        self._free_conn(slot)
                    elif c.dirty:
                        c.dirty = 0
                        updated.append(slot)
                elif force or c.last_fail_ns + self.conn_window_ns < now_ns:
                    self._free_conn(slot)
        return updated, closed

    cdef object info(self, uint32_t slot):
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

    cdef dict stats(self):
        return {
            "connects": self.connects, "connect_failures": self.connect_failures,
            "destinations": self.conns_used, "destination_capacity": self.conns_cap,
            "destination_slots": self.conns_size,
            "connectivity_groups": self.conn_groups, "destinations_untracked": self.conns_untracked,
            "destination_key_collisions": self.conn_key_collisions,
        }
