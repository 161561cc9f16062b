# cython: boundscheck=False, wraparound=False, cdivision=True
# Protocol buffers wire format: sizes and writers for the encoder, bounds-checked readers for the
# decoder. Everything is inline C: the codec's hot loops call these per field.
#
# Readers take the read position and the end of the message by value and return the position
# after what they read, or NULL when the read would pass the end or the bytes are not what they
# must be; then the first error (what, and where) is in the caller's wire_error. Like asyncpg's
# frb every read checks what is left; unlike a reader struct behind a pointer, the position stays
# in a register: stores into decoded records cannot alias it, so nothing is reloaded per field.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, UINT32_MAX

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
    WIRE_TOO_LONG = 11         # a string or repeated field past what a collector can produce


cdef struct wire_error:
    int code
    const uint8_t *at      # where the failing read started
    const char *message    # the message being read (innermost), NULL until known
    uint32_t field         # its field being read, 0 when the tag itself failed


# ---- sizes and writers (the encoder measures each message before it writes it) ----

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


# ---- readers ----

cdef inline const uint8_t *wire_fail(wire_error *err, int code, const uint8_t *at) noexcept nogil:
    """Record the first error and where it is; always NULL."""
    if err.code == WIRE_OK:
        err.code = code
        err.at = at
    return NULL


cdef inline const uint8_t *wire_fail_in(wire_error *err, const char *message, uint32_t field) noexcept nogil:
    """Name the innermost message and field of an error already recorded; always NULL."""
    if err.message == NULL:
        err.message = message
        err.field = field
    return NULL


cdef inline const uint8_t *get_varint_slow(const uint8_t *p, const uint8_t *end, uint64_t *out,
                                           wire_error *err) noexcept nogil:
    cdef const uint8_t *start = p
    cdef uint64_t v = 0
    cdef unsigned shift = 0
    cdef uint8_t b
    while shift < 70:  # 10 bytes: shifts 0, 7, ..., 63; bits past 64 are dropped, as protobuf does
        if p >= end:
            return wire_fail(err, WIRE_TRUNCATED, start)
        b = p[0]
        p += 1
        v |= <uint64_t>(b & 0x7f) << shift
        if b < 0x80:
            out[0] = v
            return p
        shift += 7
    return wire_fail(err, WIRE_VARINT_TOO_LONG, start)


cdef inline const uint8_t *get_varint(const uint8_t *p, const uint8_t *end, uint64_t *out,
                                      wire_error *err) noexcept nogil:
    if p < end and p[0] < 0x80:  # most values on our wire fit in one byte
        out[0] = p[0]
        return p + 1
    return get_varint_slow(p, end, out, err)


cdef inline const uint8_t *get_u32(const uint8_t *p, const uint8_t *end, uint32_t *out,
                                   wire_error *err) noexcept nogil:
    """A uint32 / int32 / enum field: the low 32 bits of the varint, as protobuf reads it."""
    cdef uint64_t v = 0
    p = get_varint(p, end, &v, err)
    out[0] = <uint32_t>v
    return p


cdef inline const uint8_t *get_bool(const uint8_t *p, const uint8_t *end, uint8_t *out,
                                    wire_error *err) noexcept nogil:
    cdef uint64_t v = 0
    p = get_varint(p, end, &v, err)
    out[0] = v != 0
    return p


cdef inline const uint8_t *get_tag(const uint8_t *p, const uint8_t *end, uint32_t *tag,
                                   wire_error *err) noexcept nogil:
    cdef uint64_t v = 0
    cdef const uint8_t *start = p
    if p < end and 8 <= p[0] < 0x80:  # one-byte tag of fields 1..15
        tag[0] = p[0]
        return p + 1
    p = get_varint(p, end, &v, err)
    if p == NULL:
        return NULL
    if v > UINT32_MAX:
        return wire_fail(err, WIRE_TAG_TOO_LARGE, start)
    if v >> 3 == 0:
        return wire_fail(err, WIRE_FIELD_ZERO, start)
    tag[0] = <uint32_t>v
    return p


cdef inline const uint8_t *get_fixed64(const uint8_t *p, const uint8_t *end, uint64_t *out,
                                       wire_error *err) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    if end - p < 8:
        return wire_fail(err, WIRE_TRUNCATED, p)
    for i in range(8):
        v |= <uint64_t>p[i] << (8 * i)
    out[0] = v
    return p + 8


cdef inline const uint8_t *get_len(const uint8_t *p, const uint8_t *end, const uint8_t **body,
                                   wire_error *err) noexcept nogil:
    """A length-delimited field: its body is body[0] up to the returned position."""
    cdef uint64_t n = 0
    cdef const uint8_t *start = p
    p = get_varint(p, end, &n, err)
    if p == NULL:
        return NULL
    if n > <uint64_t>(end - p):
        return wire_fail(err, WIRE_LENGTH_PAST_END, start)
    body[0] = p
    return p + n


cdef inline const uint8_t *skip_value(const uint8_t *p, const uint8_t *end, uint32_t wire_type,
                                      wire_error *err) noexcept nogil:
    """Skip the value of an unknown field."""
    cdef uint64_t v
    cdef const uint8_t *body
    if wire_type == WT_VARINT:
        return get_varint(p, end, &v, err)
    if wire_type == WT_I64:
        return get_fixed64(p, end, &v, err)
    if wire_type == WT_LEN:
        return get_len(p, end, &body, err)
    if wire_type == WT_I32:
        return p + 4 if end - p >= 4 else wire_fail(err, WIRE_TRUNCATED, p)
    if wire_type == WT_SGROUP or wire_type == WT_EGROUP:
        return wire_fail(err, WIRE_GROUP, p)
    return wire_fail(err, WIRE_BAD_WIRE_TYPE, p)


cdef inline uint64_t field_mask(uint32_t first, uint32_t last) noexcept nogil:
    """Bits first..last (field numbers < 64) set: the known fields of a message."""
    return ((<uint64_t>2 << last) - 1) & ~((<uint64_t>1 << first) - 1)


cdef inline const uint8_t *skip_other(const uint8_t *p, const uint8_t *end, uint32_t tag,
                                      uint64_t known, wire_error *err) noexcept nogil:
    """A tag the message's dispatch did not take: a known field with the wrong wire type is an
    error, an unknown field is skipped (proto3 keeps parsing what newer peers add)."""
    cdef uint32_t field = tag >> 3
    if field < 64 and (known >> field) & 1:
        return wire_fail(err, WIRE_WRONG_TYPE, p - varint_size(tag))  # at the tag
    return skip_value(p, end, tag & 7, err)
