/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Syscalls: per-cgroup counts, errors and latency histograms. Included once,
 * by custos.bpf.c, after scope.h and tcp.h (the sys_exit program also sees
 * accept() return).
 */

#define MAX_ERRNO 4095

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
