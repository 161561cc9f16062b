/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Shared by every Tapio BPF program: the ring buffer, the drop counters, the load-time config,
 * and the helpers that fill the common header and reserve space for an event.
 *
 * Each bpf/<family>.bpf.c is compiled on its own and `bpftool gen object` links them into one
 * object; the maps are __weak here so that the linker merges the identical definitions.
 */
#ifndef TAPIO_EMIT_BPF_H
#define TAPIO_EMIT_BPF_H

#include "kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tapio_events.h"

/* One ring buffer for all event types; userspace sets its size before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps") __weak;

/* Failed reserves per event type, per CPU: userspace sums them into events_dropped{stage=kernel}. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TAPIO_EVENT_TYPE_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps") __weak;

/* Cgroup v2 ids to trace when config.filter_cgroups is set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_allow SEC(".maps") __weak;

/* Defined once, in tapio.bpf.c. */
extern const volatile struct tapio_config tapio_config;
/* CLOCK_BOOTTIME ns until which the reader has promised to read the ring buffer again without
 * being woken; 0: no promise. The collector writes it through its mapping of .bss. */
extern __u64 tapio_reader_deadline_ns;

static __always_inline bool type_enabled(__u32 type)
{
	return tapio_config.enabled_types & (1u << type);
}

/* Whether a task is one we must not report: the collector itself, or outside the allow-list. */
static __always_inline bool task_filtered(__u32 tgid, __u64 cgroup_id)
{
	if (tgid == tapio_config.self_tgid)
		return true;
	if (tapio_config.filter_cgroups && !bpf_map_lookup_elem(&cgroup_allow, &cgroup_id))
		return true;
	return false;
}

static __always_inline void count_drop(__u32 type)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &type);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* Reserve an event of `size` bytes, or count the drop and return NULL. Routine events stop at
 * config.routine_limit bytes of unread data, so that a flood of them (exec storms, connection
 * churn) leaves room for the events that matter most. */
static __always_inline void *reserve(__u64 size, __u32 type, bool priority)
{
	void *e;

	if (!priority && tapio_config.routine_limit &&
	    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > tapio_config.routine_limit) {
		count_drop(type);
		return NULL;
	}
	e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		count_drop(type);
	return e;
}

static __always_inline void *reserve_event(__u64 size, __u32 type)
{
	return reserve(size, type, false);
}

static __always_inline void *reserve_priority_event(__u64 size, __u32 type)
{
	return reserve(size, type, true);
}

/*
 * Commit an event (every event struct starts with its header). The kernel's default wakes the
 * reader whenever an event finds it caught up, which a busy reader mostly is; a wakeup is an
 * irq_work, on a virtual machine a self-IPI and an exit to the hypervisor, which measured
 * 12-15 us here (more than everything else a program does). While events flow the collector
 * reads on a timer and publishes until when it will read anyway (tapio/collector/pump.py):
 * until then no event needs to wake it. Once it stops promising (it found the ring empty and
 * is about to block), the kernel's default applies again.
 */
static __always_inline void submit(void *e)
{
	__u64 now = ((struct tapio_header *)e)->timestamp_ns;

	bpf_ringbuf_submit(e, now < tapio_reader_deadline_ns ? BPF_RB_NO_WAKEUP : 0);
}

static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

/* Fill the header from any task (the OOM victim, a signal's target, ...). */
static __always_inline void fill_header_task(struct tapio_header *h, __u32 type,
					     struct task_struct *task)
{
	h->timestamp_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = task_cgroup_id(task);
	h->type = type;
	h->pid = BPF_CORE_READ(task, tgid);
	h->tid = BPF_CORE_READ(task, pid);
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = BPF_CORE_READ(task, real_cred, uid.val);
	h->gid = BPF_CORE_READ(task, real_cred, gid.val);
	BPF_CORE_READ_STR_INTO(&h->comm, task, comm);
}

/* The running task as a BTF pointer (Linux >= 5.11), whose fields are plain loads rather than
 * a probe read each; NULL on older kernels, where callers probe-read from bpf_get_current_task(). */
static __always_inline struct task_struct *current_task_btf(void)
{
	if (!tapio_config.probe_reads_only &&
	    bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		return bpf_get_current_task_btf();
	return NULL;
}

/* Fill the header from the running task, with the cheaper helpers where they exist. */
static __always_inline void fill_header_current(struct tapio_header *h, __u32 type)
{
	struct task_struct *task = current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	h->timestamp_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->type = type;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	if (task)
		h->ppid = task->real_parent->tgid;
	else
		h->ppid = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), real_parent, tgid);
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* Whether the running task is filtered; cheap enough to call before reserving. */
static __always_inline bool current_filtered(void)
{
	return task_filtered(bpf_get_current_pid_tgid() >> 32, bpf_get_current_cgroup_id());
}

#endif /* TAPIO_EMIT_BPF_H */
