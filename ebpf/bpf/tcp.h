/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP: connect, close and listen from inet_sock_set_state, with the owner
 * of each socket remembered in process context; accept from the sys_exit
 * program (syscalls.h, which calls on_accept_exit). Included once, by
 * custos.bpf.c, after scope.h.
 */

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

/* enum sock_flags: set when the peer's FIN arrived */
#define SOCK_DONE 1

#define ECONNABORTED 103

/* The owner of a TCP socket, remembered in process context (connect, accept)
 * because later transitions run in softirq context with no useful current. */
struct sock_owner {
	__u64 start_ns;	 /* connect() or accept() time */
	__u64 est_ns;	 /* established; 0 while connecting */
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 flags;	 /* CUSTOS_TCP_* */
	/* The local port once known: the socket may have released it by the
	 * time it reaches TCP_CLOSE. */
	__u16 sport;
	__u16 _pad0;
	char comm[CUSTOS_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} socks SEC(".maps");

static __always_inline void fill_tcp_addrs(struct custos_tcp *e, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->family = family;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	/* skc_num is cleared when the port is released (a failed connect);
	 * inet_sport keeps it. */
	if (!e->sport)
		e->sport = __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	e->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->_pad0 = 0;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline struct custos_tcp *reserve_tcp(__u32 kind, const struct sock *sk,
						      struct sock_owner *o)
{
	struct custos_tcp *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	e->hdr.kind = kind;
	e->hdr.pid = o->pid;
	e->hdr.tid = o->tid;
	e->hdr._pad0 = 0;
	e->hdr.ts_boot_ns = bpf_ktime_get_boot_ns();
	e->hdr.cgroup_id = o->cgroup_id;
	__builtin_memcpy(e->hdr.comm, o->comm, sizeof(e->hdr.comm));
	fill_tcp_addrs(e, sk);
	if (!e->sport)
		e->sport = o->sport;
	e->err = 0;
	e->retransmits = 0;
	e->flags = o->flags;
	e->_pad1 = 0;
	e->latency_ns = 0;
	e->bytes_sent = 0;
	e->bytes_received = 0;
	return e;
}

/* The owner record for current, or 0 when current is out of scope. */
static __always_inline int current_owner(struct sock_owner *o, __u64 now)
{
	struct custos_config *cfg = get_config();
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 tid = 0;
	__u32 tgid = current_ns_tgid(&tid);
	if (!tgid || !in_scope(cfg, cgroup_id, tgid))
		return 0;
	o->start_ns = now;
	o->est_ns = 0;
	o->cgroup_id = cgroup_id;
	o->pid = tgid;
	o->tid = tid;
	o->flags = 0;
	o->sport = 0;
	o->_pad0 = 0;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	return 1;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		/* Inside connect(): current is the connecting process. */
		struct sock_owner o;
		if (!current_owner(&o, now))
			return 0;
		bpf_map_update_elem(&socks, &key, &o, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		/* Inside listen(). */
		struct sock_owner o;
		if (!current_owner(&o, now))
			return 0;
		struct custos_tcp *e = reserve_tcp(CUSTOS_EV_LISTEN, sk, &o);
		if (e)
			bpf_ringbuf_submit(e, wakeup_flags());
		return 0;
	}

	struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);
	if (!o)
		return 0;

	if (oldstate == TCP_SYN_SENT) {
		struct custos_tcp *e = reserve_tcp(CUSTOS_EV_CONNECT, sk, o);
		if (e) {
			e->latency_ns = now - o->start_ns;
			if (newstate != TCP_ESTABLISHED) {
				int err = BPF_CORE_READ(sk, sk_err);
				/* No error recorded: the connect was abandoned
				 * (closed by its owner) before it completed. */
				e->err = err > 0 ? err : ECONNABORTED;
			}
			bpf_ringbuf_submit(e, wakeup_flags());
		}
		if (newstate == TCP_ESTABLISHED) {
			o->est_ns = now;
			o->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
		} else
			bpf_map_delete_elem(&socks, &key);
		return 0;
	}

	if (oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1)
		o->flags |= CUSTOS_TCP_CLOSED_BY_LOCAL;
	else if (oldstate == TCP_ESTABLISHED && newstate == TCP_CLOSE_WAIT)
		o->flags |= CUSTOS_TCP_CLOSED_BY_PEER;

	if (newstate != TCP_CLOSE)
		return 0;

	if (o->est_ns) {
		struct custos_tcp *e = reserve_tcp(CUSTOS_EV_CLOSE, sk, o);
		if (e) {
			struct tcp_sock *tp = (struct tcp_sock *)sk;
			/* Payload only: bytes_sent counts retransmitted data again,
			 * bytes_received counts the peer's FIN as one byte. */
			__u64 sent = BPF_CORE_READ(tp, bytes_sent);
			__u64 retrans = BPF_CORE_READ(tp, bytes_retrans);
			__u64 received = BPF_CORE_READ(tp, bytes_received);
			if (received && (BPF_CORE_READ(sk, __sk_common.skc_flags) & (1UL << SOCK_DONE)))
				received--;
			e->bytes_sent = sent > retrans ? sent - retrans : 0;
			e->bytes_received = received;
			e->retransmits = BPF_CORE_READ(tp, total_retrans);
			e->latency_ns = now - o->est_ns;
			bpf_ringbuf_submit(e, wakeup_flags());
		}
	}
	bpf_map_delete_elem(&socks, &key);
	return 0;
}

/* accept() and accept4() returned a new connection: this runs in the
 * accepting process, so the connection is attributed to it. Seen from the
 * sys_exit program below because fexit on inet_csk_accept needs BPF
 * trampolines, which some kernels refuse (lockdown), and because the
 * syscalls:sys_exit_accept* tracepoints would add the kernel's own perf
 * handler to every syscall of every process; io_uring accepts are not
 * seen. */
static __always_inline int on_accept_exit(long fd)
{
	if (fd < 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct sock_owner o;
	if (!current_owner(&o, now))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	/* The handshake completed before accept() returned; the duration counts
	 * from here, the moment the service took the connection. */
	o.est_ns = now;
	o.flags = CUSTOS_TCP_INBOUND;
	o.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u64 key = (__u64)sk;
	bpf_map_update_elem(&socks, &key, &o, BPF_ANY);
	struct custos_tcp *e = reserve_tcp(CUSTOS_EV_ACCEPT, sk, &o);
	if (e)
		bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}
