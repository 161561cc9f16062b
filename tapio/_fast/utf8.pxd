# cython: boundscheck=False, wraparound=False, cdivision=True
# Kernel strings (comm, filenames, argv, cgroup names) are bytes; proto3 strings must be UTF-8.
# scrub_copy() copies such a string and replaces each byte that is not part of a valid UTF-8
# sequence (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF) with '?'. The length
# never changes, so the encoder sizes a string before it looks at its bytes.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef inline bint is_cont(uint8_t b) noexcept nogil:
    return (b & 0xC0) == 0x80


cdef inline size_t utf8_sequence(const uint8_t *s, size_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence that starts at s (n > 0 bytes left), 0 if none does."""
    cdef uint8_t b = s[0]
    cdef uint8_t lo = 0x80
    cdef uint8_t hi = 0xBF
    if b < 0x80:
        return 1
    if b < 0xC2:  # a continuation byte, or the lead of an overlong 2-byte form
        return 0
    if b < 0xE0:
        return 2 if n >= 2 and is_cont(s[1]) else 0
    if b < 0xF0:
        if b == 0xE0:
            lo = 0xA0  # overlong below
        elif b == 0xED:
            hi = 0x9F  # UTF-16 surrogates above
        return 3 if n >= 3 and lo <= s[1] <= hi and is_cont(s[2]) else 0
    if b < 0xF5:
        if b == 0xF0:
            lo = 0x90  # overlong below
        elif b == 0xF4:
            hi = 0x8F  # past U+10FFFF above
        return 4 if n >= 4 and lo <= s[1] <= hi and is_cont(s[2]) and is_cont(s[3]) else 0
    return 0


cdef inline size_t ascii_prefix(const uint8_t *s, size_t n) noexcept nogil:
    """How many leading bytes are ASCII: eight at a time, the common case being all of them."""
    cdef size_t i = 0
    cdef uint64_t word
    while i + 8 <= n:
        memcpy(&word, s + i, 8)
        if word & 0x8080808080808080ULL:
            break
        i += 8
    while i < n and s[i] < 0x80:
        i += 1
    return i


cdef inline uint8_t *scrub_copy(uint8_t *dst, const uint8_t *src, size_t n) noexcept nogil:
    """Copy n bytes, each one outside a valid UTF-8 sequence becoming '?'; returns dst + n."""
    cdef size_t i = ascii_prefix(src, n)
    cdef size_t k
    memcpy(dst, src, n)
    while i < n:
        k = utf8_sequence(src + i, n - i)
        if k == 0:
            dst[i] = b'?'
            k = 1
        i += k
    return dst + n
