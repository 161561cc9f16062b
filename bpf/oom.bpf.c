// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * OOM kills, from the oom:mark_victim tracepoint. It runs in the task that ran into the limit
 * (the trigger) and names the victim; since Linux 6.8 its BTF form passes the victim's
 * task_struct, which is what this program reads. (Without kprobes there is no oom_kill_process
 * hook; userspace switches this program off on kernels whose mark_victim passes only a pid.)
 */
#include "emit.bpf.h"

enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES };

static __always_inline __u64 rss_pages(struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__s64 file, anon, shmem;

	if (!mm)
		return 0;
	if (bpf_core_type_exists(struct mm_rss_stat)) {
		struct mm_struct___pre62 *old = (void *)mm;

		file = BPF_CORE_READ(old, rss_stat.count[MM_FILEPAGES].counter);
		anon = BPF_CORE_READ(old, rss_stat.count[MM_ANONPAGES].counter);
		shmem = BPF_CORE_READ(old, rss_stat.count[MM_SHMEMPAGES].counter);
	} else {
		file = BPF_CORE_READ(mm, rss_stat[MM_FILEPAGES].count);
		anon = BPF_CORE_READ(mm, rss_stat[MM_ANONPAGES].count);
		shmem = BPF_CORE_READ(mm, rss_stat[MM_SHMEMPAGES].count);
	}
	/* per-CPU counters are approximate and may read below zero */
	return (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
}

SEC("tp_btf/mark_victim")
int BPF_PROG(tapio_oom_victim, struct task_struct *victim)
{
	struct tapio_oom *e;
	struct cgroup_subsys_state *css;
	struct mem_cgroup *memcg;
	int memcg_id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

	if (task_filtered(BPF_CORE_READ(victim, tgid), task_cgroup_id(victim)))
		return 0;
	e = reserve_priority_event(sizeof(*e), TAPIO_EVENT_OOM_KILL);
	if (!e)
		return 0;
	fill_header_task(&e->hdr, TAPIO_EVENT_OOM_KILL, victim);
	e->trigger_pid = bpf_get_current_pid_tgid() >> 32;
	e->_pad = 0;
	bpf_get_current_comm(&e->trigger_comm, sizeof(e->trigger_comm));
	e->total_vm_pages = BPF_CORE_READ(victim, mm, total_vm);
	e->rss_pages = rss_pages(victim);

	/* the memory controller's css is the first member of struct mem_cgroup */
	css = BPF_CORE_READ(victim, cgroups, subsys[memcg_id & 15]);
	memcg = (struct mem_cgroup *)css;
	e->memcg_id = BPF_CORE_READ(css, cgroup, kn, id);
	e->memcg_limit_pages = BPF_CORE_READ(memcg, memory.max);
	e->memcg_usage_pages = BPF_CORE_READ(memcg, memory.usage.counter);
	if (bpf_probe_read_kernel_str(e->memcg_name, sizeof(e->memcg_name),
				      BPF_CORE_READ(css, cgroup, kn, name)) < 0)
		e->memcg_name[0] = '\0';
	submit(e);
	return 0;
}
