# cython: language_level=3
"""The event layout as each compiler sees it, for tests/test_layout.py.

The structs are written once (bpf/tapio_events.h) but compiled twice: by clang for the BPF target
and by the host C compiler for the Cython core. These two functions report both views so a test
can prove they agree, field by field.
"""
import os

from libc.stdint cimport uint32_t, int32_t
from tapio._fast.libbpf cimport btf, btf_type, btf__find_by_name_kind, btf__type_by_id, \
    btf__name_by_offset, btf_vlen, btf__free

cdef extern from "bpf/btf.h" nogil:
    struct btf_member:
        uint32_t name_off
        uint32_t type
        uint32_t offset
    const btf_member *btf_members(const btf_type *t)
    uint32_t btf_member_bit_offset(const btf_type *t, uint32_t member_idx)
    btf *btf__parse_elf(const char *path, void *btf_ext)
    enum:
        BTF_KIND_STRUCT
        BTF_KIND_UNION

cdef extern from *:
    """
    #include <stddef.h>
    #include "tapio_events.h"
    #define TAPIO_FIELD(s, f) { #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f) }
    struct tapio_field_layout { const char *type; const char *field; size_t offset; size_t size; };
    static const struct tapio_field_layout tapio_host_fields[] = {
        TAPIO_FIELD(tapio_header, timestamp_ns), TAPIO_FIELD(tapio_header, cgroup_id),
        TAPIO_FIELD(tapio_header, type), TAPIO_FIELD(tapio_header, pid),
        TAPIO_FIELD(tapio_header, tid), TAPIO_FIELD(tapio_header, ppid),
        TAPIO_FIELD(tapio_header, uid), TAPIO_FIELD(tapio_header, gid),
        TAPIO_FIELD(tapio_header, comm),
        TAPIO_FIELD(tapio_exec, hdr), TAPIO_FIELD(tapio_exec, args_count),
        TAPIO_FIELD(tapio_exec, args_size), TAPIO_FIELD(tapio_exec, flags),
        TAPIO_FIELD(tapio_exec, _pad), TAPIO_FIELD(tapio_exec, filename),
        TAPIO_FIELD(tapio_exec, args),
        TAPIO_FIELD(tapio_exit, hdr), TAPIO_FIELD(tapio_exit, exit_code),
        TAPIO_FIELD(tapio_exit, signal), TAPIO_FIELD(tapio_exit, core_dumped),
        TAPIO_FIELD(tapio_exit, _pad), TAPIO_FIELD(tapio_exit, start_ns),
        TAPIO_FIELD(tapio_exit, duration_ns),
        TAPIO_FIELD(tapio_tcp, hdr), TAPIO_FIELD(tapio_tcp, saddr), TAPIO_FIELD(tapio_tcp, daddr),
        TAPIO_FIELD(tapio_tcp, sport), TAPIO_FIELD(tapio_tcp, dport), TAPIO_FIELD(tapio_tcp, family),
        TAPIO_FIELD(tapio_tcp, direction), TAPIO_FIELD(tapio_tcp, error), TAPIO_FIELD(tapio_tcp, _pad),
        TAPIO_FIELD(tapio_tcp, duration_ns), TAPIO_FIELD(tapio_tcp, bytes_sent),
        TAPIO_FIELD(tapio_tcp, bytes_received),
        TAPIO_FIELD(tapio_oom, hdr), TAPIO_FIELD(tapio_oom, trigger_pid), TAPIO_FIELD(tapio_oom, _pad),
        TAPIO_FIELD(tapio_oom, trigger_comm), TAPIO_FIELD(tapio_oom, memcg_id),
        TAPIO_FIELD(tapio_oom, memcg_limit_pages), TAPIO_FIELD(tapio_oom, memcg_usage_pages),
        TAPIO_FIELD(tapio_oom, total_vm_pages), TAPIO_FIELD(tapio_oom, rss_pages),
        TAPIO_FIELD(tapio_oom, memcg_name),
        TAPIO_FIELD(tapio_signal, hdr), TAPIO_FIELD(tapio_signal, signal),
        TAPIO_FIELD(tapio_signal, code), TAPIO_FIELD(tapio_signal, sender_pid),
        TAPIO_FIELD(tapio_signal, _pad), TAPIO_FIELD(tapio_signal, sender_comm),
        TAPIO_FIELD(tapio_throttled, hdr), TAPIO_FIELD(tapio_throttled, first_ns),
        TAPIO_FIELD(tapio_throttled, last_ns), TAPIO_FIELD(tapio_throttled, exec),
        TAPIO_FIELD(tapio_throttled, tcp_connect), TAPIO_FIELD(tapio_throttled, tcp_accept),
        TAPIO_FIELD(tapio_throttled, tcp_close), TAPIO_FIELD(tapio_throttled, interval_ns),
        TAPIO_FIELD(tapio_throttled, budget), TAPIO_FIELD(tapio_throttled, burst),
        TAPIO_FIELD(tapio_config, self_tgid), TAPIO_FIELD(tapio_config, enabled_types),
        TAPIO_FIELD(tapio_config, filter_cgroups), TAPIO_FIELD(tapio_config, routine_limit),
        TAPIO_FIELD(tapio_config, probe_reads_only), TAPIO_FIELD(tapio_config, _pad),
    };
    static const size_t tapio_host_field_count = sizeof(tapio_host_fields) / sizeof(tapio_host_fields[0]);
    #define TAPIO_SIZE(s) { #s, sizeof(struct s) }
    struct tapio_type_size { const char *type; size_t size; };
    static const struct tapio_type_size tapio_host_sizes[] = {
        TAPIO_SIZE(tapio_header), TAPIO_SIZE(tapio_exec), TAPIO_SIZE(tapio_exit),
        TAPIO_SIZE(tapio_tcp), TAPIO_SIZE(tapio_oom), TAPIO_SIZE(tapio_signal),
        TAPIO_SIZE(tapio_throttled),
        TAPIO_SIZE(tapio_config), { "tapio_event", sizeof(union tapio_event) },
    };
    static const size_t tapio_host_size_count = sizeof(tapio_host_sizes) / sizeof(tapio_host_sizes[0]);
    """
    struct tapio_field_layout:
        const char *type
        const char *field
        size_t offset
        size_t size
    struct tapio_type_size:
        const char *type
        size_t size
    const tapio_field_layout tapio_host_fields[]
    const size_t tapio_host_field_count
    const tapio_type_size tapio_host_sizes[]
    const size_t tapio_host_size_count


def host_layout():
    """{struct: {"size": n, "fields": {field: (offset, size)}}} as the host C compiler lays it out."""
    out = {}
    cdef size_t i
    for i in range(tapio_host_size_count):
        out[tapio_host_sizes[i].type.decode()] = {"size": tapio_host_sizes[i].size, "fields": {}}
    for i in range(tapio_host_field_count):
        f = tapio_host_fields[i]
        out[f.type.decode()]["fields"][f.field.decode()] = (f.offset, f.size)
    return out


def bpf_layout(path, names):
    """The same for the structs `names` as clang laid them out in the BPF object at `path`
    (read from the object's BTF). Field sizes are not in BTF members; offsets and struct sizes are."""
    cdef btf *b = btf__parse_elf(os.fsencode(path), NULL)
    cdef int32_t id
    cdef const btf_type *t
    cdef const btf_member *m
    cdef uint32_t i
    if b == NULL:
        raise OSError(f"cannot read BTF from {path}")
    out = {}
    try:
        for name in names:
            id = btf__find_by_name_kind(b, name.encode(), BTF_KIND_STRUCT)
            if id < 0:
                id = btf__find_by_name_kind(b, name.encode(), BTF_KIND_UNION)
            if id < 0:
                continue
            t = btf__type_by_id(b, id)
            m = btf_members(t)
            fields = {}
            for i in range(btf_vlen(t)):
                fields[btf__name_by_offset(b, m[i].name_off).decode()] = btf_member_bit_offset(t, i) // 8
            out[name] = {"size": t.type, "fields": fields}   # `type` shares its slot with `size`
    finally:
        btf__free(b)
    return out
