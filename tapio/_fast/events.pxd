# The kernel event layout, declared from the one header that defines it (bpf/tapio_events.h).
# Only what Cython touches is listed; sizes and offsets come from the C compiler.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "tapio_events.h" nogil:
    enum:
        TAPIO_COMM_LEN
        TAPIO_FILENAME_LEN
        TAPIO_ARGS_LEN
        TAPIO_CGROUP_NAME_LEN
        TAPIO_EXEC_ARGS_TRUNCATED
        TAPIO_EXEC_ARGS_REDACTED

    enum tapio_event_type:
        TAPIO_EVENT_EXEC
        TAPIO_EVENT_EXIT
        TAPIO_EVENT_TCP_CONNECT
        TAPIO_EVENT_TCP_ACCEPT
        TAPIO_EVENT_TCP_CLOSE
        TAPIO_EVENT_OOM_KILL
        TAPIO_EVENT_SIGNAL
        TAPIO_EVENT_THROTTLED
        TAPIO_EVENT_TYPE_COUNT

    enum tapio_tcp_direction:
        TAPIO_TCP_ACTIVE
        TAPIO_TCP_PASSIVE

    struct tapio_header:
        uint64_t timestamp_ns
        uint64_t cgroup_id
        uint32_t type
        uint32_t pid
        uint32_t tid
        uint32_t ppid
        uint32_t uid
        uint32_t gid
        char comm[16]

    struct tapio_exec:
        tapio_header hdr
        uint32_t args_count
        uint32_t args_size
        uint32_t flags
        char filename[256]
        char args[256]

    struct tapio_exit:
        tapio_header hdr
        int32_t exit_code
        uint32_t signal
        uint32_t core_dumped
        uint64_t start_ns
        uint64_t duration_ns

    struct tapio_tcp:
        tapio_header hdr
        uint8_t saddr[16]
        uint8_t daddr[16]
        uint16_t sport
        uint16_t dport
        uint16_t family
        uint16_t direction
        int32_t error
        uint64_t duration_ns
        uint64_t bytes_sent
        uint64_t bytes_received

    struct tapio_oom:
        tapio_header hdr
        uint32_t trigger_pid
        char trigger_comm[16]
        uint64_t memcg_id
        uint64_t memcg_limit_pages
        uint64_t memcg_usage_pages
        uint64_t total_vm_pages
        uint64_t rss_pages
        char memcg_name[64]

    struct tapio_signal:
        tapio_header hdr
        uint32_t signal
        int32_t code
        uint32_t sender_pid
        char sender_comm[16]

    struct tapio_throttled:
        tapio_header hdr
        uint64_t first_ns
        uint64_t last_ns
        uint64_t exec
        uint64_t tcp_connect
        uint64_t tcp_accept
        uint64_t tcp_close
        uint64_t interval_ns
        uint32_t budget
        uint32_t burst

    union tapio_event:
        tapio_header hdr
        tapio_exec exec
        tapio_exit exit
        tapio_tcp tcp
        tapio_oom oom
        tapio_signal signal
        tapio_throttled throttled

    struct tapio_config:
        uint32_t self_tgid
        uint32_t enabled_types
        uint32_t filter_cgroups
        uint32_t routine_limit
        uint32_t probe_reads_only
