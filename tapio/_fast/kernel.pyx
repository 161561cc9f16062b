# cython: language_level=3, boundscheck=False, wraparound=False
"""Tapio's BPF object in the kernel: open, configure, load, attach, read the ring buffer, close.

One `KernelProbes` owns every kernel resource (the object, its links, the ring buffer); `close()`
releases them all, once, and a test loads and closes it many times counting file descriptors.
"""
import errno
import os

from tapio import vocab

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno as c_errno, ENOSPC
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memmove, memset, strlen, strcmp

from tapio._fast.libbpf cimport *
from tapio._fast.events cimport (
    tapio_config, TAPIO_EVENT_EXEC, TAPIO_EVENT_EXIT, TAPIO_EVENT_TCP_CONNECT,
    TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE, TAPIO_EVENT_OOM_KILL, TAPIO_EVENT_SIGNAL,
    TAPIO_EVENT_TYPE_COUNT,
)
from tapio._fast.arena cimport EventArena, arena_t, arena_push, PUSH_FULL
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

cdef extern from "time.h" nogil:
    enum: CLOCK_BOOTTIME
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)

cdef extern from "stdio.h" nogil:
    int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)

cdef extern from "sys/mount.h" nogil:
    int mount(const char *source, const char *target, const char *fstype, unsigned long flags,
              const void *data)

cdef extern from "bpf/btf.h" nogil:
    struct btf_param:
        uint32_t name_off
        uint32_t type
    const btf_param *btf_params(const btf_type *t)


# Event type names (tapio.vocab's public spellings) and the kernel numbers they stand for; a test
# checks them against the wire contract's.
EVENT_TYPES = {
    "exec": TAPIO_EVENT_EXEC,
    "exit": TAPIO_EVENT_EXIT,
    "tcp_connect": TAPIO_EVENT_TCP_CONNECT,
    "tcp_accept": TAPIO_EVENT_TCP_ACCEPT,
    "tcp_close": TAPIO_EVENT_TCP_CLOSE,
    "oom_kill": TAPIO_EVENT_OOM_KILL,
    "signal": TAPIO_EVENT_SIGNAL,
}
EVENT_TYPE_NAMES = {number: name for name, number in EVENT_TYPES.items()}

# Which event types each program produces: a program none of whose types is enabled is not loaded.
# Every program of the object must be listed (tests/test_bpf_object.py): one missing is never
# loaded.
_PROGRAM_TYPES = {
    b"tapio_exec": {TAPIO_EVENT_EXEC},
    b"tapio_exit": {TAPIO_EVENT_EXIT},
    b"tapio_tcp_state": {TAPIO_EVENT_TCP_CONNECT, TAPIO_EVENT_TCP_CLOSE},
    # accepted sockets are also what passive closes are attributed to
    b"tapio_accept4_exit": {TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE},
    b"tapio_accept_exit": {TAPIO_EVENT_TCP_ACCEPT, TAPIO_EVENT_TCP_CLOSE},
    b"tapio_oom_victim": {TAPIO_EVENT_OOM_KILL},
    b"tapio_signal_generate": {TAPIO_EVENT_SIGNAL},
}

DEFAULT_OBJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tapio.bpf.o")
BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"


class BpfError(OSError):
    """A kernel or libbpf failure, with what to do about it in the message."""


_HINTS = {
    errno.EPERM: "needs root or CAP_BPF+CAP_PERFMON (try sudo)",
    errno.EACCES: "needs root or CAP_BPF+CAP_PERFMON (try sudo)",
    errno.ENOMEM: "the kernel refused the memory: raise RLIMIT_MEMLOCK (ulimit -l) or use a "
                  "smaller --ring-buffer-size",
    errno.E2BIG: "the kernel refused the size: use a smaller --ring-buffer-size",
    errno.EINVAL: "the kernel rejected the program: it needs Linux >= 5.8 with BTF "
                  "(CONFIG_DEBUG_INFO_BTF=y); run with TAPIO_DEBUG_LIBBPF=1 to see libbpf's log",
    errno.ENOENT: "a kernel feature it needs is missing: Linux >= 5.8 with BTF "
                  "(CONFIG_DEBUG_INFO_BTF=y); run with TAPIO_DEBUG_LIBBPF=1 to see libbpf's log",
    errno.ENOTSUP: "this kernel lacks a needed BPF feature (Linux >= 5.8 with BTF)",
    errno.ESRCH: "a tracepoint is missing from this kernel",
}


def _bpf_error(int err, str what):
    """A BpfError for a positive errno, carrying the hint for it and libbpf's last words."""
    hint = _HINTS.get(err, os.strerror(err))
    message = f"{what}: {os.strerror(err)}: {hint}"
    tail = libbpf_log_tail()
    if tail and os.environ.get("TAPIO_DEBUG_LIBBPF"):
        message += "\n--- libbpf ---\n" + tail
    exc = BpfError(err, message)
    exc.libbpf_log = tail
    return exc


# libbpf's messages are kept (the newest LOG_SIZE bytes) rather than printed: they explain a
# failure, and TAPIO_DEBUG_LIBBPF=1 shows them. Verifier logs are long; the reason is at the end.
cdef enum:
    LOG_SIZE = 8192
cdef char _log[LOG_SIZE]
cdef size_t _log_len = 0
cdef bint _log_echo = False


cdef int _on_libbpf_print(libbpf_print_level level, const char *fmt, va_list ap) noexcept nogil:
    global _log_len
    cdef char line[1024]
    cdef int n
    if level == LIBBPF_DEBUG:
        return 0
    n = vsnprintf(line, sizeof(line), fmt, ap)
    if n <= 0:
        return 0
    if <size_t>n >= sizeof(line):
        n = sizeof(line) - 1
    if _log_len + n > LOG_SIZE:
        # keep the newest bytes: slide the log left
        if <size_t>n >= LOG_SIZE:
            _log_len = 0
        else:
            memmove(_log, _log + (_log_len + n - LOG_SIZE), LOG_SIZE - n)
            _log_len = LOG_SIZE - n
    memcpy(_log + _log_len, line, n)
    _log_len += n
    return 0


libbpf_set_print(_on_libbpf_print)


def libbpf_log_tail():
    """The newest messages libbpf printed (warnings, verifier output), as text."""
    return (<char *>_log)[:_log_len].decode("utf-8", "replace")


def _clear_libbpf_log():
    global _log_len
    _log_len = 0


cdef int _on_sample(void *ctx, void *data, size_t size) noexcept nogil:
    """Ring-buffer callback: copy the record into the arena. libbpf has already advanced past
    the record when it calls us, so we never refuse one: the arena reports full on the record
    that fills its last slot, and the negative return stops ring_buffer__consume there."""
    cdef arena_t *arena = (<arena_t **>ctx)[0]
    if arena_push(arena, data, size) == PUSH_FULL:
        return -ENOSPC
    return 0


def ensure_tracefs():
    """Mount tracefs where libbpf looks for tracepoint ids, if it is not there. True when usable."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return True
    if os.path.isdir("/sys/kernel/debug/tracing/events"):
        return True
    mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, NULL)
    return os.path.isdir(os.path.join(TRACEFS, "events"))


def mark_victim_passes_task():
    """Whether the kernel's oom:mark_victim tracepoint passes the victim's task_struct (Linux >=
    6.8); older kernels pass only a pid, which is not enough for an OOM event."""
    cdef btf *vmlinux = btf__load_vmlinux_btf()
    cdef int32_t id
    cdef const btf_type *t
    cdef const btf_param *params
    if vmlinux == NULL:
        return False
    try:
        id = btf__find_by_name_kind(vmlinux, b"btf_trace_mark_victim", BTF_KIND_TYPEDEF)
        if id < 0:
            return False
        t = btf__type_by_id(vmlinux, btf__type_by_id(vmlinux, id).type)   # the pointer
        if t == NULL or btf_kind(t) != BTF_KIND_PTR:
            return False
        t = btf__type_by_id(vmlinux, t.type)                               # the prototype
        if t == NULL or btf_kind(t) != BTF_KIND_FUNC_PROTO or btf_vlen(t) < 2:
            return False
        params = btf_params(t)
        t = btf__type_by_id(vmlinux, params[1].type)                       # after the void *
        return t != NULL and btf_kind(t) == BTF_KIND_PTR
    finally:
        btf__free(vmlinux)


cdef int _global_offset(bpf_object *obj, const char *section, const char *name) except? -2:
    """Offset of a global variable in the object's .rodata or .bss, from the object's BTF."""
    cdef btf *b = bpf_object__btf(obj)
    cdef int32_t sec_id
    cdef const btf_type *sec
    cdef const btf_var_secinfo *vars
    cdef const btf_type *var
    cdef int i
    if b == NULL:
        return -1
    sec_id = btf__find_by_name_kind(b, section, BTF_KIND_DATASEC)
    if sec_id < 0:
        return -1
    sec = btf__type_by_id(b, sec_id)
    vars = btf_var_secinfos(sec)
    for i in range(btf_vlen(sec)):
        var = btf__type_by_id(b, vars[i].type)
        if strcmp(btf__name_by_offset(b, var.name_off), name) == 0:
            return vars[i].offset
    return -1


def object_programs(object_path=None):
    """The names of the programs in a BPF object file, read by libbpf without loading anything
    (no privileges needed)."""
    cdef bpf_object *obj
    cdef bpf_program *prog
    path = object_path or DEFAULT_OBJECT
    obj = bpf_object__open_file(os.fsencode(path), NULL)
    if obj == NULL:
        raise _bpf_error(c_errno, f"cannot open BPF object {path}")
    names = []
    try:
        prog = bpf_object__next_program(obj, NULL)
        while prog != NULL:
            names.append(bpf_program__name(prog).decode())
            prog = bpf_object__next_program(obj, prog)
    finally:
        bpf_object__close(obj)
    return names


def program_types():
    """{program name: the event type names it produces}: the loader's table."""
    return {name.decode(): {EVENT_TYPE_NAMES[t] for t in types}
            for name, types in _PROGRAM_TYPES.items()}


cdef class KernelProbes:
    """The loaded and attached BPF object. Build one with `KernelProbes.start(...)`."""
    cdef bpf_object *obj
    cdef list links                 # bpf_link pointers, as ints
    cdef ring_buffer *rb
    cdef bpf_map *drops_map
    cdef bpf_map *cgroup_map
    cdef arena_t *target            # the arena being filled during consume()
    cdef int ncpus
    cdef readonly frozenset event_types   # the types that are loaded and attached
    cdef readonly dict skipped            # type name -> why it is not available here
    cdef readonly str object_path
    cdef readonly uint32_t ring_buffer_bytes
    cdef uint64_t *reader_deadline  # tapio_reader_deadline_ns in our mapping of the object's .bss
    cdef void *bss                  # that mapping
    cdef size_t bss_size

    def __init__(self):
        raise TypeError("use KernelProbes.start(...)")

    @staticmethod
    def start(event_types=None, uint32_t ring_buffer_bytes=8 << 20, object_path=None,
              self_tgid=None, cgroup_allow=None, double routine_share=0.75):
        """Open, configure, load and attach the BPF object: blocking (call it from a thread in
        async code). Returns a KernelProbes that must be closed.

        event_types: names from EVENT_TYPES (default: all). ring_buffer_bytes: a power of two,
        a multiple of the page size. self_tgid: the process never traced (default: this one).
        cgroup_allow: cgroup v2 ids; when given, only tasks in them are traced.
        routine_share: the part of the ring buffer routine events may fill; the rest is kept
        for priority events (OOM kills, fatal signals, failed exits). 1.0: no reserve.
        """
        cdef KernelProbes self = KernelProbes.__new__(KernelProbes)
        self.links = []
        self.skipped = {}
        self.object_path = object_path or DEFAULT_OBJECT
        self.ring_buffer_bytes = ring_buffer_bytes
        if not 0 < routine_share <= 1:
            raise ValueError(f"routine_share must be in (0, 1], not {routine_share}")
        try:
            self._open_and_load(event_types, self_tgid, cgroup_allow, routine_share)
        except BaseException:
            self.close()
            raise
        return self

    def _open_and_load(self, event_types, self_tgid, cgroup_allow, double routine_share):
        cdef tapio_config config
        cdef bpf_object_open_opts opts
        cdef bpf_map *rodata
        cdef bpf_map *events_map
        cdef size_t rodata_size = 0
        cdef char *rodata_image
        cdef int offset, err
        cdef bpf_program *prog
        cdef bpf_link *link
        cdef uint64_t cgroup_id
        cdef uint8_t one = 1

        wanted = _parse_types(event_types)
        page = os.sysconf("SC_PAGE_SIZE")
        if self.ring_buffer_bytes < page or self.ring_buffer_bytes & (self.ring_buffer_bytes - 1):
            raise BpfError(errno.EINVAL, f"ring buffer size {self.ring_buffer_bytes} must be a power "
                                         f"of two and at least the page size ({page})")
        if not os.path.exists(BTF_PATH):
            raise BpfError(errno.ENOENT, f"this kernel has no BTF ({BTF_PATH} is missing): it needs "
                                         "a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.8)")
        if not os.path.exists(self.object_path):
            raise BpfError(errno.ENOENT, f"BPF object not found at {self.object_path}: build it "
                                         "with ./build.sh build (or reinstall the package)")
        if TAPIO_EVENT_OOM_KILL in wanted and not mark_victim_passes_task():
            wanted.discard(TAPIO_EVENT_OOM_KILL)
            self.skipped["oom_kill"] = "oom:mark_victim passes no task on this kernel (needs Linux >= 6.8)"
        need_tracefs = TAPIO_EVENT_TCP_ACCEPT in wanted or TAPIO_EVENT_TCP_CLOSE in wanted
        if need_tracefs and not ensure_tracefs():
            wanted.discard(TAPIO_EVENT_TCP_ACCEPT)
            self.skipped["tcp_accept"] = f"tracefs is not mounted at {TRACEFS} and cannot be"

        _clear_libbpf_log()
        path = os.fsencode(self.object_path)
        # Relocate against vmlinux BTF only: otherwise libbpf 1.1 also searches kernel modules'
        # BTF for types it cannot find (a CO-RE variant for older kernels), and listing those
        # needs CAP_SYS_ADMIN, which the collector's capability set (CAP_BPF+CAP_PERFMON) lacks.
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        btf_path = BTF_PATH.encode()
        opts.btf_custom_path = btf_path
        self.obj = bpf_object__open_file(path, &opts)
        if self.obj == NULL:
            raise _bpf_error(c_errno, f"cannot open BPF object {self.object_path}")

        events_map = bpf_object__find_map_by_name(self.obj, b"events")
        self.drops_map = bpf_object__find_map_by_name(self.obj, b"drops")
        self.cgroup_map = bpf_object__find_map_by_name(self.obj, b"cgroup_allow")
        rodata = bpf_object__find_map_by_name(self.obj, b".rodata")
        if events_map == NULL or self.drops_map == NULL or self.cgroup_map == NULL or rodata == NULL:
            raise BpfError(errno.EINVAL, f"{self.object_path} is not Tapio's BPF object "
                                         "(maps missing): rebuild with ./build.sh build")
        err = bpf_map__set_max_entries(events_map, self.ring_buffer_bytes)
        if err < 0:
            raise _bpf_error(-err, "cannot size the ring buffer")

        memset(&config, 0, sizeof(config))
        config.self_tgid = os.getpid() if self_tgid is None else self_tgid
        config.enabled_types = 0
        for t in wanted:
            config.enabled_types |= 1u << t
        config.filter_cgroups = 1 if cgroup_allow is not None else 0
        config.routine_limit = <uint32_t>(self.ring_buffer_bytes * routine_share)
        # TAPIO_PROBE_READS_ONLY=1: read the kernel as on Linux < 5.9 (a probe read per field)
        # even where this one has the helpers that give BTF pointers: how tests run that path
        config.probe_reads_only = os.environ.get("TAPIO_PROBE_READS_ONLY") == "1"
        offset = _global_offset(self.obj, b".rodata", b"tapio_config")
        rodata_image = <char *>bpf_map__initial_value(rodata, &rodata_size)
        if offset < 0 or rodata_image == NULL or offset + sizeof(config) > rodata_size:
            raise BpfError(errno.EINVAL, f"{self.object_path} has no tapio_config: rebuild it")
        memcpy(rodata_image + offset, &config, sizeof(config))

        prog = bpf_object__next_program(self.obj, NULL)
        while prog != NULL:
            produces = _PROGRAM_TYPES.get(bpf_program__name(prog), set())
            bpf_program__set_autoload(prog, bool(produces & wanted))
            prog = bpf_object__next_program(self.obj, prog)

        with nogil:
            err = bpf_object__load(self.obj)
        if err < 0:
            raise _bpf_error(-err, "cannot load the BPF programs into the kernel")

        prog = bpf_object__next_program(self.obj, NULL)
        while prog != NULL:
            name = bpf_program__name(prog)
            if _PROGRAM_TYPES.get(name, set()) & wanted:
                link = bpf_program__attach(prog)
                if link == NULL:
                    raise _bpf_error(c_errno, f"cannot attach {name.decode()}")
                self.links.append(<size_t>link)
            prog = bpf_object__next_program(self.obj, prog)

        if cgroup_allow is not None:
            for cg in cgroup_allow:
                cgroup_id = cg
                err = bpf_map__update_elem(self.cgroup_map, &cgroup_id, sizeof(cgroup_id),
                                           &one, sizeof(one), 0)
                if err < 0:
                    raise _bpf_error(-err, f"cannot allow cgroup {cg}")

        self._map_reader_deadline()
        self.rb = ring_buffer__new(bpf_map__fd(events_map), _on_sample, &self.target, NULL)
        if self.rb == NULL:
            raise _bpf_error(c_errno, "cannot map the ring buffer")
        self.ncpus = libbpf_num_possible_cpus()
        self.event_types = frozenset(wanted)

    cdef int _map_reader_deadline(self) except -1:
        """Map the object's .bss (libbpf 1.1 maps only a skeleton's) to reach the deadline."""
        cdef bpf_map *bss = bpf_object__find_map_by_name(self.obj, b".bss")
        cdef size_t size = 0
        cdef size_t page = os.sysconf("SC_PAGE_SIZE")
        cdef int offset = _global_offset(self.obj, b".bss", b"tapio_reader_deadline_ns")
        if bss == NULL or offset < 0 or bpf_map__initial_value(bss, &size) == NULL or \
                offset + sizeof(uint64_t) > size:
            raise BpfError(errno.EINVAL, f"{self.object_path} has no tapio_reader_deadline_ns: "
                                         "rebuild it with ./build.sh build")
        size = (size + page - 1) // page * page
        self.bss = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(bss), 0)
        if self.bss == MAP_FAILED:
            self.bss = NULL
            raise _bpf_error(c_errno, "cannot map the BPF object's .bss")
        self.bss_size = size
        self.reader_deadline = <uint64_t *>(<char *>self.bss + offset)
        return 0

    def read_within(self, double seconds):
        """Promise the kernel that the ring buffer will be read again within `seconds` without
        being woken: until then no event wakes epoll_fd (each wakeup costs the kernel several
        microseconds; see submit() in bpf/emit.bpf.h). 0 withdraws the promise: do so, then
        read once more, before waiting on epoll_fd."""
        cdef timespec now
        self._check_open()
        if seconds <= 0:
            self.reader_deadline[0] = 0
            return
        clock_gettime(CLOCK_BOOTTIME, &now)
        self.reader_deadline[0] = (<uint64_t>now.tv_sec * 1000000000ULL + <uint64_t>now.tv_nsec
                                   + <uint64_t>(seconds * 1e9))

    @property
    def epoll_fd(self):
        """A file descriptor that is readable when the ring buffer has records."""
        self._check_open()
        return ring_buffer__epoll_fd(self.rb)

    def consume(self, EventArena arena not None):
        """Move records from the ring buffer into the arena until either is exhausted; returns
        how many were moved (malformed records are counted in the arena instead). Never blocks."""
        cdef int err
        cdef uint32_t before = arena.c.count
        self._check_open()
        if arena.c.count >= arena.c.limit:
            return 0
        self.target = &arena.c
        with nogil:
            err = ring_buffer__consume(self.rb)
        self.target = NULL
        if err < 0 and err != -ENOSPC:
            raise _bpf_error(-err, "cannot read the ring buffer")
        return arena.c.count - before

    def kernel_drops(self):
        """Failed ring-buffer reserves since load, per event type number (summed over CPUs)."""
        cdef uint32_t key
        cdef uint64_t *values
        cdef uint64_t total
        cdef int cpu, err
        self._check_open()
        values = <uint64_t *>malloc(self.ncpus * sizeof(uint64_t))
        if values == NULL:
            raise MemoryError()
        drops = {}
        try:
            for key in range(1, TAPIO_EVENT_TYPE_COUNT):
                err = bpf_map__lookup_elem(self.drops_map, &key, sizeof(key), values,
                                           self.ncpus * sizeof(uint64_t), 0)
                if err < 0:
                    raise _bpf_error(-err, "cannot read the drop counters")
                total = 0
                for cpu in range(self.ncpus):
                    total += values[cpu]
                drops[key] = total
        finally:
            free(values)
        return drops

    def ring_buffer_used(self):
        """Bytes the kernel has written to the ring buffer that are not consumed yet: the
        producer position minus the consumer position, read from the map's two control pages
        (mapped read-only for the call; libbpf 1.1 has no API for them). For metrics."""
        cdef bpf_map *events_map
        cdef void *consumer
        cdef void *producer
        cdef size_t page = os.sysconf("SC_PAGE_SIZE")
        cdef uint64_t used
        cdef int fd
        self._check_open()
        events_map = bpf_object__find_map_by_name(self.obj, b"events")
        fd = bpf_map__fd(events_map)
        consumer = mmap(NULL, page, PROT_READ, MAP_SHARED, fd, 0)
        if consumer == MAP_FAILED:
            raise _bpf_error(c_errno, "cannot map the ring buffer's consumer position")
        producer = mmap(NULL, page, PROT_READ, MAP_SHARED, fd, page)
        if producer == MAP_FAILED:
            munmap(consumer, page)
            raise _bpf_error(c_errno, "cannot map the ring buffer's producer position")
        used = (<unsigned long *>producer)[0] - (<unsigned long *>consumer)[0]
        munmap(producer, page)
        munmap(consumer, page)
        return used

    def allow_cgroup(self, uint64_t cgroup_id):
        """Add a cgroup v2 id to the allow-list (only effective when started with cgroup_allow)."""
        cdef uint8_t one = 1
        cdef int err
        self._check_open()
        err = bpf_map__update_elem(self.cgroup_map, &cgroup_id, sizeof(cgroup_id), &one, 1, 0)
        if err < 0:
            raise _bpf_error(-err, f"cannot allow cgroup {cgroup_id}")

    @property
    def closed(self):
        return self.obj == NULL

    def _check_open(self):
        if self.obj == NULL:
            raise ValueError("the BPF probes are closed")

    def close(self):
        """Detach every program and free the object and ring buffer. Idempotent."""
        self._release()

    cdef void _release(self) noexcept:
        cdef size_t link
        if self.bss != NULL:
            munmap(self.bss, self.bss_size)
            self.bss = NULL
            self.reader_deadline = NULL
        if self.rb != NULL:
            ring_buffer__free(self.rb)
            self.rb = NULL
        for link in self.links:
            bpf_link__destroy(<bpf_link *>link)
        self.links = []
        if self.obj != NULL:
            bpf_object__close(self.obj)
            self.obj = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self.obj != NULL or self.rb != NULL:
            import warnings
            warnings.warn("KernelProbes was not closed: closing it now", ResourceWarning)
            self._release()


def _parse_types(event_types):
    """Names (or numbers) of event types -> a set of numbers; None means every type."""
    if event_types is None:
        return set(EVENT_TYPES.values())
    wanted = set()
    for t in event_types:
        if isinstance(t, int) and t in EVENT_TYPE_NAMES:
            wanted.add(t)
        elif vocab.EVENT_TYPE_ALIASES.get(t, t) in EVENT_TYPES:
            wanted.add(EVENT_TYPES[vocab.EVENT_TYPE_ALIASES.get(t, t)])
        else:
            raise ValueError(f"unknown event type {t!r}: choose from {', '.join(EVENT_TYPES)}")
    return wanted
