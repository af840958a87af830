/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Every struct that crosses between the BPF programs and user space. Mirrored
 * field for field by the #[repr(C)] structs in ebpf/src/wire.rs; padding is
 * explicit and sizes are asserted on both sides so a change on one side only
 * fails the build instead of silently misreading events.
 */
#ifndef CUSTOS_WIRE_H
#define CUSTOS_WIRE_H

#include <linux/types.h>

#define CUSTOS_COMM_LEN 16
#define CUSTOS_FILENAME_LEN 256
/* Bytes of the argv area copied per exec; a power of two so the verifier can
 * bound lengths with a mask. */
#define CUSTOS_ARGS_LEN 4096
#define CUSTOS_LATENCY_BUCKETS 32
/* Syscall numbers below this are counted in a managed cgroup's row of the
 * per-CPU `syscall_rows` array (row = slot assigned by user space, column =
 * syscall number); others, and cgroups without a slot, in the hash. */
#define CUSTOS_SYSCALL_NRS 512

enum custos_event_kind {
	CUSTOS_EV_EXEC = 1,
	CUSTOS_EV_EXIT = 2,
	CUSTOS_EV_SIGNAL = 3,
	CUSTOS_EV_OOM = 4,
	CUSTOS_EV_CONNECT = 5,
	CUSTOS_EV_ACCEPT = 6,
	CUSTOS_EV_CLOSE = 7,
	CUSTOS_EV_LISTEN = 8,
};

/* Scope modes (custos_config.mode). */
#define CUSTOS_MODE_EVERYTHING 0
#define CUSTOS_MODE_MANAGED 1

/* custos_exec.flags */
#define CUSTOS_EXEC_ARGS_TRUNCATED 1
#define CUSTOS_EXEC_FILENAME_TRUNCATED 2

/* custos_tcp.flags */
#define CUSTOS_TCP_INBOUND 1
#define CUSTOS_TCP_CLOSED_BY_LOCAL 2
#define CUSTOS_TCP_CLOSED_BY_PEER 4

/* Runtime configuration, entry 0 of the `config` array map. */
struct custos_config {
	__u32 mode;
	__u32 emit_all_execs;
	/* Non-zero once user space tracked a pid: until then the pid lookup
	 * (and the pid namespace helper before it) is skipped. */
	__u32 any_tracked;
	/* Zero when process events are not wanted: exec, fork and exit then
	 * only maintain the tracked pids. */
	__u32 process_events;
	/* Bumped by user space after each change of scope (managed cgroups,
	 * tracked pids, mode): the per-CPU caches and the per-thread records of
	 * scope decisions are valid for one generation. */
	__u32 scope_gen;
	__u32 _pad0;
};

struct custos_hdr {
	__u32 kind;
	__u32 pid;	/* tgid in the agent's pid namespace */
	__u32 tid;
	__u32 _pad0;
	__u64 ts_boot_ns; /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id;
	char comm[CUSTOS_COMM_LEN];
};

struct custos_exec {
	struct custos_hdr hdr;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 flags;
	__u32 filename_len; /* bytes in filename, without the NUL */
	__u32 args_len;	    /* bytes used in args: NUL-separated arguments */
	char filename[CUSTOS_FILENAME_LEN];
	/* Sent with bpf_ringbuf_output up to args_len only. */
	char args[CUSTOS_ARGS_LEN];
};

struct custos_exit {
	struct custos_hdr hdr;
	__u32 ppid;
	__s32 exit_status; /* wait(2) status: code << 8, or signal | 0x80 core */
	__u64 lifetime_ns;
};

struct custos_signal {
	struct custos_hdr hdr; /* the victim */
	__u32 sig;
	__u32 sender_pid;
	__s32 code;
	__u32 _pad0;
};

struct custos_oom {
	struct custos_hdr hdr; /* the victim */
	__u64 rss_bytes; /* resident memory of the victim; 0 when unknown */
	__u32 memcg; /* 1: its memory cgroup or an ancestor was at its limit */
	__u32 _pad0;
};

struct custos_tcp {
	struct custos_hdr hdr;
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 sport;  /* host order */
	__u16 dport;  /* host order */
	__u16 _pad0;
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__s32 err; /* connect: 0 or positive errno */
	__u32 retransmits;
	__u32 flags;
	__u32 _pad1;
	__u64 latency_ns; /* connect latency, or close: duration */
	__u64 bytes_sent;
	__u64 bytes_received;
};

/* Key and value of the per-CPU `syscall_stats` map. */
struct custos_sys_key {
	__u64 cgroup_id;
	__u32 nr;
	__u32 _pad0;
};

/* Calls and failed calls of one syscall in one slotted cgroup. */
struct custos_sys_row {
	__u64 count;
	__u64 errors;
};

struct custos_sys_val {
	__u64 count;
	__u64 errors;
	__u64 buckets[CUSTOS_LATENCY_BUCKETS];
};

_Static_assert(sizeof(struct custos_config) == 24, "custos_config size");
_Static_assert(sizeof(struct custos_hdr) == 48, "custos_hdr size");
_Static_assert(sizeof(struct custos_exec) == 48 + 24 + 256 + 4096, "custos_exec size");
_Static_assert(sizeof(struct custos_exit) == 64, "custos_exit size");
_Static_assert(sizeof(struct custos_signal) == 64, "custos_signal size");
_Static_assert(sizeof(struct custos_oom) == 64, "custos_oom size");
_Static_assert(sizeof(struct custos_tcp) == 48 + 8 + 32 + 16 + 24, "custos_tcp size");
_Static_assert(sizeof(struct custos_sys_key) == 16, "custos_sys_key size");
_Static_assert(sizeof(struct custos_sys_row) == 16, "custos_sys_row size");
_Static_assert(sizeof(struct custos_sys_val) == 8 * (2 + CUSTOS_LATENCY_BUCKETS), "custos_sys_val size");

#endif
