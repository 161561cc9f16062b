// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * TCP connect outcomes, accepts and closes.
 *
 * inet_sock_set_state fires in whatever context moves the socket, which for a SYN-ACK, a RST or a
 * FIN is a softirq on behalf of nobody in particular. So, as libbpf-tools' tcplife does, the owner
 * (pid, comm, cgroup, ...) is remembered where it is known for sure: in connect() (CLOSE ->
 * SYN_SENT) and in accept() (the syscall's exit), and every later event of the socket carries it.
 */
#include "emit.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_LAST_ACK 9
#define TCP_CLOSING 11

/* the states in which our FIN has been queued: it is the last sequence number of write_seq */
#define FIN_SENT_STATES ((1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) | (1 << TCP_LAST_ACK) | \
			 (1 << TCP_CLOSING))

struct sock_owner {
	struct tapio_header hdr; /* who connected or accepted; hdr.timestamp_ns is when */
	__u32 direction;
	__u32 _pad;
};

/* LRU: a socket whose close we never see (or that outlives the map's capacity) ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

/*
 * The socket's fields, for most TCP events, come through BTF pointers (inet_sock_set_state's
 * argument): plain loads, not a helper call each. The tcp_sock and inet_sock fields lie past
 * struct sock, where a pointer to it cannot load; bpf_skc_to_tcp_sock() (Linux >= 5.9) gives one
 * that can. Without it, they are probe reads.
 */
static __always_inline const struct tcp_sock *tcp_sock_btf(const struct sock *sk)
{
	if (!tapio_config.probe_reads_only &&
	    bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_skc_to_tcp_sock))
		return bpf_skc_to_tcp_sock((void *)sk);
	return NULL;
}

/* A field of `type` (struct tcp_sock or inet_sock, which start where the sock does) of the socket
 * `sk`, whose tcp_sock_btf() is `tp`. */
#define TCP_SOCK_FIELD(tp, sk, type, field) \
	((tp) ? ((const type *)(tp))->field : BPF_CORE_READ((const type *)(sk), field))

/* Addresses and ports from a BTF pointer to the socket, `tp` its tcp_sock_btf(). */
static __always_inline void read_addrs(struct tapio_tcp *e, const struct sock *sk,
				       const struct tcp_sock *tp)
{
	const struct sock_common *c = &sk->__sk_common;
	__u16 family = c->skc_family;
	int i;

	e->family = family;
	e->sport = c->skc_num;
	if (!e->sport) /* a closing socket has given its port back; a failed connect had one too */
		e->sport = __builtin_bswap16(TCP_SOCK_FIELD(tp, sk, struct inet_sock, inet_sport));
	e->dport = __builtin_bswap16(c->skc_dport);
	if (family == AF_INET) {
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		((__u32 *)e->saddr)[0] = c->skc_rcv_saddr;
		((__u32 *)e->daddr)[0] = c->skc_daddr;
	} else {
#pragma unroll
		for (i = 0; i < 4; i++) { /* a BTF pointer cannot load at a variable offset */
			((__u32 *)e->saddr)[i] = c->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			((__u32 *)e->daddr)[i] = c->skc_v6_daddr.in6_u.u6_addr32[i];
		}
	}
}

/* The same from a plain kernel address (the accept tracepoints find the socket in the fd table):
 * every field a probe read. */
static __always_inline void read_addrs_probe(struct tapio_tcp *e, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->family = family;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!e->sport) /* a closing socket has given its port back; a failed connect had one too */
		e->sport = __builtin_bswap16(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	e->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

/*
 * Payload bytes of a connection that is closing (called as it leaves `oldstate`), from the
 * RFC 4898 counters of struct tcp_sock:
 * - bytes_acked sums the advances of snd_una: every byte the peer acknowledged once, however
 *   often it was sent, but also the SYN (on the side that connected: the side that accepted
 *   starts counting after it) and our FIN once it is acknowledged, i.e. when it was queued
 *   (FIN_SENT_STATES) and snd_una has reached write_seq, which counts it.
 * - bytes_received sums the advances of rcv_nxt: every byte received in order, once, but also
 *   the peer's FIN. tcp_fin() sets SOCK_DONE, and only it does on a TCP socket.
 * (tcp_sock.bytes_sent would count retransmitted copies; bytes_acked never does.) Checked
 * against bpftrace on inet_sock_set_state and against what the applications wrote and read, for
 * both closing orders, a reset and lost packets, in tests/test_kernel_events.py. `sk` is a BTF
 * pointer, `tp` its tcp_sock_btf().
 */
static __always_inline void payload_bytes(const struct sock *sk, const struct tcp_sock *tp,
					  const struct sock_owner *owner, int oldstate,
					  __u64 *sent, __u64 *received)
{
	__u64 acked = TCP_SOCK_FIELD(tp, sk, struct tcp_sock, bytes_acked);
	__u64 in_order = TCP_SOCK_FIELD(tp, sk, struct tcp_sock, bytes_received);
	unsigned long flags = sk->__sk_common.skc_flags;
	__u64 not_payload = 0;

	if (owner->direction == TAPIO_TCP_ACTIVE)
		not_payload += 1; /* our SYN */
	if (((1 << oldstate) & FIN_SENT_STATES) &&
	    TCP_SOCK_FIELD(tp, sk, struct tcp_sock, snd_una) ==
	    TCP_SOCK_FIELD(tp, sk, struct tcp_sock, write_seq))
		not_payload += 1; /* our FIN */
	*sent = acked > not_payload ? acked - not_payload : 0;
	if (flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
		in_order = in_order ? in_order - 1 : 0; /* the peer's FIN */
	*received = in_order;
}

/* sk_is_btf: whether `sk` is a BTF pointer, a constant at every call */
static __always_inline void emit_tcp(const struct sock *sk, bool sk_is_btf, __u32 type,
				     struct sock_owner *owner, __s32 error, int oldstate)
{
	/* only a close reads tcp_sock fields (and the port it gave back); elsewhere, the rare
	 * failed connect without a port probe-reads it */
	const struct tcp_sock *tp = sk_is_btf && type == TAPIO_EVENT_TCP_CLOSE ? tcp_sock_btf(sk) : NULL;
	struct tapio_tcp *e;
	__u64 now;

	if (!type_enabled(type))
		return;
	e = reserve_event(sizeof(*e), type);
	if (!e)
		return;
	now = bpf_ktime_get_boot_ns();
	e->hdr = owner->hdr;
	e->hdr.timestamp_ns = now;
	e->hdr.type = type;
	if (sk_is_btf)
		read_addrs(e, sk, tp);
	else
		read_addrs_probe(e, sk);
	e->direction = owner->direction;
	e->error = error;
	e->_pad = 0;
	e->duration_ns = now - owner->hdr.timestamp_ns;
	if (type == TAPIO_EVENT_TCP_CLOSE) {
		payload_bytes(sk, tp, owner, oldstate, &e->bytes_sent, &e->bytes_received);
	} else {
		e->bytes_sent = 0;
		e->bytes_received = 0;
	}
	submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct sock_owner *owner;
	__u16 family;

	/* only a connect, its outcome and a close are of interest: the other moves of a
	 * connection (about half of its ten or so) return before reading anything */
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT && newstate != TCP_CLOSE)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		/* connect(): the one moment we run as the socket's owner */
		struct sock_owner o = { .direction = TAPIO_TCP_ACTIVE };

		if (current_filtered())
			return 0;
		fill_header_current(&o.hdr, TAPIO_EVENT_TCP_CONNECT);
		bpf_map_update_elem(&sock_owners, &key, &o, BPF_ANY);
		return 0;
	}

	owner = bpf_map_lookup_elem(&sock_owners, &key);
	if (!owner)
		return 0;
	if (oldstate == TCP_SYN_SENT) {
		if (newstate == TCP_ESTABLISHED) {
			emit_tcp(sk, true, TAPIO_EVENT_TCP_CONNECT, owner, 0, oldstate);
			owner->hdr.timestamp_ns = bpf_ktime_get_boot_ns(); /* the connection's lifetime starts */
		} else if (newstate == TCP_CLOSE) {
			/* tcp_reset()/tcp_write_err() set sk_err before the socket moves to CLOSE */
			__s32 err = sk->sk_err;

			emit_tcp(sk, true, TAPIO_EVENT_TCP_CONNECT, owner,
				 err ? err : 103 /* ECONNABORTED */, oldstate);
			bpf_map_delete_elem(&sock_owners, &key);
		}
		return 0;
	}
	if (newstate == TCP_CLOSE) {
		/* what the application sees: ECONNRESET when the peer reset it, ETIMEDOUT when
		 * retransmissions gave up, 0 after an orderly close or when it aborted itself */
		emit_tcp(sk, true, TAPIO_EVENT_TCP_CLOSE, owner, sk->sk_err, oldstate);
		bpf_map_delete_elem(&sock_owners, &key);
	}
	return 0;
}

/* accept() and accept4() return the new socket's fd: look it up in the caller's fd table. */
static __always_inline int on_accept_exit(struct syscall_exit_record *rec)
{
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds, *file;
	struct socket *sock;
	struct sock *sk;
	struct sock_owner o = { .direction = TAPIO_TCP_PASSIVE };
	__u64 key;
	long fd = rec->ret;

	if (fd < 0 || current_filtered())
		return 0;
	task = current_task_btf();
	if (task)
		fdt = task->files->fdt;
	else
		fdt = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), files, fdt);
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) < 0 || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	fill_header_current(&o.hdr, TAPIO_EVENT_TCP_ACCEPT);
	key = (__u64)sk;
	bpf_map_update_elem(&sock_owners, &key, &o, BPF_ANY);
	emit_tcp(sk, false, TAPIO_EVENT_TCP_ACCEPT, &o, 0, TCP_ESTABLISHED);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tapio_accept4_exit(struct syscall_exit_record *rec)
{
	return on_accept_exit(rec);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tapio_accept_exit(struct syscall_exit_record *rec)
{
	return on_accept_exit(rec);
}
