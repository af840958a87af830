#!/usr/bin/env python3
"""Sensor benchmark: completeness, cost per event against peers, overhead on
the observed, and the agent's footprint, all measured in one run so that the
ratios compare like with like.

Run as root from the repository: python3 bench/sensor.py [--quick] [--parts overhead,...]
It installs auditd, bpftrace, nginx-light, wrk and bpftool with apt when missing.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

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


def alternate(rounds, measure, make_observer):
    """[(detached, attached)] per round, each a tuple from measure()."""
    out = []
    for _ in range(rounds):
        d = measure()
        o = make_observer()
        o.start()
        try:
            a = measure()
        finally:
            o.stop()
        out.append((d, a))
    return out


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


def workload(cgroup, *args):
    out = subprocess.run([WORKLOAD, "--cgroup", cgroup, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class Custos:
    """custos watch --json on the benchmark cgroup, writing events to a file."""

    name = "custos"

    def __init__(self, cgroup_rel, tmp, syscalls=True):
        self.cfg = os.path.join(tmp, "custos.yaml")
        with open(self.cfg, "w") as f:
            f.write(
                "services:\n  - name: bench\n    cgroup: %s\n"
                "sensors: { syscalls: %s, syscall_interval: 1s }\n"
                "agent: { state_dir: %s }\n" % (cgroup_rel, "true" if syscalls else "false", tmp)
            )
        os.chmod(self.cfg, 0o600)
        self.out_path = os.path.join(tmp, "custos-events.jsonl")
        self.err_path = os.path.join(tmp, "custos-stderr.txt")

    def start(self):
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([CUSTOS, "watch", "--json", "--config", self.cfg], stdout=self.out, stderr=self.err)
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
    missing = [p for p, b in (("auditd", "auditd"), ("bpftrace", "bpftrace"), ("nginx-light", "nginx"), ("wrk", "wrk"), ("bpftool", "bpftool")) if not shutil.which(b)]
    if missing:
        sh("apt-get", "install", "-y", "-qq", *missing)
    sh("cargo", "build", "--release", "-q", "-p", "custos", "-p", "custos-tests", cwd=ROOT)

    root = cgroup2_root()
    cg_rel = "/custos-bench"
    cg = root + cg_rel
    os.makedirs(cg, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="custos-bench-")
    dur = 5 if args.quick else 15
    report = []

    report, rows, overhead, bpf_costs = [], [], [], []
    rss_peak, idle = 0, None
    rounds = 2 if args.quick else 5
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
        # 3. Overhead on the observed: syscall loop and nginx under wrk, detached
        # and attached in alternation (the machine may be shared: each round
        # compares neighbours in time; the median and the spread are reported).
        # Throughput is the headline; the CPU the observed cgroup itself used per
        # unit of work (cpu.stat, which includes the BPF programs run in its
        # context) is steadier on a busy machine.
        n = "2000000" if args.quick else "10000000"

        def loop():
            u0 = cgroup_cpu_usec(cg)
            r = workload(cg, "syscalls", "--count", n)
            return r["per_second"], (cgroup_cpu_usec(cg) - u0) * 1000.0 / r["ok"]

        overhead = []
        loop()  # warm-up
        overhead.append(("syscall loop (getppid)", "ns/call", alternate(rounds, loop, lambda: Custos(cg_rel, tmp))))

        ngx_conf = os.path.join(tmp, "nginx.conf")
        with open(ngx_conf, "w") as f:
            f.write("worker_processes 1; daemon off; pid %s/nginx.pid; error_log stderr;\n"
                    "events { worker_connections 1024; }\n"
                    "http { access_log off; server { listen 127.0.0.1:18080; location / { return 200 'ok'; } } }\n" % tmp)
        wdur = 5 if args.quick else 10

        def wrk():
            u0 = cgroup_cpu_usec(cg)
            out = subprocess.run(["wrk", "-t1", "-c32", f"-d{wdur}s", "http://127.0.0.1:18080/"], check=True,
                                 capture_output=True, text=True).stdout
            used = cgroup_cpu_usec(cg) - u0
            rps = float([l for l in out.splitlines() if l.startswith("Requests/sec")][0].split()[1])
            reqs = int([l for l in out.splitlines() if " requests in " in l][0].split()[0])
            return rps, used * 1000.0 / max(reqs, 1)

        ngx = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec nginx -c {ngx_conf}"])
        time.sleep(1)
        try:
            wrk()  # warm-up
            overhead.append(("nginx req/s under wrk", "ns/req", alternate(rounds, wrk, lambda: Custos(cg_rel, tmp))))
            # The same with per-cgroup syscall statistics off (`sensors.syscalls:
            # false`): what the two per-syscall programs cost a server whose
            # requests are a handful of syscalls each.
            overhead.append(("nginx, syscall stats off", "ns/req",
                             alternate(rounds, wrk, lambda: Custos(cg_rel, tmp, syscalls=False))))
            # Kernel-side cost, from the kernel's own per-program accounting
            # (switched on only for this extra run: it costs a little itself).
            bpf_costs = []
            for what, fn, unit in (("syscall loop", loop, "call"), ("nginx+wrk", wrk, "request")):
                c = Custos(cg_rel, tmp)
                c.start()
                time.sleep(1)
                before = bpf_prog_stats()
                set_bpf_stats(True)
                try:
                    t0 = time.time()
                    if what == "nginx+wrk":
                        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{wdur}s", "http://127.0.0.1:18080/"],
                                             check=True, capture_output=True, text=True).stdout
                        units = int([l for l in out.splitlines() if " requests in " in l][0].split()[0])
                    else:
                        units = int(n)
                        workload(cg, "syscalls", "--count", n)
                    wall = time.time() - t0
                finally:
                    set_bpf_stats(False)
                after = bpf_prog_stats()
                c.stop()
                bpf_costs.append((what, unit, units, wall, diff_prog_stats(before, after)))
        finally:
            ngx.terminate()
            ngx.wait()

    if "peers" in parts:
        # 2. Cost per event: observer CPU seconds per 1000 events at fixed rates.
        rows = []
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
        print(f"\n== 3. overhead on the observed (attached / detached; {rounds} alternating rounds, median [min..max])")
    for name, unit, res in overhead:
        tput = [a / d for (d, _), (a, _) in res]
        cpu = [a / d for (_, d), (_, a) in res]
        print(f"{name:24} detached {med([d for (d, _), _ in res]):14.1f}  attached {med([a for _, (a, _) in res]):14.1f}"
              f"  throughput ratio {med(tput):.4f} [{min(tput):.4f}..{max(tput):.4f}]"
              f" ({(1 - med(tput)) * 100:+.2f}% slower)")
        print(f"{'':24} observed cgroup CPU {unit}: detached {med([d for (_, d), _ in res]):.1f}, attached "
              f"{med([a for _, (_, a) in res]):.1f}, ratio {med(cpu):.4f} [{min(cpu):.4f}..{max(cpu):.4f}]")
    if bpf_costs:
        print("\n== 3b. kernel-side BPF cost (kernel.bpf_stats_enabled during one more attached run)")
    for what, unit, units, wall, progs in bpf_costs:
        total = sum(ns for _, (cnt, ns) in progs.items())
        print(f"{what}: {units} {unit}s in {wall:.1f}s; BPF {total / 1e9:.3f} CPU s = {total / max(units, 1):.1f} ns per {unit}"
              f" ({100.0 * total / 1e9 / wall:.2f}% of one CPU)")
        for name, (cnt, ns) in sorted(progs.items(), key=lambda kv: -kv[1][1]):
            if cnt:
                print(f"    {name:24} {cnt:10d} runs  {ns / cnt:7.1f} ns/run  {ns / 1e9:7.3f} s")
    if idle is not None:
        print("\n== 4. footprint")
        print(f"peak RSS {rss_peak / 1024:.1f} MiB, idle CPU {idle:.2f}% of one core")
    try:
        os.rmdir(cg)
    except OSError:
        pass


if __name__ == "__main__":
    main()
