/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The few kernel types the custos BPF programs read, declared by hand for
 * CO-RE: only the fields used, each struct marked preserve_access_index so
 * that libbpf-style relocation (done by aya at load time against
 * /sys/kernel/btf/vmlinux) fixes every offset for the running kernel. Field
 * order and padding here do not matter; names and kinds do.
 *
 * Array strides are NOT relocated by CO-RE: code that indexes arrays of these
 * structs must use bpf_core_type_size() rather than C indexing.
 */
#ifndef CUSTOS_CORE_H
#define CUSTOS_CORE_H

#include <linux/types.h>
#include <linux/bpf.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef int pid_t;
typedef unsigned int uid_t;
typedef _Bool bool;

struct kernfs_node {
	u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

/* atomic_long_t: only the counter inside is read. */
struct custos_atomic_long {
	s64 counter;
};

struct cgroup_subsys_state {
	struct cgroup_subsys_state *parent;
};

/* Index of the memory controller in css_set.subsys; its value depends on the
 * kernel's configuration and is relocated (bpf_core_enum_value). */
enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

struct css_set {
	struct cgroup *dfl_cgrp;
	/* Indexed by enum cgroup_subsys_id (pointers: no stride to relocate). */
	struct cgroup_subsys_state *subsys[16];
};

/* In pages. */
struct page_counter {
	struct custos_atomic_long usage;
	unsigned long max;
};

struct mem_cgroup {
	struct cgroup_subsys_state css;
	struct page_counter memory;
};

/* mm_struct.rss_stat since 6.2: one counter per kind of page; `count` is
 * the approximate total the kernel itself reports. Indexed with
 * bpf_core_type_size(). */
struct percpu_counter {
	s64 count;
};

/* mm_struct.rss_stat before 6.2. */
struct mm_rss_stat {
	struct custos_atomic_long count[4];
};

struct mm_struct___rss_atomic {
	struct mm_rss_stat rss_stat;
};

struct ns_common {
	unsigned int inum;
};

struct pid_namespace {
	struct ns_common ns;
};

struct upid {
	int nr;
	struct pid_namespace *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];
};

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct percpu_counter rss_stat[4];
};

struct signal_struct {
	unsigned int flags;
	int group_exit_code;
};

struct sigaction {
	void *sa_handler;
};

struct k_sigaction {
	struct sigaction sa;
};

struct sighand_struct {
	struct k_sigaction action[64];
};

struct file {
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct sock;

struct socket {
	struct sock *sk;
};

struct task_struct {
	struct files_struct *files;
	int pid;
	int tgid;
	int exit_code;
	u64 start_time;
	char comm[16];
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct mm_struct *mm;
	struct signal_struct *signal;
	struct sighand_struct *sighand;
	struct pid *thread_pid;
	struct css_set *cgroups;
};

struct linux_binprm {
	const char *filename;
};

struct kernel_siginfo {
	int si_signo;
	int si_errno;
	int si_code;
};

struct in6_addr {
	union {
		u8 u6_addr8[16];
	} in6_u;
};

struct sock_common {
	u32 skc_daddr;
	u32 skc_rcv_saddr;
	u16 skc_dport;
	u16 skc_num;
	unsigned short skc_family;
	unsigned long skc_flags;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	u16 sk_protocol;
};

struct inet_sock {
	u16 inet_sport;
};

/* The syscall number of the call returning, as the kernel's own syscall
 * tracepoints read it (syscall_get_nr). Built for x86-64 (see build.rs). */
struct pt_regs {
	unsigned long orig_ax;
};

struct tcp_sock {
	u64 bytes_sent;
	u64 bytes_retrans;
	u64 bytes_received;
	u32 total_retrans;
};

#pragma clang attribute pop

#endif
