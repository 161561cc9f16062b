# cython: boundscheck=False, wraparound=False, cdivision=True
# Decoded events as C records (filled by decode_request.pxi, owned by codec.DecodedBatch). A
# consumer in Cython (the correlation engine) loops over them in nogil C:
#
#     from tapio._fast.codec cimport DecodedBatch
#     from tapio._fast.records cimport tapio_record, record_process, ...
#     cdef tapio_record *rec
#     for i in range(batch.c.count):
#         rec = &batch.c.records[i]
#         if rec.details == TAPIO_EVENT_EXIT and rec.d.exit.signal: ...
#
# Numbers are decoded eagerly. Strings and bytes are tapio_refs into the input bytes, which the
# DecodedBatch keeps alive: nothing is copied. Repeated message fields (argv, labels) are re-read
# from their message body on demand with a field_iter.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from tapio._fast.wire cimport wire_error, get_tag, get_len, skip_value, WT_LEN

cdef enum:
    MAX_EVENTS = 1000000    # per request: more is refused (DecodeError)
    MAX_ANCESTORS = 16      # Process.ancestors kept per event; more are counted only

# tapio_batch.kind: the field number of TapioStreamEventsRequest's `request` oneof that was set
cdef enum:
    KIND_NONE = 0
    KIND_EVENT = 1
    KIND_BATCH = 2
    KIND_CONTROL = 3
    KIND_HELLO = 4


cdef struct tapio_ref:
    # a string or bytes field: buf[off:off + len]
    uint32_t off
    uint32_t len


cdef struct tapio_span:
    # the body of a submessage that is re-read on demand; when the message occurred more than once
    # (protobuf merges the occurrences), `more` is 1 + the index of the next body in spans[], and
    # the first body's `tail` is 1 + the index of the last (appending stays O(1))
    uint32_t off
    uint32_t len
    uint32_t more
    uint32_t tail


cdef struct tapio_exec_rec:
    tapio_ref filename
    tapio_span body           # ExecDetails bodies: field_iter over field 2 yields argv
    uint32_t n_args
    uint32_t args_bytes       # of every argv element, for the decoder's bound
    uint32_t args_count
    uint8_t args_truncated
    uint8_t args_redacted


cdef struct tapio_exit_rec:
    uint64_t start_time_ns
    uint64_t duration_ns
    int32_t exit_code
    uint32_t signal
    uint8_t core_dumped


cdef struct tapio_tcp_rec:
    uint64_t duration_ns
    uint64_t bytes_sent
    uint64_t bytes_received
    tapio_ref saddr
    tapio_ref daddr
    int32_t family            # IpFamily: 4 or 6
    int32_t result            # ConnectResult
    int32_t error
    uint32_t sport
    uint32_t dport
    uint8_t passive


cdef struct tapio_oom_rec:
    uint64_t memcg_id
    uint64_t memcg_limit_bytes
    uint64_t memcg_usage_bytes
    uint64_t total_vm_bytes
    uint64_t rss_bytes
    tapio_ref trigger_comm
    tapio_ref memcg_name
    uint32_t trigger_pid


cdef struct tapio_signal_rec:
    tapio_ref sender_comm
    uint32_t signal
    int32_t code
    uint32_t sender_pid


cdef struct tapio_collapsed_rec:
    # tapio.v1.Collapsed: what an event with count > 1 stands for
    uint64_t first_timestamp_ns
    uint64_t last_timestamp_ns
    uint64_t bytes_sent
    uint64_t bytes_received
    uint64_t duration_min_ns
    uint64_t duration_max_ns
    uint64_t duration_total_ns
    uint32_t sport_min
    uint32_t sport_max


cdef struct tapio_throttled_rec:
    uint64_t first_timestamp_ns
    uint64_t last_timestamp_ns
    uint64_t exec
    uint64_t tcp_connect
    uint64_t tcp_accept
    uint64_t tcp_close
    uint64_t interval_ns
    uint32_t budget
    uint32_t burst


cdef union tapio_details:
    tapio_exec_rec exec
    tapio_exit_rec exit
    tapio_tcp_rec tcp
    tapio_oom_rec oom
    tapio_signal_rec signal
    tapio_throttled_rec throttled


cdef struct tapio_record:
    uint64_t timestamp_ns
    uint64_t cgroup_id
    tapio_ref id
    tapio_ref comm
    tapio_ref wire            # the Event message's own bytes (the first piece of a merged one)
    int32_t type              # EventType
    uint32_t pid
    uint32_t tid
    uint32_t ppid
    uint32_t uid
    uint32_t gid
    uint32_t count
    uint32_t context          # 1 + index into contexts[], 0: none (record_context())
    uint32_t process          # 1 + index into processes[], 0: none (record_process())
    uint32_t collapsed        # 1 + index into collapses[], 0: none (record_collapsed())
    uint8_t details           # which details are set, as a tapio_event_type (oneof field - 15); 0: none
    tapio_details d


cdef struct tapio_context_rec:
    tapio_ref fields[13]      # the string fields by Context field number (1-10, 12)
    tapio_span body           # Context bodies: field_iter over field 11 yields the Labels
    uint32_t n_labels


cdef struct tapio_process_rec:
    tapio_ref executable
    tapio_ref command_line
    tapio_ref user
    uint64_t start_time_ns
    uint32_t n_ancestors      # as many as the message holds; the first MAX_ANCESTORS are below
    uint32_t ancestors[16]    # MAX_ANCESTORS


cdef struct tapio_batch:
    const uint8_t *buf        # the input bytes; every ref and span points into it
    size_t size
    tapio_record *records
    uint32_t count
    uint32_t records_cap
    tapio_context_rec *contexts
    uint32_t n_contexts
    uint32_t contexts_cap
    tapio_process_rec *processes
    uint32_t n_processes
    uint32_t processes_cap
    tapio_collapsed_rec *collapses
    uint32_t n_collapses
    uint32_t collapses_cap
    tapio_span *spans         # continuations of tapio_spans (merged repeated submessages)
    uint32_t n_spans
    uint32_t spans_cap
    uint64_t batch_id
    uint64_t created_at_ns
    uint64_t kernel_drops
    uint64_t processor_drops
    uint64_t buffer_drops
    uint64_t first_seq
    uint64_t last_seq
    uint64_t ledger[7]        # tapio.v1.Ledger's fields in order, when has_ledger
    tapio_ref collector_id
    tapio_ref node_name
    tapio_span event_pieces   # kind event, sent in several pieces: their chain (records[0].wire
                              # is the first); `more` is 0 when it came in one
    int32_t path
    uint8_t kind
    uint8_t has_ledger


# ---- reading records from C ----

cdef inline const char *ref_ptr(const tapio_batch *b, tapio_ref ref) noexcept nogil:
    return <const char *>b.buf + ref.off


cdef inline tapio_context_rec *record_context(const tapio_batch *b, const tapio_record *rec) noexcept nogil:
    return &b.contexts[rec.context - 1] if rec.context else NULL


cdef inline tapio_process_rec *record_process(const tapio_batch *b, const tapio_record *rec) noexcept nogil:
    return &b.processes[rec.process - 1] if rec.process else NULL


cdef inline tapio_collapsed_rec *record_collapsed(const tapio_batch *b, const tapio_record *rec) noexcept nogil:
    return &b.collapses[rec.collapsed - 1] if rec.collapsed else NULL


cdef struct field_iter:
    # The occurrences of one length-delimited field in a chain of message bodies (a tapio_span).
    const tapio_batch *b
    const uint8_t *p
    const uint8_t *end
    uint32_t more
    uint32_t tag
    wire_error err


cdef inline void field_iter_span(field_iter *it, const tapio_span *span) noexcept nogil:
    it.p = it.b.buf + span.off
    it.end = it.p + span.len
    it.more = span.more


cdef inline void field_iter_init(field_iter *it, const tapio_batch *b, const tapio_span *span,
                                 uint32_t field) noexcept nogil:
    it.b = b
    it.tag = field << 3 | WT_LEN
    it.err.code = 0
    field_iter_span(it, span)


cdef inline bint field_iter_next(field_iter *it, tapio_ref *out) noexcept nogil:
    """The next occurrence's body; False at the end. The parser has checked these bodies, so a
    read error cannot happen; should one, iteration just stops."""
    cdef uint32_t tag = 0
    cdef const uint8_t *body = NULL
    while True:
        while it.p != NULL and it.p < it.end:
            it.p = get_tag(it.p, it.end, &tag, &it.err)
            if it.p == NULL:
                return False
            if tag == it.tag:
                it.p = get_len(it.p, it.end, &body, &it.err)
                if it.p == NULL:
                    return False
                out.off = <uint32_t>(body - it.b.buf)
                out.len = <uint32_t>(it.p - body)
                return True
            it.p = skip_value(it.p, it.end, tag & 7, &it.err)
        if it.p == NULL or it.more == 0:
            return False
        field_iter_span(it, &it.b.spans[it.more - 1])


cdef inline void label_key_value(const tapio_batch *b, tapio_ref label, tapio_ref *key,
                                 tapio_ref *value) noexcept nogil:
    """Split a Label body (from field_iter over Context field 11) into its key and value."""
    cdef field_iter it
    cdef tapio_span span
    span.off = label.off
    span.len = label.len
    span.more = span.tail = 0
    key.off = key.len = value.off = value.len = 0
    field_iter_init(&it, b, &span, 1)
    while field_iter_next(&it, key):  # the last occurrence wins
        pass
    field_iter_init(&it, b, &span, 2)
    while field_iter_next(&it, value):
        pass
