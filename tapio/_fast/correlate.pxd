# The correlation engine's hot state, per collector (node), in C: the process table with its
# trees (correlate_procs.pxi), and the connection-failure table (correlate_conns.pxi), both owned
# by correlate.pyx's Correlator; the Python rules (tapio/server/correlation/rules/) only hear of
# what may become a group.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from tapio._fast.hashmap cimport u64map

cdef enum:
    NO_SLOT = 0xFFFFFFFF
    # slots a collector's tables start with (they double up to their caps): most need few, and a
    # collector id that sent little should cost little
    PROCS_START = 256         # 48 KiB
    CONNS_START = 32          # 42 KiB: a destination is listed only once a connect to it failed
    RING_MAX = 64             # most failures a connectivity threshold can count (its ring)
    CONN_FAIL_REFS = 32       # failed connects of a destination kept by reference (the rest counted)
    CONN_OK_REFS = 8          # successful ones "in between" kept by reference
    N_RESULTS = 6             # ConnectResult values 0..5


cdef struct evref:
    # where an event is: the Correlator's ordinal of its batch and its index there, and the n of
    # its id "ebpf-<n>" (0 when the id has another form), which names it once the batch is gone
    uint64_t seq
    uint32_t batch
    uint32_t index


cdef struct proc_t:
    uint64_t start_ns         # first exec; for a process seen only by its exit, its fork time
    uint64_t exec_ns          # latest exec
    uint64_t exit_ns
    uint64_t cgroup_id
    uint32_t pid
    uint32_t ppid
    uint32_t parent           # slots in the pool (NO_SLOT: none)
    uint32_t first_child
    uint32_t next_sibling     # also links the free list
    uint32_t root
    int32_t exit_code
    uint32_t signal
    uint32_t n_execs
    uint8_t state             # P_FREE, P_LIVE, P_EXITED
    uint8_t flags             # PF_*
    uint8_t core_dumped
    char comm[16]
    evref first_exec
    evref last_exec
    evref exit
    # the tree, kept on its root
    uint64_t opened_ns
    uint64_t close_at         # when the finished tree is due (0: not finished)
    uint32_t n_procs
    uint32_t n_live
    uint32_t n_failed
    uint32_t n_signaled
    uint32_t n_dropped        # processes of this tree that were not recorded (tree or pool full)
    uint32_t root_pos         # index in Correlator.roots
    uint8_t closing           # listed in Correlator.closing


cdef struct conn_t:
    uint64_t key
    uint64_t cgroup_id
    uint64_t first_ns         # first counted failure (of the open group: its start)
    uint64_t last_fail_ns
    uint64_t last_ok_ns
    uint64_t opened_ns
    uint64_t ring[64]         # RING_MAX: the newest failure times, a ring
    uint32_t ring_head
    uint32_t ring_n
    uint32_t family
    uint32_t dport
    uint32_t daddr_len
    uint8_t daddr[16]
    uint32_t pid              # the latest failing process
    char comm[16]
    uint64_t failures
    uint64_t successes
    uint64_t by_result[6]     # N_RESULTS
    uint32_t n_fail_refs
    uint32_t n_ok_refs
    evref fail_refs[32]       # CONN_FAIL_REFS
    evref ok_refs[8]          # CONN_OK_REFS
    uint8_t used
    uint8_t open
    uint8_t dirty
    uint32_t next_free
