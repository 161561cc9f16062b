# Protocol buffers wire format: sizes and writers for the encoder, a bounds-checked reader for the
# decoder. Everything is inline C: the codec's hot loops call these per field.
#
# The reader follows asyncpg's frb: a C struct (pointer, end) whose every read checks what is left
# and, instead of reading past the end, records an error and returns -1. Errors go into one shared
# wire_error so that a failure deep inside a nested message surfaces with its first cause.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    # GCC and clang both have it; the argument is never 0 below (v | 1)
    int __builtin_clzll(unsigned long long x) nogil

cdef enum:
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_SGROUP = 3
    WT_EGROUP = 4
    WT_I32 = 5

# wire_error.code; codec.pyx turns them into DecodeError messages
cdef enum:
    WIRE_OK = 0
    WIRE_TRUNCATED = 1         # a varint or fixed-width value runs past the end
    WIRE_VARINT_TOO_LONG = 2   # more than 10 bytes
    WIRE_LENGTH_PAST_END = 3   # a length-delimited field claims more bytes than are left
    WIRE_FIELD_ZERO = 4
    WIRE_TAG_TOO_LARGE = 5     # a tag that does not fit in 32 bits
    WIRE_GROUP = 6             # wire types 3/4: groups are not part of proto3
    WIRE_BAD_WIRE_TYPE = 7     # wire types 6/7 do not exist
    WIRE_WRONG_TYPE = 8        # a known field with another wire type than its declaration
    WIRE_TOO_MANY_EVENTS = 9
    WIRE_NO_MEMORY = 10


cdef struct wire_error:
    int code
    size_t offset          # where in the whole input the failing read started
    const char *message    # the message being read (innermost), NULL until known
    uint32_t field         # its field being read, 0 when the tag itself failed


cdef struct wire_reader:
    const uint8_t *p
    const uint8_t *end
    const uint8_t *base    # start of the whole input: offsets are relative to it
    wire_error *err


# ---- sizes and writers (the encoder computes every size before it writes) ----

cdef inline size_t varint_size(uint64_t v) noexcept nogil:
    # bits in use, 7 to a byte: 1 + floor((bit length - 1) / 7)
    return 1 + <size_t>(63 - __builtin_clzll(v | 1)) // 7


cdef inline uint8_t *put_varint(uint8_t *w, uint64_t v) noexcept nogil:
    while v >= 0x80:
        w[0] = <uint8_t>(v | 0x80)
        w += 1
        v >>= 7
    w[0] = <uint8_t>v
    return w + 1


cdef inline uint8_t *put_fixed64(uint8_t *w, uint64_t v) noexcept nogil:
    # byte by byte, so the output is little-endian on any host (compilers merge the stores)
    cdef int i
    for i in range(8):
        w[i] = <uint8_t>(v >> (8 * i))
    return w + 8


cdef inline uint8_t *put_byte(uint8_t *w, uint8_t b) noexcept nogil:
    w[0] = b
    return w + 1


# ---- the reader ----

cdef inline void reader_init(wire_reader *r, const uint8_t *p, size_t n, wire_error *err) noexcept nogil:
    r.p = p
    r.end = p + n
    r.base = p
    r.err = err


cdef inline int rd_fail(wire_reader *r, int code) noexcept nogil:
    """Record the first error (and where the reader stands); always -1."""
    if r.err.code == WIRE_OK:
        r.err.code = code
        r.err.offset = <size_t>(r.p - r.base)
    return -1


cdef inline int rd_fail_in(wire_reader *r, const char *message, uint32_t field) noexcept nogil:
    """Name the innermost message and field of an error already recorded; always -1."""
    if r.err.message == NULL:
        r.err.message = message
        r.err.field = field
    return -1


cdef inline int rd_varint_slow(wire_reader *r, uint64_t *out) noexcept nogil:
    cdef const uint8_t *p = r.p
    cdef uint64_t v = 0
    cdef unsigned shift = 0
    cdef uint8_t b
    while shift < 70:  # 10 bytes: shifts 0, 7, ..., 63; bits past 64 are dropped, as protobuf does
        if p >= r.end:
            return rd_fail(r, WIRE_TRUNCATED)
        b = p[0]
        p += 1
        v |= <uint64_t>(b & 0x7f) << shift
        if b < 0x80:
            r.p = p
            out[0] = v
            return 0
        shift += 7
    return rd_fail(r, WIRE_VARINT_TOO_LONG)


cdef inline int rd_varint(wire_reader *r, uint64_t *out) noexcept nogil:
    if r.p < r.end and r.p[0] < 0x80:  # most values on our wire fit in one byte
        out[0] = r.p[0]
        r.p += 1
        return 0
    return rd_varint_slow(r, out)


cdef inline int rd_tag(wire_reader *r, uint32_t *tag) noexcept nogil:
    cdef uint64_t v
    if r.p < r.end and 8 <= r.p[0] < 0x80:  # one-byte tag of fields 1..15
        tag[0] = r.p[0]
        r.p += 1
        return 0
    if rd_varint(r, &v) < 0:
        return -1
    if v > 0xFFFFFFFF:
        return rd_fail(r, WIRE_TAG_TOO_LARGE)
    if v >> 3 == 0:
        return rd_fail(r, WIRE_FIELD_ZERO)
    tag[0] = <uint32_t>v
    return 0


cdef inline int rd_fixed64(wire_reader *r, uint64_t *out) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    if r.end - r.p < 8:
        return rd_fail(r, WIRE_TRUNCATED)
    for i in range(8):
        v |= <uint64_t>r.p[i] << (8 * i)
    r.p += 8
    out[0] = v
    return 0


cdef inline int rd_len(wire_reader *r, wire_reader *sub) noexcept nogil:
    """A length-delimited field: `sub` reads its body, `r` moves past it."""
    cdef uint64_t n
    if rd_varint(r, &n) < 0:
        return -1
    if n > <uint64_t>(r.end - r.p):
        return rd_fail(r, WIRE_LENGTH_PAST_END)
    sub.p = r.p
    sub.end = r.p + n
    sub.base = r.base
    sub.err = r.err
    r.p += n
    return 0


cdef inline int rd_skip(wire_reader *r, uint32_t wire_type) noexcept nogil:
    """Skip the value of an unknown field."""
    cdef uint64_t v
    cdef wire_reader sub
    if wire_type == WT_VARINT:
        return rd_varint(r, &v)
    if wire_type == WT_I64:
        return rd_fixed64(r, &v)
    if wire_type == WT_LEN:
        return rd_len(r, &sub)
    if wire_type == WT_I32:
        if r.end - r.p < 4:
            return rd_fail(r, WIRE_TRUNCATED)
        r.p += 4
        return 0
    if wire_type == WT_SGROUP or wire_type == WT_EGROUP:
        return rd_fail(r, WIRE_GROUP)
    return rd_fail(r, WIRE_BAD_WIRE_TYPE)


cdef inline uint64_t field_mask(uint32_t first, uint32_t last) noexcept nogil:
    """Bits first..last (field numbers < 64) set: the known fields of a message."""
    return ((<uint64_t>2 << last) - 1) & ~((<uint64_t>1 << first) - 1)


cdef inline int rd_other(wire_reader *r, uint32_t tag, uint64_t known) noexcept nogil:
    """A tag the message's dispatch did not take: a known field with the wrong wire type is an
    error, an unknown field is skipped (proto3 keeps parsing what newer peers add)."""
    cdef uint32_t field = tag >> 3
    if field < 64 and (known >> field) & 1:
        return rd_fail(r, WIRE_WRONG_TYPE)
    return rd_skip(r, tag & 7)
