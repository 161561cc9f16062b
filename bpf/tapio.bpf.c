// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The definitions every program of the linked object shares; the programs live in *.bpf.c. */
#include "emit.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Userspace overwrites this in the object's .rodata before load (tapio/_fast/kernel.pyx). */
const volatile struct tapio_config tapio_config = {
	.self_tgid = 0,
	.enabled_types = ~0u,
	.filter_cgroups = 0,
};

/* Until when the reader reads again without being woken (see submit() in emit.bpf.h). */
__u64 tapio_reader_deadline_ns = 0;

/* Never read: it makes the object's BTF describe the event layout, so that tests/test_layout.py
 * can compare what clang laid out for BPF with what the host compiler laid out for Cython. */
const union tapio_event *tapio_event_layout __attribute__((unused));
