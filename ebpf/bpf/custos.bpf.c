// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel side of the custos Linux sensor: one CO-RE object, so that the
 * programs share their maps (scope, sockets, ring buffer).
 *
 * BTF tracepoints (tp_btf) only: no kprobes (absent on some kernels), no
 * fentry/fexit (refused under lockdown on some), no tracefs. Every program
 * starts with the scope check so that processes custos does not manage cost
 * a map lookup or two and never touch the ring buffer.
 *
 * This file holds what every topic uses (the ring buffer, its drop counter,
 * the configuration); the programs are in the topic files included at the
 * end, in an order where each needs only what comes before it:
 *
 *   scope.h     managed cgroups, tracked pids, pid namespaces, the scope
 *               decision and the per-thread task storage that keeps it
 *   process.h   exec, fork, exit, fatal signals, OOM kills
 *   tcp.h       connect, close, listen (inet_sock_set_state), accept
 *   syscalls.h  syscall statistics (sys_exit), timing windows (sys_enter);
 *               its sys_exit program also sees accept() return (tcp.h)
 */
#include "custos_core.h"
#include "custos_wire.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

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

#include "scope.h"
#include "process.h"
#include "tcp.h"
#include "syscalls.h"
