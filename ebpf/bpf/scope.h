/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Scope: which processes custos reports on (managed cgroups, pids tracked
 * with their descendants), pids as the agent's namespace sees them, and the
 * per-thread scope decision the syscall programs keep in task storage.
 * Included once, by custos.bpf.c, after the shared maps and helpers.
 */

/* Set by user space at load time: the agent's pid namespace, so that pids are
 * reported as the agent sees them. */
volatile const __u64 cfg_pidns_dev = 0;
volatile const __u64 cfg_pidns_ino = 0;

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
