#!/usr/bin/env python3
"""Sensor benchmark: completeness, cost per event against peers, overhead on
the observed, and the agent's footprint, all measured in one run so that the
ratios compare like with like.

Run as root from the repository: python3 bench/sensor.py [--quick] [--parts overhead,...]
It installs auditd, bpftrace, nginx-light, wrk, bpftool and linux-perf with apt when missing.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
CUSTOS = os.path.join(TARGET, "release", "custos")
WORKLOAD = os.path.join(TARGET, "release", "custos-workload")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    sys.exit("no cgroup2 mount")


def cpu_seconds(pid):
    """CPU time of a process: the sum of its threads' schedstat run time
    (nanoseconds; utime/stime in /proc/PID/stat count 10 ms ticks, too coarse
    for an observer using 0.1 s in a run). Observers keep their threads for
    the whole run, so no exited thread's time goes missing."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cgroup_cpu_usec(cg):
    """CPU time used by the processes of a cgroup (v2 cpu.stat, present
    without the cpu controller); BPF programs run in their context count."""
    with open(os.path.join(cg, "cpu.stat")) as f:
        for line in f:
            if line.startswith("usage_usec"):
                return int(line.split()[1])
    return 0


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def quantile(xs, p):
    xs = sorted(xs)
    return xs[int(p * (len(xs) - 1))]


def pinned(cpu, argv):
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def cpu_plan():
    """(observed CPU, load CPU): the observed program gets a CPU of its own;
    the load generator and the agent share the other one, so that the ratio
    is the cost in the observed program's own context (the BPF programs and
    the kernel paths they switch on), not the scheduler sharing its CPU with
    the agent, whose own CPU is part 2's and part 4's subject. None, None on
    a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[-1], cpus[0]) if len(cpus) > 1 else (None, None)


class NoAudit:
    """Keeps kernel auditing off the processes the overhead part starts.

    Once auditing has been enabled on a host (by auditd, here or earlier),
    every new process gets audit hooks on each syscall until reboot, which
    would weigh on both sides of every ratio. A `never,task` rule gives new
    processes no audit context; it is removed afterwards."""

    def __enter__(self):
        self.added = bool(shutil.which("auditctl")) and subprocess.run(
            ["auditctl", "-a", "task,never"], capture_output=True).returncode == 0
        return self

    def __exit__(self, *exc):
        if self.added:
            subprocess.run(["auditctl", "-d", "task,never"], capture_output=True)


def alternate(rounds, measure, make_observer, settle=0.0):
    """[(detached, attached)] per round, each from measure(); the order
    alternates (ABBA) so that a drift weighs on both sides alike. A detached
    phase first waits `settle` seconds; make_observer None measures detached
    on both sides (the noise floor)."""
    out = []
    for i in range(rounds):
        r = {}
        for side in (("d", "a") if i % 2 == 0 else ("a", "d")):
            if side == "a" and make_observer:
                o = make_observer()
                o.start()
                try:
                    r["a"] = measure()
                finally:
                    o.stop()
            else:
                time.sleep(settle)
                r[side] = measure()
        out.append((r["d"], r["a"]))
    return out


class Nginx:
    """nginx with one worker on `cpu`, serving a 2-byte body on :18080 and its
    request counter (stub_status) on :18081."""

    def __init__(self, tmp, cgroup, cpu):
        self.cgroup = cgroup
        self.conf = os.path.join(tmp, "nginx.conf")
        affinity = "worker_cpu_affinity %s;" % ("1" + "0" * cpu) if cpu is not None else ""
        with open(self.conf, "w") as f:
            f.write("worker_processes 1; %s daemon off; pid %s/nginx.pid; error_log stderr;\n"
                    "events { worker_connections 1024; }\n"
                    "http { access_log off;\n"
                    "  server { listen 127.0.0.1:18080; location / { return 200 'ok'; } }\n"
                    "  server { listen 127.0.0.1:18081; location / { stub_status; } } }\n" % (affinity, tmp))

    def __enter__(self):
        self.proc = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {self.cgroup}/cgroup.procs && exec nginx -c {self.conf}"])
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()

    @staticmethod
    def requests():
        with urllib.request.urlopen("http://127.0.0.1:18081/") as r:
            # "Active connections: N / server accepts handled requests / A H R / ..."
            return int(r.read().decode().splitlines()[2].split()[2])


def sliced_rounds(rounds, slices, slice_s, read, make_observer):
    """Detached and attached phases (see alternate) while a load runs
    throughout; each phase takes `slices` readings `slice_s` seconds apart.
    read() gives (cpu_usec, units). Returns [(detached, attached)] per round, each phase
    as (units per second, CPU ns per unit) of its best quarter of slices: a
    shared machine has episodes of tens of seconds in which everything runs
    20-30% slower (seen with nothing attached), and the best slices of a
    phase are the ones they spared. make_observer None compares detached
    with detached (the noise floor)."""

    def phase():
        t0, (u0, n0) = time.monotonic(), read()
        per_s, ns = [], []
        for _ in range(slices):
            time.sleep(slice_s)
            t1, (u1, n1) = time.monotonic(), read()
            per_s.append((n1 - n0) / (t1 - t0))
            ns.append((u1 - u0) * 1000.0 / max(n1 - n0, 1))
            t0, u0, n0 = t1, u1, n1
        return quantile(per_s, 0.75), quantile(ns, 0.25)

    return alternate(rounds, phase, make_observer, settle=1)


# Kernel paths that custos switches on or runs in the observed program's
# context: its BPF programs and their dispatch, the syscall slow path that a
# syscall tracepoint enables, and the helpers its programs call.
SENSOR_SYMBOLS = re.compile(
    r"bpf_prog_\w+_handle_|bpf_trace_run|__bpf_trace_|rcu_read_unlock_trace_special|syscall_exit_work|"
    r"syscall_trace_enter|trace_sys_|bpf_task_storage_get|bpf_ktime_get|bpf_get_current|bpf_ringbuf|"
    r"bpf_map_lookup|bpf_map_update|htab_|bpf_lru_|percpu_array_map|bpf_get_ns_current")


def perf_share(cpu, seconds):
    """Share of the CPU samples on `cpu` in SENSOR_SYMBOLS, and the symbols."""
    data = tempfile.mktemp(prefix="custos-perf-")
    try:
        sh("perf", "record", "-q", "-C", str(cpu), "-o", data, "--", "sleep", str(seconds),
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "sym"], check=True,
                             capture_output=True, text=True).stdout
    finally:
        if os.path.exists(data):
            os.unlink(data)
    hits = []
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[k\]\s+(\S+)", line)
        if m and SENSOR_SYMBOLS.search(m.group(2)):
            hits.append((float(m.group(1)), m.group(2)))
    return sum(h for h, _ in hits), hits


def set_bpf_stats(on):
    with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
        f.write("1" if on else "0")


def bpf_prog_stats():
    """{(id, name): (run_cnt, run_time_ns)} of the loaded custos programs."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], check=True, capture_output=True, text=True).stdout
    return {(p["id"], p.get("name", "")): (p.get("run_cnt", 0), p.get("run_time_ns", 0))
            for p in json.loads(out) if p.get("name", "").startswith("handle_")}


def diff_prog_stats(before, after):
    d = {}
    for key, (cnt, ns) in after.items():
        c0, n0 = before.get(key, (0, 0))
        name = key[1]
        pc, pn = d.get(name, (0, 0))
        d[name] = (pc + cnt - c0, pn + ns - n0)
    return d


def workload(cgroup, *args, cpu=None):
    out = subprocess.run(pinned(cpu, [WORKLOAD, "--cgroup", cgroup, *args]), check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


class Custos:
    """custos watch --json on the benchmark cgroup, writing events to a file."""

    name = "custos"

    def __init__(self, cgroup_rel, tmp, syscalls=True, interval="1s", cpu=None):
        self.cpu = cpu
        self.cfg = os.path.join(tmp, "custos.yaml")
        sensors = "syscalls: %s" % ("true" if syscalls else "false")
        if interval:
            sensors += ", syscall_interval: " + interval
        with open(self.cfg, "w") as f:
            f.write(
                "services:\n  - name: bench\n    cgroup: %s\n"
                "sensors: { %s }\n"
                "agent: { state_dir: %s }\n" % (cgroup_rel, sensors, tmp)
            )
        os.chmod(self.cfg, 0o600)
        self.out_path = os.path.join(tmp, "custos-events.jsonl")
        self.err_path = os.path.join(tmp, "custos-stderr.txt")

    def start(self):
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(pinned(self.cpu, [CUSTOS, "watch", "--json", "--config", self.cfg]),
                                     stdout=self.out, stderr=self.err)
        time.sleep(3)  # programs loaded and attached
        if self.proc.poll() is not None:
            sys.exit("custos exited early:\n" + open(self.err_path).read())
        return self.proc.pid

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        self.out.close()
        self.err.close()

    def events(self):
        counts = {}
        with open(self.out_path) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                counts[e["kind"]] = counts.get(e["kind"], 0) + 1
                if e["kind"] == "process_start" and e.get("exe", "").endswith("/true"):
                    counts["exec_true"] = counts.get("exec_true", 0) + 1
        return counts

    def loss_line(self):
        return [l for l in open(self.err_path).read().splitlines() if "lost:" in l][-1:]


class Auditd:
    name = "auditd"

    def __init__(self, tmp):
        self.log = os.path.join(tmp, "audit.log")
        self.conf = os.path.join(tmp, "auditd.conf")
        # Debian's own configuration, logging to our file and never
        # suspending or rotating during a run.
        overrides = {"log_file": self.log, "max_log_file_action": "IGNORE", "space_left_action": "IGNORE",
                     "admin_space_left_action": "IGNORE", "disk_full_action": "IGNORE",
                     "disk_error_action": "IGNORE", "flush": "INCREMENTAL_ASYNC"}
        lines = []
        with open("/etc/audit/auditd.conf") as f:
            for line in f:
                key = line.split("=", 1)[0].strip()
                lines.append(f"{key} = {overrides.pop(key)}\n" if key in overrides else line)
        lines += [f"{k} = {v}\n" for k, v in overrides.items()]
        with open(self.conf, "w") as f:
            f.writelines(lines)
        os.chmod(self.conf, 0o640)

    def start(self):
        # auditd enables kernel auditing and leaves it on when it stops:
        # every process started after that pays the audit hooks on every
        # syscall, which would weigh on the later overhead measurements'
        # baseline. Put back what was there.
        status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        self.was_enabled = next((l.split()[1] for l in status.splitlines() if l.startswith("enabled ")), "0")
        subprocess.run(["auditctl", "-D"], capture_output=True)
        # -n: stay in the foreground (no fork), -c: our config directory.
        self.proc = subprocess.Popen(["auditd", "-n", "-c", os.path.dirname(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        sh("auditctl", "-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "custos_exec", capture_output=True)
        sh("auditctl", "-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-k", "custos_connect", capture_output=True)
        return self.proc.pid

    def stop(self):
        subprocess.run(["auditctl", "-D"], capture_output=True)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        subprocess.run(["auditctl", "-e", self.was_enabled], capture_output=True)

    def events(self):
        n = 0
        if os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                n = sum(1 for l in f if l.startswith("type=SYSCALL") and "custos_" in l)
        return {"records": n}


class Bpftrace:
    name = "bpftrace"
    SCRIPT = """
tracepoint:sched:sched_process_exec { printf("exec %d %s\\n", pid, str(args->filename)); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->newstate == 1/ { printf("est %d %d\\n", pid, args->dport); }
"""

    def __init__(self, tmp):
        self.out_path = os.path.join(tmp, "bpftrace.txt")
        self.script = os.path.join(tmp, "bench.bt")
        with open(self.script, "w") as f:
            f.write(self.SCRIPT)

    def start(self):
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(["bpftrace", self.script], stdout=self.out, stderr=subprocess.STDOUT)
        time.sleep(5)  # bpftrace compiles its script first
        return self.proc.pid

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self.out.close()

    def events(self):
        with open(self.out_path, errors="replace") as f:
            return {"lines": sum(1 for l in f if l.startswith(("exec ", "est ")))}


def observe(observer, cgroup, work_args):
    pid = observer.start()
    c0 = cpu_seconds(pid)
    result = workload(cgroup, *work_args)
    time.sleep(2)  # let the observer drain
    c1 = cpu_seconds(pid)
    rss = peak_rss_kib(pid)
    observer.stop()
    return result, c1 - c0, rss, observer.events()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    ap.add_argument("--parts", default="completeness,overhead,peers,footprint",
                    help="comma-separated subset of: completeness, overhead, peers, footprint")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if os.geteuid() != 0:
        sys.exit("run as root")
    missing = [p for p, b in (("auditd", "auditd"), ("bpftrace", "bpftrace"), ("nginx-light", "nginx"), ("wrk", "wrk"), ("bpftool", "bpftool"), ("linux-perf", "perf")) if not shutil.which(b)]
    if missing:
        sh("apt-get", "install", "-y", "-qq", *missing)
    sh("cargo", "build", "--release", "-q", "-p", "custos", "-p", "custos-tests", cwd=ROOT)

    root = cgroup2_root()
    cg_rel = "/custos-bench"
    cg = root + cg_rel
    os.makedirs(cg, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="custos-bench-")
    dur = 5 if args.quick else 15
    report, rows, overhead, bpf_costs, perf_rows = [], [], [], [], []
    rss_peak, idle, wrk_busy = 0, None, None
    # Even, so that ABBA puts each side first equally often.
    rounds = 2 if args.quick else 6
    if "completeness" in parts:
        # 1. Completeness under storms.
        c = Custos(cg_rel, tmp)
        res, cpu, rss_storm, ev = observe(c, cg, ["exec", "--count", "5000"])
        report.append(("exec storm", f"{res['ok']} execs in {res['seconds']:.1f}s; custos saw {ev.get('exec_true', 0)} "
                       f"process_start ({100.0 * ev.get('exec_true', 0) / max(res['ok'], 1):.2f}%), {c.loss_line()}"))
        c = Custos(cg_rel, tmp)
        res, cpu, rss2, ev = observe(c, cg, ["connect", "--count", "20000"])
        report.append(("connect storm", f"{res['ok']} connects in {res['seconds']:.1f}s; custos saw {ev.get('tcp_connect', 0)} tcp_connect, "
                       f"{ev.get('tcp_accept', 0)} tcp_accept, {ev.get('tcp_close', 0)} tcp_close, {c.loss_line()}"))
        rss_peak = max(rss_storm, rss2)

    # The overhead part runs before the peers': auditd switches kernel
    # auditing on, and every process started after that (until reboot)
    # carries the audit hooks on each syscall, which would weigh on the
    # baselines.
    if "overhead" in parts:
        # 3. Overhead on the observed: a syscall loop and nginx under wrk,
        # detached and attached in alternation. The observed program runs on
        # a CPU of its own (see cpu_plan) and custos with its defaults, but
        # for the one service. Throughput is the headline; the CPU the
        # observed cgroup itself used per unit of work (cpu.stat, which
        # includes the BPF programs run in its context) is steadier.
        obs_cpu, load_cpu = cpu_plan()

        def observer(**kw):
            return lambda: Custos(cg_rel, tmp, interval=None, cpu=load_cpu, **kw)

        n = "2000000" if args.quick else "10000000"

        def loop():
            u0 = cgroup_cpu_usec(cg)
            r = workload(cg, "syscalls", "--count", n, cpu=obs_cpu)
            return r["per_second"], (cgroup_cpu_usec(cg) - u0) * 1000.0 / r["ok"]

        url = "http://127.0.0.1:18080/"
        wdur = 5 if args.quick else 10
        with NoAudit(), Nginx(tmp, cg, obs_cpu) as ngx:
            loop()  # warm-up
            overhead.append(("syscall loop (getppid)", "ns/call", alternate(rounds, loop, observer())))
            # wrk runs throughout; custos is started and stopped around it.
            # Per round: a detached and an attached phase of 8 readings 1 s
            # apart; the requests come from nginx's own counter.
            wrk = subprocess.Popen(pinned(load_cpu, ["wrk", "-t1", "-c32", "-d86400s", url]), stdout=subprocess.DEVNULL)
            try:
                time.sleep(3)  # warm-up
                # How busy the load generator is: when it is saturated too,
                # the throughput ratio also carries the tracepoint's cost on
                # its own syscalls (the tracepoint is host-wide).
                c0, t0 = cpu_seconds(wrk.pid), time.time()
                time.sleep(3)
                wrk_busy = 100.0 * (cpu_seconds(wrk.pid) - c0) / (time.time() - t0)

                def read():
                    return cgroup_cpu_usec(cg), ngx.requests()

                nrounds = 4 if args.quick else 8
                for name, mk in (("nginx under wrk", observer()),
                                 # With per-cgroup syscall statistics off
                                 # (`sensors.syscalls: false`): what the
                                 # statistics cost a server whose requests are
                                 # a handful of syscalls each.
                                 ("nginx, syscall stats off", observer(syscalls=False)),
                                 # Nothing attached on either side: the noise.
                                 ("nginx, A/A (no custos)", None)):
                    overhead.append((name, "ns/req", sliced_rounds(nrounds, 8, 1, read, mk)))

                # Kernel-side cost, from the kernel's own per-program
                # accounting (switched on only for this extra run: it costs a
                # little itself).
                for what, unit in (("syscall loop", "call"), ("nginx+wrk", "request")):
                    c = observer()()
                    c.start()
                    time.sleep(1)
                    before = bpf_prog_stats()
                    set_bpf_stats(True)
                    try:
                        t0 = time.time()
                        if what == "nginx+wrk":
                            r0 = ngx.requests()
                            time.sleep(wdur)
                            units = ngx.requests() - r0
                        else:
                            units = int(n)
                            wrk.send_signal(signal.SIGSTOP)
                            try:
                                workload(cg, "syscalls", "--count", n, cpu=obs_cpu)
                            finally:
                                wrk.send_signal(signal.SIGCONT)
                        wall = time.time() - t0
                    finally:
                        set_bpf_stats(False)
                    after = bpf_prog_stats()
                    c.stop()
                    bpf_costs.append((what, unit, units, wall, diff_prog_stats(before, after)))

                # The same from the other side: the share of nginx's CPU
                # samples in the kernel paths custos runs or switches on,
                # which includes what the per-program accounting leaves out
                # (the tracepoint's dispatch, the syscall slow path).
                if obs_cpu is not None:
                    for side in ("attached", "detached"):
                        c = observer()() if side == "attached" else None
                        if c:
                            c.start()
                        try:
                            perf_rows.append((side,) + perf_share(obs_cpu, wdur))
                        finally:
                            if c:
                                c.stop()
            finally:
                wrk.terminate()
                wrk.wait()

    if "peers" in parts:
        # 2. Cost per event: observer CPU seconds per 1000 events at fixed rates.
        for rate in (100, 1600):
            for mk in (lambda: Custos(cg_rel, tmp, syscalls=False), lambda: Auditd(tmp), lambda: Bpftrace(tmp)):
                o = mk()
                res, cpu, rss, ev = observe(o, cg, ["exec", "--rate", str(rate), "--duration", str(dur)])
                events = res["ok"]
                rows.append((f"exec {rate}/s", o.name, cpu, 1000.0 * cpu / max(events, 1), 100.0 * cpu / res["seconds"], ev))
                if o.name == "custos":
                    rss_peak = max(rss_peak, rss)
        for rate in (1000,):
            for mk in (lambda: Custos(cg_rel, tmp, syscalls=False), lambda: Auditd(tmp), lambda: Bpftrace(tmp)):
                o = mk()
                res, cpu, rss, ev = observe(o, cg, ["connect", "--rate", str(rate), "--duration", str(dur)])
                rows.append((f"connect {rate}/s", o.name, cpu, 1000.0 * cpu / max(res["ok"], 1), 100.0 * cpu / res["seconds"], ev))

    if "footprint" in parts:
        # 4. Footprint: idle CPU.
        c = Custos(cg_rel, tmp)
        pid = c.start()
        i0 = cpu_seconds(pid)
        time.sleep(10)
        idle = (cpu_seconds(pid) - i0) / 10 * 100
        rss_peak = max(rss_peak, peak_rss_kib(pid))
        c.stop()

    if report:
        print("\n== 1. completeness")
    for k, v in report:
        print(f"{k:15} {v}")
    if rows:
        print("\n== 2. observer cost (CPU s of the observer process; per 1000 events; % of one CPU)")
        print(f"{'workload':16} {'observer':9} {'cpu_s':>7} {'s/1k ev':>8} {'%cpu':>6}  seen")
    for w, name, cpu, per_k, pct, ev in rows:
        print(f"{w:16} {name:9} {cpu:7.3f} {per_k:8.4f} {pct:6.2f}  {ev}")
    for w in sorted({r[0] for r in rows}):
        by = {r[1]: r[3] for r in rows if r[0] == w}
        if by.get("auditd") and by.get("custos"):
            print(f"{w:16} custos/auditd = {by['custos'] / by['auditd']:.3f}   custos/bpftrace = {by['custos'] / max(by.get('bpftrace', 1e-9), 1e-9):.3f}")
    if overhead:
        print(f"\n== 3. overhead on the observed (attached / detached in alternating rounds: median [min..max];"
              f" observed on CPU {obs_cpu}, wrk and custos on CPU {load_cpu})")
    for name, unit, res in overhead:
        tput = [a / d for (d, _), (a, _) in res]
        cpu = [a / d for (_, d), (_, a) in res]
        print(f"{name:24} detached {med([d for (d, _), _ in res]):14.1f}  attached {med([a for _, (a, _) in res]):14.1f}"
              f"  throughput ratio {med(tput):.4f} [{min(tput):.4f}..{max(tput):.4f}]"
              f" ({(1 - med(tput)) * 100:+.2f}% slower)")
        print(f"{'':24} observed cgroup CPU {unit}: detached {med([d for (_, d), _ in res]):.1f}, attached "
              f"{med([a for _, (_, a) in res]):.1f}, ratio {med(cpu):.4f} [{min(cpu):.4f}..{max(cpu):.4f}]")
        print(f"{'':24} capacity (units per CPU second of the observed) {(1 / med(cpu) - 1) * 100:+.2f}%")
    if wrk_busy is not None:
        print(f"(wrk keeps {wrk_busy:.0f}% of CPU {load_cpu} busy)")
    if bpf_costs:
        print("\n== 3b. kernel-side BPF cost (kernel.bpf_stats_enabled during one more attached run)")
    for what, unit, units, wall, progs in bpf_costs:
        total = sum(ns for _, (cnt, ns) in progs.items())
        print(f"{what}: {units} {unit}s in {wall:.1f}s; BPF {total / 1e9:.3f} CPU s = {total / max(units, 1):.1f} ns per {unit}"
              f" ({100.0 * total / 1e9 / wall:.2f}% of one CPU)")
        for name, (cnt, ns) in sorted(progs.items(), key=lambda kv: -kv[1][1]):
            if cnt:
                print(f"    {name:24} {cnt:10d} runs  {ns / cnt:7.1f} ns/run  {ns / 1e9:7.3f} s")
    if perf_rows:
        print(f"\n== 3c. share of the nginx CPU's samples (perf, cpu-clock) in the sensor's kernel paths")
    for side, share, hits in perf_rows:
        print(f"custos {side}: {share:.2f}%  " + ", ".join(f"{sym} {h:.2f}" for h, sym in hits[:8]))
    if idle is not None:
        print("\n== 4. footprint")
        print(f"peak RSS {rss_peak / 1024:.1f} MiB, idle CPU {idle:.2f}% of one core")
    try:
        os.rmdir(cg)
    except OSError:
        pass


if __name__ == "__main__":
    main()
