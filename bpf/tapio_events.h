/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one place where Tapio's kernel event layout is written down.
 *
 * Included by the BPF programs (bpf/<family>.bpf.c) and, through `cdef extern from`, by the Cython core
 * (tapio/_fast). Every struct has fixed-width fields, explicit padding and a size that is a
 * multiple of 8, so that both compilers agree on it; tests/test_layout.py checks sizes and offsets.
 */
#ifndef TAPIO_EVENTS_H
#define TAPIO_EVENTS_H

#ifndef __bpf__ /* BPF programs get the __u types from kernel_types.h */
#include <linux/types.h>
#endif

#define TAPIO_COMM_LEN 16
#define TAPIO_FILENAME_LEN 256
#define TAPIO_ARGS_LEN 256
#define TAPIO_CGROUP_NAME_LEN 64

/* Event types. The numbers are also the EventType values of the wire contract. */
enum tapio_event_type {
	TAPIO_EVENT_EXEC = 1,
	TAPIO_EVENT_EXIT = 2,
	TAPIO_EVENT_TCP_CONNECT = 3,
	TAPIO_EVENT_TCP_ACCEPT = 4,
	TAPIO_EVENT_TCP_CLOSE = 5,
	TAPIO_EVENT_OOM_KILL = 6,
	TAPIO_EVENT_SIGNAL = 7,
	TAPIO_EVENT_THROTTLED = 8,  /* made by the collector, never by a BPF program */
	TAPIO_EVENT_TYPE_COUNT = 9, /* one past the last type: sizes the drop counters */
};

/* Common header of every event. */
struct tapio_header {
	__u64 timestamp_ns; /* CLOCK_BOOTTIME; userspace adds the boot->wall offset */
	__u64 cgroup_id;    /* cgroup v2 id (kernfs inode number) of the task */
	__u32 type;         /* enum tapio_event_type */
	__u32 pid;          /* thread-group id, what userspace calls the pid */
	__u32 tid;
	__u32 ppid;         /* thread-group id of the real parent */
	__u32 uid;
	__u32 gid;
	char comm[TAPIO_COMM_LEN];
};

#define TAPIO_EXEC_ARGS_TRUNCATED 1u /* argv did not fit into args[] */
#define TAPIO_EXEC_ARGS_REDACTED 2u  /* set by the collector: secrets in args[] were replaced */

struct tapio_exec {
	struct tapio_header hdr;
	__u32 args_count; /* argc of the new program */
	__u32 args_size;  /* bytes of args[] in use: NUL-separated arguments */
	__u32 flags;      /* TAPIO_EXEC_* */
	__u32 _pad;
	char filename[TAPIO_FILENAME_LEN];
	char args[TAPIO_ARGS_LEN];
};

struct tapio_exit {
	struct tapio_header hdr;
	__s32 exit_code;   /* status >> 8 when the process exited by itself */
	__u32 signal;      /* terminating signal, 0 when it exited by itself */
	__u32 core_dumped; /* 1 when the signal dumped core */
	__u32 _pad;
	__u64 start_ns;    /* CLOCK_BOOTTIME of the process start */
	__u64 duration_ns; /* lifetime of the process */
};

enum tapio_tcp_direction {
	TAPIO_TCP_ACTIVE = 1,  /* we connected */
	TAPIO_TCP_PASSIVE = 2, /* we accepted */
};

/* One layout for connect, accept and close. */
struct tapio_tcp {
	struct tapio_header hdr;
	__u8 saddr[16];      /* IPv4 in the first 4 bytes, network order */
	__u8 daddr[16];
	__u16 sport;         /* host order */
	__u16 dport;         /* host order */
	__u16 family;        /* AF_INET or AF_INET6 */
	__u16 direction;     /* enum tapio_tcp_direction */
	__s32 error;         /* connect: errno of a failed connect (ECONNREFUSED, ...), 0 on success;
			      * close: errno it ended with (ECONNRESET, ETIMEDOUT, ...), else 0 */
	__u32 _pad;
	__u64 duration_ns;   /* connect: handshake time; close: connect/accept to close */
	__u64 bytes_sent;    /* close: payload bytes the peer acknowledged (no SYN, no FIN) */
	__u64 bytes_received; /* close: payload bytes received in order (no FIN) */
};

/* The header describes the victim; the task that ran into the limit is the trigger. */
struct tapio_oom {
	struct tapio_header hdr;
	__u32 trigger_pid;
	__u32 _pad;
	char trigger_comm[TAPIO_COMM_LEN];
	__u64 memcg_id;          /* kernfs id of the victim's memory cgroup */
	__u64 memcg_limit_pages; /* memory.max / memory.limit_in_bytes in pages */
	__u64 memcg_usage_pages;
	__u64 total_vm_pages;    /* victim's address space */
	__u64 rss_pages;         /* victim's resident pages: anon + file + shmem */
	char memcg_name[TAPIO_CGROUP_NAME_LEN];
};

/* A signal whose default action ends the target, sent while that default is in force.
 * The header describes the target; the sender is the task that generated the signal
 * (the target itself for faults such as SIGSEGV). */
struct tapio_signal {
	struct tapio_header hdr;
	__u32 signal;
	__s32 code;       /* si_code: SI_USER, SEGV_MAPERR, ... */
	__u32 sender_pid;
	__u32 _pad;
	char sender_comm[TAPIO_COMM_LEN];
};

/* What the collector's per-cgroup budget (--cgroup-budget) suppressed of one cgroup: one such
 * event per cgroup and interval in which it suppressed anything. The header's cgroup id is the
 * throttled cgroup's; pid, tid, ppid, uid, gid and comm are the last suppressed event's; the
 * timestamp is the end of the summary's interval. Made in userspace (tapio/_fast/throttle.pxd). */
struct tapio_throttled {
	struct tapio_header hdr;
	__u64 first_ns;       /* CLOCK_BOOTTIME of the first and the last suppressed event */
	__u64 last_ns;
	__u64 exec;           /* suppressed events, by type */
	__u64 tcp_connect;
	__u64 tcp_accept;
	__u64 tcp_close;
	__u64 interval_ns;    /* the budget: `budget` events per interval_ns, bursts up to `burst` */
	__u32 budget;
	__u32 burst;
};

/* Any event; its size is the size of one arena slot in userspace. */
union tapio_event {
	struct tapio_header hdr;
	struct tapio_exec exec;
	struct tapio_exit exit;
	struct tapio_tcp tcp;
	struct tapio_oom oom;
	struct tapio_signal signal;
	struct tapio_throttled throttled;
};

/*
 * Load-time configuration, a `const volatile` global of the BPF object (read-only after load,
 * so the verifier prunes what is switched off).
 */
struct tapio_config {
	__u32 self_tgid;      /* the collector: never traced, no feedback loop */
	__u32 enabled_types;  /* bit (1 << type) for each enabled enum tapio_event_type */
	__u32 filter_cgroups; /* 1: only tasks whose cgroup id is in the cgroup_allow map */
	__u32 routine_limit;  /* ring-buffer bytes routine events may fill (0: all); the rest is
			       * kept for priority events: OOM kills, fatal signals, failed exits */
	__u32 probe_reads_only; /* 1: read the kernel as on Linux < 5.9, with probe reads, even
				 * where helpers give BTF pointers (tests run that path) */
	__u32 _pad;
};

#endif /* TAPIO_EVENTS_H */
