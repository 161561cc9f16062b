# A fixed-capacity open-addressing map from uint64 keys to uint32 values, for per-event lookups in
# C (cgroup id -> context, pid -> process, event key -> slot). Bounded by design: when it is 3/4
# full, put() refuses and the owner clears it (its contents are caches, rebuilt on demand).
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

cdef struct u64map:
    uint64_t *keys          # stored as key + 1, so that 0 marks an empty slot (key 2^64-1 is refused)
    uint32_t *values
    uint32_t mask           # capacity - 1 (a power of two)
    uint32_t used


cdef inline int u64map_init(u64map *m, uint32_t capacity) except -1:
    cdef uint32_t cap = 16
    while cap < capacity:
        cap <<= 1
    m.keys = <uint64_t *>PyMem_Calloc(cap, sizeof(uint64_t))
    m.values = <uint32_t *>PyMem_Calloc(cap, sizeof(uint32_t))
    if m.keys == NULL or m.values == NULL:
        raise MemoryError()
    m.mask = cap - 1
    m.used = 0
    return 0


cdef inline void u64map_free(u64map *m) noexcept:
    PyMem_Free(m.keys)
    PyMem_Free(m.values)
    m.keys = NULL
    m.values = NULL


cdef inline uint32_t u64map_slot(const u64map *m, uint64_t key) noexcept nogil:
    # Fibonacci hashing spreads sequential keys (pids, cgroup inode numbers) over the table
    return <uint32_t>((key * 0x9E3779B97F4A7C15ULL) >> 32) & m.mask


cdef inline bint u64map_get(const u64map *m, uint64_t key, uint32_t *value) noexcept nogil:
    cdef uint32_t i = u64map_slot(m, key)
    cdef uint64_t stored = key + 1
    while m.keys[i] != 0:
        if m.keys[i] == stored:
            value[0] = m.values[i]
            return True
        i = (i + 1) & m.mask
    return False


cdef inline bint u64map_put(u64map *m, uint64_t key, uint32_t value) noexcept nogil:
    """Insert or replace; False when the map is 3/4 full (or the key is 2^64-1): clear it first."""
    cdef uint32_t i = u64map_slot(m, key)
    cdef uint64_t stored = key + 1
    if stored == 0:
        return False
    while m.keys[i] != 0:
        if m.keys[i] == stored:
            m.values[i] = value
            return True
        i = (i + 1) & m.mask
    if (m.used + 1) * 4 > (m.mask + 1) * 3:
        return False
    m.keys[i] = stored
    m.values[i] = value
    m.used += 1
    return True


cdef inline void u64map_clear(u64map *m) noexcept nogil:
    memset(m.keys, 0, (m.mask + 1) * sizeof(uint64_t))
    m.used = 0


cdef inline void u64map_del(u64map *m, uint64_t key) noexcept nogil:
    """Remove `key` if present, shifting later entries of its probe run back (no tombstones)."""
    cdef uint32_t i = u64map_slot(m, key), j, home
    cdef uint64_t stored = key + 1
    while m.keys[i] != stored:
        if m.keys[i] == 0:
            return
        i = (i + 1) & m.mask
    j = i
    while True:
        j = (j + 1) & m.mask
        if m.keys[j] == 0:
            break
        home = u64map_slot(m, m.keys[j] - 1)
        # move j into the hole at i unless j's home lies cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            m.keys[i] = m.keys[j]
            m.values[i] = m.values[j]
            i = j
    m.keys[i] = 0
    m.used -= 1
