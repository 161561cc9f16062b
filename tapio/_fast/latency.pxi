# Included by codec.pyx. Event latency at the server: from an event's kernel timestamp to its
# batch being decoded, counted in C over a DecodedBatch's records.

cdef inline uint32_t latency_bucket(uint64_t d) noexcept nogil:
    """Log-linear buckets: four per power of two (25% wide); 0..7 exact; 260 in all."""
    cdef uint32_t e
    if d < 8:
        return <uint32_t>d
    e = 64 - __builtin_clzll(d)                       # bit length: 4..64
    return e * 4 + <uint32_t>((d >> (e - 3)) & 3)


cdef inline uint64_t bucket_upper(uint32_t i) noexcept nogil:
    cdef uint32_t e = i // 4
    if i < 8:
        return i
    return ((<uint64_t>4 + (i & 3) + 1) << (e - 3)) - 1


cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef class LatencyHistogram:
    """How long events took from their kernel timestamp to being decoded here, for p50/p99.
    Updated in C once per event of a batch; the figures are accurate to 25%."""
    cdef uint64_t counts[260]     # latency_bucket() of 2**64-1 is 259
    cdef readonly uint64_t total

    def add_batch(self, DecodedBatch batch not None, uint64_t now_ns):
        cdef uint32_t i
        cdef uint64_t ts
        with nogil:
            for i in range(batch.c.count):
                ts = batch.c.records[i].timestamp_ns
                self.counts[latency_bucket(now_ns - ts if now_ns > ts else 0)] += 1
            self.total += batch.c.count

    def percentile(self, double q):
        """The q-quantile (0 < q <= 1) in nanoseconds (the upper edge of its bucket); None when
        empty."""
        cdef uint64_t rank, seen = 0
        cdef uint32_t i
        if self.total == 0:
            return None
        rank = <uint64_t>(q * self.total + 0.999999)
        for i in range(260):
            seen += self.counts[i]
            if seen >= rank:
                return bucket_upper(i)
        return bucket_upper(259)

    def reset(self):
        memset(self.counts, 0, sizeof(self.counts))
        self.total = 0
