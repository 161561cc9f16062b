# An open-addressing map from uint64 keys to uint32 values, for per-event lookups in C (cgroup id
# -> context, pid -> process, event key -> slot). Bounded by design: it may start small and
# double up to its capacity as it fills (so that a table nobody fills costs little), and when it
# is 3/4 full at its capacity, put() refuses and the owner clears it (its contents are caches,
# rebuilt on demand). Memory from the raw allocator: put() grows without the GIL.
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

cdef struct u64map:
    uint64_t *keys          # stored as key + 1, so that 0 marks an empty slot (key 2^64-1 is refused)
    uint32_t *values
    uint32_t mask           # size - 1 (a power of two)
    uint32_t used
    uint32_t max_mask       # the capacity - 1: the most it may grow to


cdef inline uint32_t _u64map_pow2(uint32_t n) noexcept nogil:
    cdef uint32_t size = 16
    while size < n:
        size <<= 1
    return size


cdef inline int u64map_init(u64map *m, uint32_t capacity, uint32_t initial=0) except -1:
    """A map of `capacity` slots (a power of two at least); with `initial`, it starts with that
    many and doubles as it fills, up to `capacity`."""
    cdef uint32_t size = _u64map_pow2(initial if 0 < initial < capacity else capacity)
    m.keys = <uint64_t *>PyMem_RawCalloc(size, sizeof(uint64_t))
    m.values = <uint32_t *>PyMem_RawCalloc(size, sizeof(uint32_t))
    if m.keys == NULL or m.values == NULL:
        PyMem_RawFree(m.keys)
        PyMem_RawFree(m.values)
        m.keys = NULL
        m.values = NULL
        raise MemoryError()
    m.mask = size - 1
    m.max_mask = _u64map_pow2(capacity) - 1
    m.used = 0
    return 0


cdef inline void u64map_free(u64map *m) noexcept nogil:
    PyMem_RawFree(m.keys)
    PyMem_RawFree(m.values)
    m.keys = NULL
    m.values = NULL


cdef inline uint32_t u64map_slot(const u64map *m, uint64_t key) noexcept nogil:
    # Fibonacci hashing spreads sequential keys (pids, cgroup inode numbers) over the table
    return <uint32_t>((key * 0x9E3779B97F4A7C15ULL) >> 32) & m.mask


cdef inline uint32_t u64map_find(const u64map *m, uint64_t stored) noexcept nogil:
    """The probe: where `stored` (key + 1) is, or else the empty slot where it would go."""
    cdef uint32_t i = u64map_slot(m, stored - 1)
    while m.keys[i] != 0 and m.keys[i] != stored:
        i = (i + 1) & m.mask
    return i


cdef inline bint u64map_grow(u64map *m) noexcept nogil:
    """Rehash into a table twice the size; False at its capacity or when memory is short (the
    map stays as it was)."""
    cdef uint64_t *old_keys = m.keys
    cdef uint32_t *old_values = m.values
    cdef uint32_t old_size = m.mask + 1, i, j
    cdef uint64_t *keys
    cdef uint32_t *values
    if m.mask >= m.max_mask:
        return False
    keys = <uint64_t *>PyMem_RawCalloc(old_size * 2, sizeof(uint64_t))
    values = <uint32_t *>PyMem_RawCalloc(old_size * 2, sizeof(uint32_t))
    if keys == NULL or values == NULL:
        PyMem_RawFree(keys)
        PyMem_RawFree(values)
        return False
    m.keys = keys
    m.values = values
    m.mask = old_size * 2 - 1
    for i in range(old_size):
        if old_keys[i] != 0:
            j = u64map_find(m, old_keys[i])
            m.keys[j] = old_keys[i]
            m.values[j] = old_values[i]
    PyMem_RawFree(old_keys)
    PyMem_RawFree(old_values)
    return True


cdef inline bint u64map_get(const u64map *m, uint64_t key, uint32_t *value) noexcept nogil:
    cdef uint32_t i = u64map_find(m, key + 1)
    if m.keys[i] == 0:
        return False
    value[0] = m.values[i]
    return True


cdef inline bint u64map_put(u64map *m, uint64_t key, uint32_t value) noexcept nogil:
    """Insert or replace; False when the map is 3/4 full at its capacity (or the key is 2^64-1):
    clear it first."""
    cdef uint64_t stored = key + 1
    cdef uint32_t i
    if stored == 0:
        return False
    i = u64map_find(m, stored)
    if m.keys[i] == stored:
        m.values[i] = value
        return True
    if (m.used + 1) * 4 > (m.mask + 1) * 3:
        if not u64map_grow(m):
            return False
        i = u64map_find(m, stored)
    m.keys[i] = stored
    m.values[i] = value
    m.used += 1
    return True


cdef inline void u64map_clear(u64map *m) noexcept nogil:
    memset(m.keys, 0, (m.mask + 1) * sizeof(uint64_t))
    m.used = 0


cdef inline void u64map_del(u64map *m, uint64_t key) noexcept nogil:
    """Remove `key` if present, shifting later entries of its probe run back (no tombstones)."""
    cdef uint32_t i = u64map_find(m, key + 1), j, home
    if m.keys[i] == 0:
        return
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
