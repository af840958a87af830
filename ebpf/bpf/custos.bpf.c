// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel side of the custos Linux sensor.
 *
 * BTF tracepoints (tp_btf) only: no kprobes (absent on some kernels), no
 * fentry/fexit (refused under lockdown on some), no tracefs. Every program
 * starts with the scope check so that processes custos does not manage cost
 * a map lookup or two and never touch the ring buffer.
 */
#include "custos_core.h"
#include "custos_wire.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

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

/* include/linux/sched/signal.h; unchanged since 5.x */
#define SIGNAL_GROUP_EXIT 0x00000004

/* enum sock_flags: set when the peer's FIN arrived */
#define SOCK_DONE 1

#define ECONNABORTED 103
#define MAX_ERRNO 4095

/* Set by user space at load time: the agent's pid namespace, so that pids are
 * reported as the agent sees them. */
volatile const __u64 cfg_pidns_dev = 0;
volatile const __u64 cfg_pidns_ino = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* Ring buffer reservations that failed, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ringbuf_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct custos_config);
} config SEC(".maps");

/* Managed cgroups; the value is the cgroup's slot in syscall_rows + 1, or
 * 0 when it has none. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} managed_cgroups SEC(".maps");

/* Tgids, in the agent's pid namespace, of processes managed because they
 * (or an ancestor) matched an executable pattern. Children inherit here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} tracked_pids SEC(".maps");

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

/* Syscall statistics. Every call of an in-scope thread is counted when it
 * returns, from the one program on sys_exit: a second program on every
 * syscall cost the observed service as much as the counting itself. Only
 * calls that start while the sys_enter program is attached are timed: user
 * space attaches it for short windows at random times (1/N of the time for
 * `syscall_latency_sample: N`, or always for 1). exit and exit_group never
 * return and rt_sigreturn returns into the interrupted code, so they are not
 * counted. */

/* Above every architecture's syscall numbers (x32's start at 512). */
#define SYSCALL_NR_LIMIT 1024
/* x86-64 numbers (see build.rs). */
#define NR_ACCEPT 43
#define NR_ACCEPT4 288

/* Set at load time: what the sys_exit program does (it is attached when
 * either is wanted). Read-only, so the verifier prunes the other path. */
volatile const __u32 cfg_sys_count = 1;
volatile const __u32 cfg_sys_accept = 1;

/* Per thread, in task-local storage (no hashing and no locks on the hot
 * path, freed with the task): the scope decision for its syscalls, valid for
 * one scope generation and until the thread moves to another cgroup, so
 * that its calls skip the cgroup and scope lookups; and the entry time of
 * its call in flight when that call is timed. */
#define TASK_SYS_DECIDED 1
#define TASK_SYS_IN_SCOPE 2

struct task_sys {
	__u64 ts;        /* entry time of the timed call in flight, else 0 */
	__u64 cgroup_id; /* the cgroup counted into (the hash key) */
	__u32 nr;        /* the timed call's number */
	__u32 gen;       /* custos_config.scope_gen of the decision */
	__u32 slot1;     /* syscall_rows slot + 1; 0: count in the hash */
	__u32 flags;     /* TASK_SYS_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_sys);
} task_sys SEC(".maps");


/* Counts of cgroups without a row, and the latency histograms of all. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct custos_sys_key);
	__type(value, struct custos_sys_val);
} syscall_stats SEC(".maps");

/* Counts of managed cgroups with a slot: [slot * CUSTOS_SYSCALL_NRS + nr].
 * An inlined array access instead of a hash lookup on every call. Sized by
 * user space (slots are per-CPU memory). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64 * CUSTOS_SYSCALL_NRS);
	__type(key, __u32);
	__type(value, struct custos_sys_row);
} syscall_rows SEC(".maps");

/* Scratch space for exec events, which are sent with their real length. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct custos_exec);
} exec_scratch SEC(".maps");

/* Waking the reader for every record costs it more than the record itself at
 * low rates: records wait (the reader also polls every few tens of ms) until
 * this many bytes are pending, then wake it. 0 wakes it on every record. */
volatile const __u64 cfg_wakeup_bytes = 0;

static __always_inline __u64 wakeup_flags(void)
{
	if (!cfg_wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										   : BPF_RB_NO_WAKEUP;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&ringbuf_drops, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline struct custos_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config, &zero);
}

/* Pid number of `pid` in the agent's namespace, or 0. */
static __always_inline __u32 pid_nr_in_agent_ns(struct pid *pid)
{
	if (!pid)
		return 0;
	unsigned int level = BPF_CORE_READ(pid, level);
	unsigned long upid_size = bpf_core_type_size(struct upid);
	unsigned long base = (unsigned long)pid + bpf_core_field_offset(struct pid, numbers);
	/* Namespaces nest at most 32 deep; 8 covers every real deployment. */
	for (int i = 0; i < 8; i++) {
		if (i > level)
			break;
		struct upid *u = (struct upid *)(base + i * upid_size);
		struct pid_namespace *ns = BPF_CORE_READ(u, ns);
		if (ns && BPF_CORE_READ(ns, ns.inum) == cfg_pidns_ino)
			return BPF_CORE_READ(u, nr);
	}
	return 0;
}

static __always_inline __u32 task_ns_tid(struct task_struct *t)
{
	return pid_nr_in_agent_ns(BPF_CORE_READ(t, thread_pid));
}

static __always_inline __u32 task_ns_tgid(struct task_struct *t)
{
	return pid_nr_in_agent_ns(BPF_CORE_READ(t, group_leader, thread_pid));
}

/* Pid (tgid) of current in the agent's namespace; 0 when it is not visible
 * there. The helper answers only for tasks whose own namespace is the
 * agent's; tasks in a namespace below it (a container, a systemd sandbox)
 * are translated through their struct pid, which lists every level. */
static __always_inline __u32 current_ns_tgid(__u32 *tid)
{
	struct bpf_pidns_info ns = {};
	if (!bpf_get_ns_current_pid_tgid(cfg_pidns_dev, cfg_pidns_ino, &ns, sizeof(ns))) {
		if (tid)
			*tid = ns.pid;
		return ns.tgid;
	}
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (tid)
		*tid = task_ns_tid(t);
	return task_ns_tgid(t);
}

static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

/* Whether a process is in scope. `tgid` is in the agent's namespace. */
static __always_inline int in_scope(struct custos_config *cfg, __u64 cgroup_id, __u32 tgid)
{
	if (!cfg || cfg->mode == CUSTOS_MODE_EVERYTHING)
		return 1;
	if (bpf_map_lookup_elem(&managed_cgroups, &cgroup_id))
		return 1;
	if (cfg->any_tracked && tgid && bpf_map_lookup_elem(&tracked_pids, &tgid))
		return 1;
	return 0;
}

/* The last managed_cgroups answer on this CPU. A CPU tends to run one task
 * for many syscalls in a row, so on the per-syscall path this replaces most
 * hash lookups by an (inlined) array access and a compare. */
struct scope_cache {
	__u64 cgroup_id;
	__u32 gen;
	__u32 managed;
	__u32 slot1; /* syscall_rows slot + 1; 0: none */
	__u32 _pad0;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scope_cache);
} scope_cache SEC(".maps");

static __always_inline int cgroup_managed_cached(struct custos_config *cfg, __u64 cgroup_id,
						 __u32 *slot1)
{
	__u32 zero = 0;
	struct scope_cache *c = bpf_map_lookup_elem(&scope_cache, &zero);
	__u32 gen = cfg->scope_gen;
	if (c && c->cgroup_id == cgroup_id && c->gen == gen) {
		*slot1 = c->slot1;
		return c->managed;
	}
	__u32 *v = bpf_map_lookup_elem(&managed_cgroups, &cgroup_id);
	*slot1 = v ? *v : 0;
	if (c) {
		c->cgroup_id = cgroup_id;
		c->gen = gen;
		c->managed = v != 0;
		c->slot1 = *slot1;
	}
	return v != 0;
}

/* Cheap scope check for current: the cgroup first, the pid namespace helper
 * only when the cgroup did not decide. `slot1` receives the cgroup's
 * syscall_rows slot + 1 (0: none, count in the hash). */
static __always_inline int current_in_scope(struct custos_config *cfg, __u64 cgroup_id, __u32 *slot1)
{
	*slot1 = 0;
	if (!cfg || cfg->mode == CUSTOS_MODE_EVERYTHING)
		return 1;
	if (cgroup_managed_cached(cfg, cgroup_id, slot1))
		return 1;
	if (!cfg->any_tracked)
		return 0;
	__u32 tgid = current_ns_tgid(0);
	if (tgid && bpf_map_lookup_elem(&tracked_pids, &tgid))
		return 1;
	return 0;
}

/* The scope decision for current, from its task storage when made in this
 * generation, else made now and stored. NULL when current is out of scope
 * (or has no storage). */
static __always_inline struct task_sys *current_task_sys(struct custos_config *cfg)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_sys *t = bpf_task_storage_get(&task_sys, task, 0, 0);
	__u32 gen = cfg->scope_gen;
	if (t && t->gen == gen && (t->flags & TASK_SYS_DECIDED))
		return (t->flags & TASK_SYS_IN_SCOPE) ? t : 0;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 slot1;
	int in = current_in_scope(cfg, cgroup_id, &slot1);
	if (!t)
		t = bpf_task_storage_get(&task_sys, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		return 0;
	t->cgroup_id = cgroup_id;
	t->slot1 = slot1;
	t->gen = gen;
	t->flags = TASK_SYS_DECIDED | (in ? TASK_SYS_IN_SCOPE : 0);
	return in ? t : 0;
}

static __always_inline void fill_hdr_task(struct custos_hdr *h, __u32 kind, struct task_struct *t,
					  __u32 tgid, __u32 tid, __u64 cgroup_id)
{
	h->kind = kind;
	h->pid = tgid;
	h->tid = tid;
	h->_pad0 = 0;
	h->ts_boot_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = cgroup_id;
	BPF_CORE_READ_STR_INTO(&h->comm, t, comm);
}

/* ---------------------------------------------------------------- process */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct custos_config *cfg = get_config();
	if (!cfg || !cfg->process_events)
		return 0;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 tid = 0;
	__u32 tgid = current_ns_tgid(&tid);
	if (!tgid)
		return 0;
	__u32 flags = 0;
	if (!in_scope(cfg, cgroup_id, tgid)) {
		if (!cfg || !cfg->emit_all_execs)
			return 0;
		flags |= CUSTOS_EXEC_OUT_OF_SCOPE;
	}

	__u32 zero = 0;
	struct custos_exec *e = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!e)
		return 0;
	fill_hdr_task(&e->hdr, CUSTOS_EV_EXEC, p, tgid, tid, cgroup_id);
	e->ppid = task_ns_tgid(BPF_CORE_READ(p, real_parent));
	__u64 ugid = bpf_get_current_uid_gid();
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;

	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	if (n < 0)
		n = 0;
	else if (n > 0)
		n--; /* without the NUL */
	if (n >= CUSTOS_FILENAME_LEN - 1)
		flags |= CUSTOS_EXEC_FILENAME_TRUNCATED;
	e->filename_len = n;

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	unsigned long len = end > start ? end - start : 0;
	if (len > CUSTOS_ARGS_LEN) {
		len = CUSTOS_ARGS_LEN;
		flags |= CUSTOS_EXEC_ARGS_TRUNCATED;
	}
	len &= (CUSTOS_ARGS_LEN - 1) | CUSTOS_ARGS_LEN;
	if (len > CUSTOS_ARGS_LEN)
		len = CUSTOS_ARGS_LEN;
	if (len && bpf_probe_read_user(e->args, len, (void *)start))
		len = 0;
	e->args_len = len;
	e->flags = flags;

	__u64 size = offsetof(struct custos_exec, args) + len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, wakeup_flags()))
		count_drop();
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Nothing to inherit until user space tracks a pid. */
	struct custos_config *cfg = get_config();
	if (!cfg || !cfg->any_tracked)
		return 0;
	/* Only new processes, not new threads. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	__u32 ptgid = task_ns_tgid(parent);
	if (!ptgid || !bpf_map_lookup_elem(&tracked_pids, &ptgid))
		return 0;
	__u32 ctgid = task_ns_tgid(child);
	if (!ctgid)
		return 0;
	__u8 one = 1;
	bpf_map_update_elem(&tracked_pids, &ctgid, &one, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p, bool group_dead)
{
	/* One event per process: when its last thread goes. */
	if (!group_dead)
		return 0;
	struct custos_config *cfg = get_config();
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u32 tid = 0;
	__u32 tgid = current_ns_tgid(&tid);
	if (!tgid)
		return 0;
	int scoped = in_scope(cfg, cgroup_id, tgid);
	if (cfg && cfg->any_tracked)
		bpf_map_delete_elem(&tracked_pids, &tgid);
	if (!scoped || !cfg || !cfg->process_events)
		return 0;

	struct custos_exit *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	fill_hdr_task(&e->hdr, CUSTOS_EV_EXIT, p, tgid, tid, cgroup_id);
	e->ppid = task_ns_tgid(BPF_CORE_READ(p, real_parent));
	struct signal_struct *sig = BPF_CORE_READ(p, signal);
	/* exit_group and fatal signals record the status for the whole group;
	 * the last thread's own exit_code may be a plain thread exit. */
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		e->exit_status = BPF_CORE_READ(sig, group_exit_code);
	else
		e->exit_status = BPF_CORE_READ(p, exit_code);
	__u64 start = BPF_CORE_READ(p, group_leader, start_time);
	__u64 now = bpf_ktime_get_ns();
	e->lifetime_ns = now > start ? now - start : 0;
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

/* Signals whose default action terminates the process (with or without a
 * core): everything but SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU,
 * SIGURG, SIGWINCH. Real-time signals (32..64) terminate too. */
#define NONFATAL_MASK ((1ULL << 17) | (1ULL << 18) | (1ULL << 19) | (1ULL << 20) | \
		       (1ULL << 21) | (1ULL << 22) | (1ULL << 23) | (1ULL << 28))

#define SI_KERNEL 0x80

SEC("tp_btf/signal_generate")
int BPF_PROG(handle_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task,
	     int group, int result)
{
	/* TRACE_SIGNAL_DELIVERED: queued for the task (not ignored/already pending). */
	if (result != 0 || sig <= 0 || sig > 64)
		return 0;
	if ((1ULL << sig) & NONFATAL_MASK)
		return 0;
	/* Handled or ignored signals are not fatal; SIGKILL cannot be handled. */
	if (sig != 9) {
		struct sighand_struct *sh = BPF_CORE_READ(task, sighand);
		unsigned long addr = (unsigned long)sh +
				     bpf_core_field_offset(struct sighand_struct, action) +
				     (unsigned long)(sig - 1) * bpf_core_type_size(struct k_sigaction);
		struct k_sigaction *ka = (struct k_sigaction *)addr;
		void *handler = BPF_CORE_READ(ka, sa.sa_handler);
		if (handler != 0) /* SIG_DFL */
			return 0;
	}

	struct custos_config *cfg = get_config();
	__u64 cgroup_id = task_cgroup_id(task);
	__u32 tgid = task_ns_tgid(task);
	if (!tgid || !in_scope(cfg, cgroup_id, tgid))
		return 0;

	struct custos_signal *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	fill_hdr_task(&e->hdr, CUSTOS_EV_SIGNAL, task, tgid, task_ns_tid(task), cgroup_id);
	e->sig = sig;
	e->_pad0 = 0;
	/* SEND_SIG_NOINFO (0) is a user send, SEND_SIG_PRIV (1) the kernel's. */
	int code;
	if ((unsigned long)info == 0)
		code = 0;
	else if ((unsigned long)info == 1)
		code = SI_KERNEL;
	else
		code = BPF_CORE_READ(info, si_code);
	e->code = code;
	/* si_code <= 0 means sent by a process (SI_USER, SI_QUEUE, SI_TKILL...),
	 * which is current here. */
	e->sender_pid = code <= 0 ? current_ns_tgid(0) : 0;
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

/* Page size of the running kernel, set at load time. */
volatile const __u64 cfg_page_size = 4096;

/* The kernel's own measure of resident memory (get_mm_rss): file, anonymous
 * and shared-memory pages, read from the counters' approximate totals. */
static __always_inline __u64 task_rss_bytes(struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	if (!mm)
		return 0;
	/* enum mm_counter_type, unchanged since 4.x */
	const int kinds[3] = { 0 /* MM_FILEPAGES */, 1 /* MM_ANONPAGES */, 3 /* MM_SHMEMPAGES */ };
	__s64 pages = 0;
	if (bpf_core_field_exists(struct mm_struct, rss_stat)) {
		unsigned long base = (unsigned long)mm + bpf_core_field_offset(struct mm_struct, rss_stat);
		unsigned long stride = bpf_core_type_size(struct percpu_counter);
		for (int i = 0; i < 3; i++) {
			struct percpu_counter *c = (struct percpu_counter *)(base + kinds[i] * stride);
			pages += BPF_CORE_READ(c, count);
		}
	} else if (bpf_core_field_exists(struct mm_struct___rss_atomic, rss_stat)) {
		struct mm_struct___rss_atomic *old = (void *)mm;
		for (int i = 0; i < 3; i++)
			pages += BPF_CORE_READ(old, rss_stat.count[kinds[i]].counter);
	} else {
		return 0;
	}
	return pages > 0 ? (__u64)pages * cfg_page_size : 0;
}

/* Whether the victim's memory cgroup, or one above it, was at its limit: the
 * kill was then that cgroup's (a service's memory.max), not the host running
 * out. An OOM is declared when a charge would pass the limit, so usage is
 * then within an allocation (at most a huge page) and the reclaim slack of
 * it. The v1 memory+swap limit is not looked at. */
static __always_inline int task_memcg_at_limit(struct task_struct *task)
{
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= 16)
		return 0;
	struct css_set *cs = BPF_CORE_READ(task, cgroups);
	if (!cs)
		return 0;
	struct cgroup_subsys_state *css = 0;
	unsigned long slot = (unsigned long)cs + bpf_core_field_offset(struct css_set, subsys) + id * sizeof(void *);
	if (bpf_probe_read_kernel(&css, sizeof(css), (void *)slot))
		return 0;
	/* Cgroups nest deeper than this only in contrived set-ups. */
	for (int depth = 0; depth < 16 && css; depth++) {
		struct mem_cgroup *m = (struct mem_cgroup *)((unsigned long)css - bpf_core_field_offset(struct mem_cgroup, css));
		__u64 max = BPF_CORE_READ(m, memory.max);
		__s64 usage = BPF_CORE_READ(m, memory.usage.counter);
		/* PAGE_COUNTER_MAX (no limit) is LONG_MAX / PAGE_SIZE. */
		if (max < (1ULL << 40) && usage > 0 && (__u64)usage + 512 + max / 64 >= max)
			return 1;
		css = BPF_CORE_READ(css, parent);
	}
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(handle_mark_victim, struct task_struct *task, uid_t uid)
{
	struct custos_config *cfg = get_config();
	__u64 cgroup_id = task_cgroup_id(task);
	__u32 tgid = task_ns_tgid(task);
	if (!tgid || !in_scope(cfg, cgroup_id, tgid))
		return 0;
	struct custos_oom *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return 0;
	}
	fill_hdr_task(&e->hdr, CUSTOS_EV_OOM, task, tgid, task_ns_tid(task), cgroup_id);
	/* The victim's memory is still charged and mapped here: the kill comes
	 * after this tracepoint. */
	e->rss_bytes = task_rss_bytes(task);
	e->memcg = task_memcg_at_limit(task);
	e->_pad0 = 0;
	bpf_ringbuf_submit(e, wakeup_flags());
	return 0;
}

/* -------------------------------------------------------------------- tcp */

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

/* --------------------------------------------------------------- syscalls */

static __always_inline struct custos_sys_val *sys_stats_entry(__u64 cgroup_id, __u32 nr)
{
	struct custos_sys_key key = { .cgroup_id = cgroup_id, .nr = nr };
	struct custos_sys_val *v = bpf_map_lookup_elem(&syscall_stats, &key);
	if (v)
		return v;
	struct custos_sys_val zero = {};
	bpf_map_update_elem(&syscall_stats, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&syscall_stats, &key);
}

/* A thread moved to another cgroup: decide its syscalls' scope again. */
SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(handle_cgroup_attach, struct cgroup *dst, const char *path, struct task_struct *task,
	     bool threadgroup)
{
	struct task_sys *t = bpf_task_storage_get(&task_sys, task, 0, 0);
	if (t)
		t->flags = 0;
	return 0;
}

/* Attached only during timing windows (see above). */
SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	struct custos_config *cfg = get_config();
	if (!cfg || id < 0 || id >= SYSCALL_NR_LIMIT)
		return 0;
	struct task_sys *t = current_task_sys(cfg);
	if (!t)
		return 0;
	t->nr = id;
	t->ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline __u32 log2_bucket(__u64 v)
{
	__u32 r = 0;
	/* floor(log2(v)) by halving, branch-light and verifier-friendly. */
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r < CUSTOS_LATENCY_BUCKETS ? r : CUSTOS_LATENCY_BUCKETS - 1;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle_sys_exit, struct pt_regs *regs, long ret)
{
	/* -1 when the return is not a syscall's (rt_sigreturn restores it). */
	long id = regs->orig_ax;
	if (cfg_sys_accept && (id == NR_ACCEPT || id == NR_ACCEPT4))
		on_accept_exit(ret);
	struct custos_config *cfg = get_config();
	if (!cfg_sys_count || !cfg || id < 0 || id >= SYSCALL_NR_LIMIT)
		return 0;
	struct task_sys *t = current_task_sys(cfg);
	if (!t)
		return 0;
	int failed = ret < 0 && ret >= -MAX_ERRNO;
	/* Per-CPU values: plain increments are safe (no preemption in BPF). */
	struct custos_sys_val *v = 0;
	__u32 slot1 = t->slot1;
	if (slot1 && id < CUSTOS_SYSCALL_NRS) {
		__u32 idx = (slot1 - 1) * CUSTOS_SYSCALL_NRS + (__u32)id;
		struct custos_sys_row *r = bpf_map_lookup_elem(&syscall_rows, &idx);
		if (!r)
			return 0;
		r->count++;
		if (failed)
			r->errors++;
	} else {
		v = sys_stats_entry(t->cgroup_id, id);
		if (!v)
			return 0;
		v->count++;
		if (failed)
			v->errors++;
	}
	__u64 ts = t->ts;
	if (!ts)
		return 0;
	t->ts = 0;
	/* A call entered in scope whose exit was not (the thread changed
	 * cgroups meanwhile) leaves its entry behind; the number tells most of
	 * them apart from this call. */
	if (t->nr != id)
		return 0;
	if (!v)
		v = sys_stats_entry(t->cgroup_id, id);
	if (!v)
		return 0;
	__u32 b = log2_bucket(bpf_ktime_get_ns() - ts);
	if (b < CUSTOS_LATENCY_BUCKETS)
		v->buckets[b]++;
	return 0;
}
