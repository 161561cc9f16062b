// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process exec and exit, from the scheduler's BTF tracepoints (as libbpf-tools' execsnoop and
 * exitsnoop, but reading everything at one point: the new image's argv is already in place).
 * Their arguments are BTF pointers: fields are plain loads, not a probe read each. */
#include "emit.bpf.h"

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tapio_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	struct tapio_exec *e;
	unsigned long arg_start, arg_end, len;

	if (current_filtered())
		return 0;
	e = reserve_event(sizeof(*e), TAPIO_EVENT_EXEC);
	if (!e)
		return 0;
	fill_header_current(&e->hdr, TAPIO_EVENT_EXEC);
	e->args_count = bprm->argc;
	e->flags = 0;
	e->_pad = 0;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->filename) < 0)
		e->filename[0] = '\0';

	/* argv of the new image: NUL-separated strings between mm->arg_start and mm->arg_end */
	arg_start = task->mm->arg_start;
	arg_end = task->mm->arg_end;
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > TAPIO_ARGS_LEN) {
		len = TAPIO_ARGS_LEN;
		e->flags |= TAPIO_EXEC_ARGS_TRUNCATED;
	}
	if (len && bpf_probe_read_user(e->args, len, (void *)arg_start) < 0)
		len = 0;
	e->args_size = len;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tapio_exit, struct task_struct *task)
{
	struct tapio_exit *e;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	int status;

	/* one event per process: when its thread-group leader exits */
	if ((__u32)pid_tgid != pid_tgid >> 32)
		return 0;
	if (current_filtered())
		return 0;
	status = task->exit_code;
	/* a failed exit (non-zero code or a signal) is a priority event */
	e = status ? reserve_priority_event(sizeof(*e), TAPIO_EVENT_EXIT)
		   : reserve_event(sizeof(*e), TAPIO_EVENT_EXIT);
	if (!e)
		return 0;
	fill_header_current(&e->hdr, TAPIO_EVENT_EXIT);
	e->signal = status & 0x7f;
	e->core_dumped = (status & 0x80) ? 1 : 0;
	e->exit_code = e->signal ? 0 : (status >> 8) & 0xff;
	e->_pad = 0;
	e->start_ns = task->start_boottime;
	e->duration_ns = e->hdr.timestamp_ns - e->start_ns;
	submit(e);
	return 0;
}
