/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel types Tapio's BPF programs read, and only the fields they read.
 *
 * Instead of a generated vmlinux.h (tens of thousands of lines, one per kernel and architecture)
 * the programs declare what they touch with preserve_access_index: clang records every field
 * access as a CO-RE relocation and libbpf resolves it against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux) at load time, by field name. Anonymous unions in the kernel's
 * definitions need not be repeated here: libbpf looks through them when it matches names.
 */
#ifndef TAPIO_KERNEL_TYPES_H
#define TAPIO_KERNEL_TYPES_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

/* Whether the running kernel has a helper: bpf_core_enum_value_exists() on this enum is relocated
 * against the kernel's BTF at load time, and the verifier never visits a branch it rules out. */
enum bpf_func_id {
	BPF_FUNC_skc_to_tcp_sock = 137, /* Linux 5.9 */
	BPF_FUNC_get_current_task_btf = 158, /* Linux 5.11 */
};

/* bpf_helper_defs.h names these in helper prototypes; their contents are never read here. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum { BPF_ANY = 0 };
enum { BPF_RB_AVAIL_DATA = 0 };
/* a bpf_ringbuf_submit() flag (include/uapi/linux/bpf.h) */
enum { BPF_RB_NO_WAKEUP = 1 };

#define PRESERVE __attribute__((preserve_access_index))

struct kernfs_node {
	const char *name;
	__u64 id;
} PRESERVE;

struct cgroup {
	struct kernfs_node *kn;
} PRESERVE;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
} PRESERVE;

struct css_set {
	struct cgroup_subsys_state *subsys[16];
	struct cgroup *dfl_cgrp;
} PRESERVE;

/* The subsystem index of the memory controller; its value is relocated from the kernel's BTF. */
enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

typedef struct {
	long counter;
} atomic_long_t;

struct page_counter {
	atomic_long_t usage;
	unsigned long max;
} PRESERVE;

struct mem_cgroup {
	struct cgroup_subsys_state css;
	struct page_counter memory;
} PRESERVE;

/* Since Linux 6.2 (f1a7941243c1 "mm: convert mm's rss stats into percpu_counter") */
struct percpu_counter {
	__s64 count;
} PRESERVE;

struct mm_struct {
	unsigned long total_vm;
	unsigned long arg_start;
	unsigned long arg_end;
	struct percpu_counter rss_stat[4];
} PRESERVE;

/* Before Linux 6.2 */
struct mm_rss_stat {
	atomic_long_t count[4];
} PRESERVE;

struct mm_struct___pre62 {
	struct mm_rss_stat rss_stat;
} PRESERVE;

typedef struct {
	__u32 val;
} kuid_t;

typedef struct {
	__u32 val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
} PRESERVE;

typedef void (*__sighandler_t)(int);

struct sigaction {
	__sighandler_t sa_handler;
} PRESERVE;

struct k_sigaction {
	struct sigaction sa;
} PRESERVE;

struct sighand_struct {
	struct k_sigaction action[64];
} PRESERVE;

struct file {
	void *private_data;
} PRESERVE;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} PRESERVE;

struct files_struct {
	struct fdtable *fdt;
} PRESERVE;

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	char comm[16];
	struct task_struct *real_parent;
	const struct cred *real_cred;
	struct mm_struct *mm;
	struct css_set *cgroups;
	struct sighand_struct *sighand;
	struct files_struct *files;
} PRESERVE;

struct linux_binprm {
	int argc;
	const char *filename;
} PRESERVE;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} PRESERVE;

struct sock_common {
	unsigned long skc_flags; /* sk_flags: bits of enum sock_flags */
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} PRESERVE;

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	__u16 sk_protocol;
} PRESERVE;

/* Relocated by name from the kernel's BTF. */
enum sock_flags {
	SOCK_DONE = 1,
};

struct tcp_sock {
	__u64 bytes_received;
	__u64 bytes_acked;
	__u32 snd_una;
	__u32 write_seq;
} PRESERVE;

/* inet_sport keeps the local port after inet_put_port() has zeroed skc_num (a socket moving
 * to CLOSE is unhashed before inet_sock_set_state fires). */
struct inet_sock {
	__be16 inet_sport;
} PRESERVE;

struct socket {
	struct sock *sk;
} PRESERVE;

struct kernel_siginfo {
	int si_signo;
	int si_errno;
	int si_code;
} PRESERVE;

/* The fixed part of a syscall-exit tracepoint record (tracefs format of syscalls/sys_exit_*). */
struct syscall_exit_record {
	__u64 common; /* type, flags, preempt count, pid of the common trace entry */
	int nr;
	long ret;
};

#endif /* TAPIO_KERNEL_TYPES_H */
