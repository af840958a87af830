/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Processes: exec, fork (inheriting tracked pids), exit, fatal signals and
 * OOM kills. Included once, by custos.bpf.c, after scope.h.
 */

/* include/linux/sched/signal.h; unchanged since 5.x */
#define SIGNAL_GROUP_EXIT 0x00000004

/* Scratch space for exec events, which are sent with their real length. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct custos_exec);
} exec_scratch SEC(".maps");

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
	/* Out of scope, an exec is still sent when user space asked to see
	 * every exec (to match executable patterns); attribution decides. */
	if (!in_scope(cfg, cgroup_id, tgid) && (!cfg || !cfg->emit_all_execs))
		return 0;

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
