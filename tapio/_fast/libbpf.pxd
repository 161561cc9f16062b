# The parts of the system libbpf (>= 1.0, libbpf-dev) that Tapio calls, and nothing more.
# libbpf 1.x reports errors as a negative errno returned, or NULL with errno set.
from libc.stdint cimport uint32_t, int32_t

cdef extern from "stdarg.h":
    ctypedef struct va_list:
        pass

cdef extern from "bpf/libbpf.h" nogil:
    enum libbpf_print_level:
        LIBBPF_WARN
        LIBBPF_INFO
        LIBBPF_DEBUG
    ctypedef int (*libbpf_print_fn_t)(libbpf_print_level level, const char *fmt, va_list ap) noexcept
    libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn)

    struct bpf_object:
        pass
    struct bpf_program:
        pass
    struct bpf_map:
        pass
    struct bpf_link:
        pass
    struct bpf_object_open_opts:
        size_t sz
        const char *btf_custom_path

    bpf_object *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)
    int bpf_object__load(bpf_object *obj)
    void bpf_object__close(bpf_object *obj)
    btf *bpf_object__btf(const bpf_object *obj)

    bpf_program *bpf_object__next_program(const bpf_object *obj, bpf_program *prog)
    const char *bpf_program__name(const bpf_program *prog)
    int bpf_program__set_autoload(bpf_program *prog, bint autoload)
    bpf_link *bpf_program__attach(const bpf_program *prog)
    int bpf_link__destroy(bpf_link *link)

    bpf_map *bpf_object__find_map_by_name(const bpf_object *obj, const char *name)
    int bpf_map__fd(const bpf_map *map)
    int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)
    const void *bpf_map__initial_value(bpf_map *map, size_t *psize)
    int bpf_map__lookup_elem(const bpf_map *map, const void *key, size_t key_sz,
                             void *value, size_t value_sz, unsigned long long flags)
    int bpf_map__update_elem(const bpf_map *map, const void *key, size_t key_sz,
                             const void *value, size_t value_sz, unsigned long long flags)
    int libbpf_num_possible_cpus()

    struct ring_buffer:
        pass
    ctypedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size) noexcept nogil
    ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
                                  const void *opts)
    void ring_buffer__free(ring_buffer *rb)
    int ring_buffer__consume(ring_buffer *rb)
    int ring_buffer__epoll_fd(const ring_buffer *rb)

cdef extern from "bpf/btf.h" nogil:
    struct btf:
        pass
    struct btf_type:
        uint32_t name_off
        uint32_t info
        uint32_t type
    struct btf_var_secinfo:
        uint32_t type
        uint32_t offset
        uint32_t size
    enum:
        BTF_KIND_PTR
        BTF_KIND_TYPEDEF
        BTF_KIND_FUNC_PROTO
        BTF_KIND_DATASEC
    btf *btf__load_vmlinux_btf()
    void btf__free(btf *b)
    int32_t btf__find_by_name_kind(const btf *b, const char *name, uint32_t kind)
    const btf_type *btf__type_by_id(const btf *b, uint32_t id)
    const char *btf__name_by_offset(const btf *b, uint32_t offset)
    unsigned short btf_kind(const btf_type *t)
    unsigned short btf_vlen(const btf_type *t)
    btf_var_secinfo *btf_var_secinfos(const btf_type *t)
