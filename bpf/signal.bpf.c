// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Fatal signals, from the signal:signal_generate tracepoint: it runs in the sender (the target
 * itself for a fault) and names the target, so both ends are known. Reported: signals whose
 * default action ends the process, generated while the target still has that default
 * (a SIGTERM a server handles is not fatal), and actually queued.
 */
#include "emit.bpf.h"

#define SIGKILL 9
#define TRACE_SIGNAL_DELIVERED 0
#define TRACE_SIGNAL_LOSE_INFO 4
#define SIG_DFL 0

/* Signals whose default action terminates (with or without a core dump), see signal(7):
 * HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT XCPU XFSZ
 * VTALRM PROF IO PWR SYS. Not CHLD CONT STOP TSTP TTIN TTOU URG WINCH. */
#define FATAL_BY_DEFAULT                                                                           \
	((1ull << 1) | (1ull << 2) | (1ull << 3) | (1ull << 4) | (1ull << 5) | (1ull << 6) |       \
	 (1ull << 7) | (1ull << 8) | (1ull << 9) | (1ull << 10) | (1ull << 11) | (1ull << 12) |    \
	 (1ull << 13) | (1ull << 14) | (1ull << 15) | (1ull << 16) | (1ull << 24) | (1ull << 25) | \
	 (1ull << 26) | (1ull << 27) | (1ull << 29) | (1ull << 30) | (1ull << 31))

/* siginfo pointers 0 and 1 are the kernel's SEND_SIG_NOINFO and SEND_SIG_PRIV markers */
#define SIGINFO_IS_REAL(info) ((unsigned long)(info) > 1)

static __always_inline bool has_default_action(struct task_struct *task, int sig)
{
	struct sighand_struct *sighand = BPF_CORE_READ(task, sighand);
	struct k_sigaction *actions, *ka;
	__sighandler_t handler;

	if (!sighand)
		return false;
	/* index by the kernel's own size of k_sigaction, not this file's */
	actions = (void *)sighand + bpf_core_field_offset(struct sighand_struct, action);
	ka = (void *)actions + (__u64)(sig - 1) * bpf_core_type_size(struct k_sigaction);
	handler = BPF_CORE_READ(ka, sa.sa_handler);
	return handler == SIG_DFL;
}

SEC("tp_btf/signal_generate")
int BPF_PROG(tapio_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *target,
	     int type, int result)
{
	struct tapio_signal *e;

	if (result != TRACE_SIGNAL_DELIVERED && result != TRACE_SIGNAL_LOSE_INFO)
		return 0;
	if (sig <= 0 || sig >= 64 || !(FATAL_BY_DEFAULT & (1ull << sig)))
		return 0;
	if (sig != SIGKILL && !has_default_action(target, sig))
		return 0;
	if (task_filtered(BPF_CORE_READ(target, tgid), task_cgroup_id(target)))
		return 0;
	e = reserve_priority_event(sizeof(*e), TAPIO_EVENT_SIGNAL);
	if (!e)
		return 0;
	fill_header_task(&e->hdr, TAPIO_EVENT_SIGNAL, target);
	e->signal = sig;
	e->code = SIGINFO_IS_REAL(info) ? BPF_CORE_READ(info, si_code) : 0;
	e->sender_pid = bpf_get_current_pid_tgid() >> 32;
	e->_pad = 0;
	bpf_get_current_comm(&e->sender_comm, sizeof(e->sender_comm));
	submit(e);
	return 0;
}
