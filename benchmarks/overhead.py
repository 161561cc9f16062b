"""What Tapio costs the node it watches: workload slowdown, eBPF time, collector CPU and memory.

    python benchmarks/overhead.py [--json PATH] [--rounds N] [--seconds S] [--quick]
                                  [--workload NAME ...] [--collector-args "FLAGS"]
                                  [--baseline-collector PATH]

Needs root and two CPUs. The workload runs pinned to CPU 0, whatever watches it to CPU 1:

- exec storm: fork + exec of /bin/true + wait, in a loop (a small C program built here);
- connect storm: connect to a loopback listener, accept, close both, in a loop (same program);
- paced connects: the same, held at 2,500 connections/s: ~10 k events/s, the rate at which the
  collector's CPU target is set;
- mixed: stress-ng's fork and sock stressors side by side (bogo ops of each).

Each workload runs in interleaved rounds under three conditions, in a rotating order:
nothing attached; Tapio (a running `tapio-server` and a `tapio-collector --enable-ebpf` streaming
to it, both pinned to CPU 1, with its default flags but Kubernetes off); and, as the reference a
user would otherwise reach for, `bpftrace` attached to the same tracepoints printing the same
fields to a file. With --baseline-collector, a fourth condition runs another build's
tapio-collector (e.g. an older checkout's .venv/bin/tapio-collector, its own default flags) with
the same server: before and after a change, in the same rounds; --collector-args go to both.
Reported, medians over the rounds with their spread (min-max):

(a) the workload's slowdown against the nothing-attached run of the same round, twice: in CPU
    time per operation (user + system of the workload and its children: what tracing adds to the
    work itself, the BPF programs run in its context; it does not move when other work on a
    shared machine takes the workload's CPU away) and in wall-clock operations per second;
(b) the in-kernel time per invocation of each BPF program, and all of it per operation of the
    workload and as a share of the workload's CPU time (the programs run for the whole host, so
    other activity counts against the workload), from a second run of the workload with the watcher still attached and
    `kernel.bpf_stats_enabled` on (run_time_ns / run_cnt from bpf_prog_info, read with bpftool;
    the statistics add two clock reads to every program run, so (a) is measured without them);
(c) the watcher's CPU (user + system, from /proc) over both runs, per million events it took in;
(d) the watcher's resident memory at the end of the round (VmRSS) and its peak (VmHWM).

The machine's other activity is traced too (Tapio and bpftrace watch the whole host): the event
counts are what each watcher saw, not only the workload's.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from _common import machine, print_table, write_json

BIN = os.path.dirname(sys.executable)
WORKLOAD_CPU, WATCHER_CPU = "0", "1"
CONDITIONS = ("none", "tapio", "bpftrace")
PACED_CONNECTS = 2500           # connections per second of the paced workload
WORKLOADS = ("exec storm", "connect storm", "paced connects", "mixed (stress-ng)")

STORM_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* at most `rate` operations per second (0: as fast as it goes) */
static void pace(double start, long ops, double rate)
{
	if (rate > 0) {
		double due = start + ops / rate, wait = due - now();
		if (wait > 0) {
			struct timespec t = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
			nanosleep(&t, NULL);
		}
	}
}

int main(int argc, char **argv)
{
	double start = now(), end = start + atof(argv[2]), rate = argc > 3 ? atof(argv[3]) : 0;
	long ops = 0;

	if (!strcmp(argv[1], "exec")) {
		char *av[] = {"/bin/true", NULL}, *ev[] = {NULL};
		while (now() < end) {
			int status;
			pace(start, ops, rate);
			pid_t pid = fork();
			if (pid == 0) {
				execve(av[0], av, ev);
				_exit(127);
			}
			if (pid < 0 || waitpid(pid, &status, 0) < 0 || status)
				return perror("exec storm"), 1;
			ops++;
		}
	} else {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t n = sizeof(a);
		int l = socket(AF_INET, SOCK_STREAM, 0);
		if (bind(l, (void *)&a, sizeof(a)) || listen(l, 128) || getsockname(l, (void *)&a, &n))
			return perror("listen"), 1;
		while (now() < end) {
			pace(start, ops, rate);
			int c = socket(AF_INET, SOCK_STREAM, 0), s;
			if (c < 0 || connect(c, (void *)&a, sizeof(a)))
				return perror("connect storm"), 1;
			if ((s = accept(l, NULL, NULL)) < 0)
				return perror("accept"), 1;
			close(c);
			close(s);
			ops++;
		}
	}
	double elapsed = now() - start, cpu = 0;
	struct rusage ru;
	int who[] = {RUSAGE_SELF, RUSAGE_CHILDREN};
	for (int i = 0; i < 2; i++) {
		getrusage(who[i], &ru);
		cpu += ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	}
	printf("%ld %.6f %.6f\n", ops, elapsed, cpu);
	return 0;
}
"""

# The fields Tapio's programs read, at the same tracepoints (the classic tracepoints where Tapio
# uses their BTF twins), each event printed as one line.
BPFTRACE = r"""
tracepoint:sched:sched_process_exec {
  printf("exec %llu %d %d %d %d %llu %s %s %s\n", nsecs, pid, tid, curtask->real_parent->tgid,
         uid, cgroup, comm, str(args->filename), str(uptr(curtask->mm->arg_start)));
}
tracepoint:sched:sched_process_exit /pid == tid/ {
  printf("exit %llu %d %d %d %llu %s %d %llu\n", nsecs, pid, curtask->real_parent->tgid, uid,
         cgroup, comm, curtask->exit_code, curtask->start_boottime);
}
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  printf("tcp %llu %d %d %llu %s %s %d %s %d %d %d\n", nsecs, pid, uid, cgroup, comm,
         ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, args->oldstate,
         args->newstate);
}
tracepoint:syscalls:sys_exit_accept4, tracepoint:syscalls:sys_exit_accept /args->ret >= 0/ {
  printf("accept %llu %d %d %llu %s %d\n", nsecs, pid, uid, cgroup, comm, args->ret);
}
tracepoint:signal:signal_generate /args->sig == 6 || args->sig == 9 || args->sig == 11/ {
  printf("signal %llu %d %d %s %d %d %s\n", nsecs, args->pid, pid, args->comm, args->sig,
         args->code, comm);
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def stop(proc, timeout=30):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def proc_cpu(pid):
    """User + system CPU seconds of a process so far."""
    fields = read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid):
    """(VmRSS, VmHWM) in MiB."""
    status = read_text(f"/proc/{pid}/status")
    kib = {k: int(re.search(rf"^{k}:\s+(\d+)", status, re.M).group(1)) for k in ("VmRSS", "VmHWM")}
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


def prog_ids(pid):
    """Ids of the BPF programs a process holds (its program and link fds say them)."""
    ids = set()
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            ids.update(int(i) for i in re.findall(r"^prog_id:\s+(\d+)", read_text(f"{fdinfo}/{fd}"), re.M))
        except OSError:
            pass
    return ids


def prog_stats(ids):
    """{prog id: (name, run_time_ns, run_cnt)} of these BPF programs."""
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, check=True).stdout
    return {p["id"]: (p.get("name", "?"), p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out) if p["id"] in ids}


class Stats:
    """Sets kernel.bpf_stats_enabled (on: 1, off: 0) for a run and puts back what it was."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __init__(self, on):
        self.value = "1" if on else "0"

    def __enter__(self):
        self.before = read_text(self.PATH).strip()
        with open(self.PATH, "w") as f:
            f.write(self.value)
        return self

    def __exit__(self, *exc):
        with open(self.PATH, "w") as f:
            f.write(self.before)


# --- the workloads --------------------------------------------------------------------------

def build_storm(workdir):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("benchmark: needs a C compiler (cc) for the exec and connect storms")
    src, exe = os.path.join(workdir, "storm.c"), os.path.join(workdir, "storm")
    with open(src, "w") as f:
        f.write(STORM_C)
    subprocess.run([cc, "-O2", "-o", exe, src], check=True)
    return exe


def run_storm(exe, mode, seconds, rate=0, name=None):
    out = subprocess.run(["taskset", "-c", WORKLOAD_CPU, exe, mode, str(seconds), str(rate)],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise SystemExit(f"benchmark: {mode} storm failed: {out.stderr.strip()}")
    ops, elapsed, cpu = (float(x) for x in out.stdout.split())
    return {name or mode: (ops / elapsed, ops / cpu, ops)}


def run_mixed(workdir, seconds):
    path = os.path.join(workdir, "stress-ng.yaml")
    subprocess.run(["taskset", "-c", WORKLOAD_CPU, "stress-ng", "--fork", "1", "--sock", "1",
                    "--timeout", str(seconds), "--metrics-brief", "--yaml", path],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 60,
                   check=True)
    text = read_text(path)
    rates = {}
    for block in text.split("- stressor: ")[1:]:
        name = block.split()[0]
        field = dict(re.findall(r"^\s+([\w-]+): ([\d.]+)$", block, re.M))
        rates[f"stress-ng {name}"] = (float(field["bogo-ops-per-second-real-time"]),
                                      float(field["bogo-ops-per-second-usr-sys-time"]),
                                      float(field["bogo-ops"]))
    if set(rates) != {"stress-ng fork", "stress-ng sock"}:
        raise SystemExit(f"benchmark: no stress-ng metrics in {path}:\n{text}")
    return rates


# --- the watchers ---------------------------------------------------------------------------

class Tapio:
    """A collector streaming to the benchmark's server, both on the watcher CPU."""

    def __init__(self, workdir, server_address, n, extra=(), exe=None):
        self.log_path = os.path.join(workdir, f"collector-{n}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", WATCHER_CPU, exe or os.path.join(BIN, "tapio-collector"), "--enable-ebpf",
             "--server", server_address, "--enable-k8s=false", "--metrics-interval", "0",
             "--http-port", "0", *extra], stdout=subprocess.DEVNULL, stderr=self.log)
        # measured from when it streams: start-up (imports, attach, connect) is not its running cost
        wait_for(lambda: "Connected to Tapio server" in read_text(self.log_path) or self.proc.poll() is not None,
                 120, "the collector to connect")
        if self.proc.poll() is not None:
            raise SystemExit(f"benchmark: tapio-collector exited:\n{read_text(self.log_path)}")

    def events(self):
        """Events seen, from the collector's closing line (after stop)."""
        m = re.search(r"tapio-collector: (\d+) events seen", read_text(self.log_path))
        if not m:
            raise SystemExit(f"benchmark: no closing line from tapio-collector:\n{read_text(self.log_path)}")
        return int(m.group(1))

    def stop(self):
        stop(self.proc)
        self.log.close()
        if self.proc.returncode:
            raise SystemExit(f"benchmark: tapio-collector exited with {self.proc.returncode}:\n"
                             f"{read_text(self.log_path)[-2000:]}")


class Bpftrace:
    """bpftrace on the watcher CPU, its events as lines in a file."""

    def __init__(self, workdir, n):
        script = os.path.join(workdir, "tapio.bt")
        with open(script, "w") as f:
            f.write(BPFTRACE)
        self.out_path = os.path.join(workdir, f"bpftrace-{n}.out")
        self.out = open(self.out_path, "wb")
        self.err_path = os.path.join(workdir, f"bpftrace-{n}.err")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(["taskset", "-c", WATCHER_CPU, "bpftrace", script],
                                     stdout=self.out, stderr=self.err)
        # attached once it prints an exec it was shown
        def attached():
            if self.proc.poll() is not None:
                raise SystemExit(f"benchmark: bpftrace exited:\n{read_text(self.err_path)}")
            subprocess.run(["/bin/true"])
            return "exec " in read_text(self.out_path)
        wait_for(attached, 120, "bpftrace to attach")
        self.skip = self.lines()

    def lines(self):
        with open(self.out_path, "rb") as f:
            return f.read().count(b"\n")

    def events(self):
        return self.lines() - self.skip

    def stop(self):
        stop(self.proc)
        self.out.close()
        self.err.close()


# --- one round ------------------------------------------------------------------------------

def measure(condition, workload, workdir, server_address, n, collector_args=(), baseline=None):
    watcher = None
    if condition == "tapio":
        watcher = Tapio(workdir, server_address, n, collector_args)
    elif condition == "baseline":
        watcher = Tapio(workdir, server_address, n, collector_args, exe=baseline)
    elif condition == "bpftrace":
        watcher = Bpftrace(workdir, n)
    result = {"condition": condition}
    try:
        cpu0 = proc_cpu(watcher.proc.pid) if watcher else 0
        with Stats(on=False):
            result["rates"] = workload()
        if watcher:
            # the programs' own time, in a second run of the workload: kernel.bpf_stats_enabled
            # adds two clock reads to every program run, which the measured run must not pay
            ids = prog_ids(watcher.proc.pid)
            progs = prog_stats(ids)
            with Stats(on=True):
                timed = workload()
            after = prog_stats(ids)
            result["bpf"] = {name: {"run_time_ns": after[i][1] - t, "run_cnt": after[i][2] - c}
                             for i, (name, t, c) in progs.items() if i in after}
            if not sum(b["run_cnt"] for b in result["bpf"].values()):
                raise SystemExit(f"benchmark: no BPF program of {condition} ran during the workload")
            # all of it per operation, and against the workload's own CPU time in that run
            result["workload_ops"] = sum(ops for _, _, ops in timed.values())
            result["workload_cpu_s"] = sum(ops / cpu_rate for _, cpu_rate, ops in timed.values())
            # the watcher's CPU over both runs, against their own length (ops / ops per second;
            # what it spends between them, reading the statistics, counts against it)
            result["cpu_s"] = proc_cpu(watcher.proc.pid) - cpu0
            result["watch_s"] = sum(max(ops / wall_rate for wall_rate, _, ops in run.values())
                                    for run in (result["rates"], timed))
            rss, hwm = proc_memory(watcher.proc.pid)
            result.update(rss_mib=rss, hwm_mib=hwm)
    finally:
        if watcher:
            watcher.stop()
    if watcher:
        result["events"] = watcher.events()
    return result


def spread(values, fmt="{:,.0f}"):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summarize(name, rounds, conditions=CONDITIONS):
    """Per condition: the workload's rates, the slowdown against the same round's bare run,
    the watcher's CPU per million events and memory, the BPF time per program."""
    bare = [r for r in rounds if r["condition"] == "none"]
    out = {}
    for condition in conditions:
        mine = [r for r in rounds if r["condition"] == condition]
        metrics = {}
        for metric in mine[0]["rates"]:
            m = {}
            for k, kind in ((0, "wall"), (1, "cpu")):
                m[f"ops_per_{kind}_s"] = [r["rates"][metric][k] for r in mine]
                m[f"slowdown_{kind}_pct"] = [100 * (b["rates"][metric][k] / r["rates"][metric][k] - 1)
                                             for b, r in zip(bare, mine)]
            metrics[metric] = m
        entry = {"metrics": metrics}
        if condition != "none":
            entry["cpu_s_per_million_events"] = [1e6 * r["cpu_s"] / max(r["events"], 1) for r in mine]
            entry["events_per_s"] = [r["events"] / r["watch_s"] for r in mine]
            entry["rss_mib"] = [r["rss_mib"] for r in mine]
            entry["hwm_mib"] = [r["hwm_mib"] for r in mine]
            entry["cpu_pct_of_core"] = [100 * r["cpu_s"] / r["watch_s"] for r in mine]
            bpf = {}
            for r in mine:
                for prog, s in r["bpf"].items():
                    total = bpf.setdefault(prog, {"run_time_ns": 0, "run_cnt": 0})
                    total["run_time_ns"] += s["run_time_ns"]
                    total["run_cnt"] += s["run_cnt"]
            for total in bpf.values():
                total["ns_per_run"] = total["run_time_ns"] / total["run_cnt"] if total["run_cnt"] else None
            entry["bpf"] = bpf
            entry["bpf_ns_per_op"] = [sum(s["run_time_ns"] for s in r["bpf"].values()) / r["workload_ops"]
                                      for r in mine]
            entry["bpf_pct_of_workload_cpu"] = [
                100 * sum(s["run_time_ns"] for s in r["bpf"].values()) / (1e9 * r["workload_cpu_s"])
                for r in mine]
        out[condition] = entry
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/overhead.json")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds per workload")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one workload run")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1.5 s (smoke test)")
    parser.add_argument("--workload", action="append", choices=WORKLOADS,
                        help="run only this workload (repeatable; default: all)")
    parser.add_argument("--baseline-collector", metavar="PATH",
                        help="another build's tapio-collector, measured in the same rounds")
    parser.add_argument("--watchers", default=",".join(CONDITIONS[1:]),
                        help="which watchers to compare with the bare run (default: tapio,bpftrace)")
    parser.add_argument("--collector-args", default="",
                        help="more flags for both tapio-collectors, e.g. \"--read-interval 10ms\"")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 1.5
    if os.geteuid() != 0:
        raise SystemExit("benchmark: needs root (eBPF, kernel.bpf_stats_enabled)")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("benchmark: needs CPUs 0 and 1 (the workload on one, the watcher on the other)")
    for tool in ("bpftool", "bpftrace", "stress-ng", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"benchmark: needs {tool} (./build.sh bench installs it)")

    conditions = ("none",) + tuple(w for w in args.watchers.split(",") if w)
    if not set(conditions) <= set(CONDITIONS):
        raise SystemExit(f"benchmark: --watchers takes {','.join(CONDITIONS[1:])}")
    if args.baseline_collector:
        if not os.access(args.baseline_collector, os.X_OK):
            raise SystemExit(f"benchmark: {args.baseline_collector} is not an executable tapio-collector")
        conditions += ("baseline",)
    with tempfile.TemporaryDirectory() as workdir:
        storm = build_storm(workdir)
        workloads = {
            "exec storm": lambda: run_storm(storm, "exec", args.seconds),
            "connect storm": lambda: run_storm(storm, "connect", args.seconds),
            # ~4 events per connection (connect, accept, two closes): ~10 k events/s, the rate
            # of the collector's CPU target
            "paced connects": lambda: run_storm(storm, "connect", args.seconds, PACED_CONNECTS,
                                                f"connect {PACED_CONNECTS:,}/s"),
            "mixed (stress-ng)": lambda: run_mixed(workdir, max(2, round(args.seconds))),
        }
        workloads = {name: run for name, run in workloads.items() if name in (args.workload or WORKLOADS)}
        port = free_port()
        server_log = os.path.join(workdir, "server.log")
        with open(server_log, "wb") as log:
            server = subprocess.Popen(
                ["taskset", "-c", WATCHER_CPU, os.path.join(BIN, "tapio-server"), "--host", "127.0.0.1",
                 "--grpc-port", str(port), "--http-port", "0", "--db", ":memory:"],
                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: "Tapio server listening" in read_text(server_log) or server.poll() is not None,
                     60, "tapio-server")
            if server.poll() is not None:
                raise SystemExit(f"benchmark: tapio-server exited:\n{read_text(server_log)}")
            report = {}
            n = 0
            for name, workload in workloads.items():
                rounds = []
                for i in range(args.rounds):
                    order = conditions[i % len(conditions):] + conditions[:i % len(conditions)]
                    by_condition = {}
                    for condition in order:
                        n += 1
                        started = time.monotonic()
                        r = measure(condition, workload, workdir, f"127.0.0.1:{port}", n,
                                    shlex.split(args.collector_args), args.baseline_collector)
                        by_condition[condition] = r
                        print(f"  {name} round {i + 1} {condition}: "
                              + ", ".join(f"{k} {v[0]:,.0f}/s ({v[1]:,.0f}/CPU s)" for k, v in r["rates"].items())
                              + (f", {r['events']:,} events, {r['cpu_s']:.2f} CPU s" if "events" in r else "")
                              + f" ({time.monotonic() - started:.0f} s)", file=sys.stderr)
                    rounds.extend(by_condition[c] for c in conditions)
                report[name] = summarize(name, rounds, conditions)
        finally:
            stop(server)
        text = read_text(server_log)
        stored = re.search(r"Stopped after (\d+) events", text)

    print_report(report, args, conditions[1:])
    write_json(args.json, {"benchmark": "overhead", "machine": machine(), "rounds": args.rounds,
                           "collector_args": args.collector_args,
                           "baseline_collector": args.baseline_collector,
                           "seconds_per_run": args.seconds, "server_events": int(stored.group(1)) if stored else None,
                           "results": report})


def print_report(report, args, watchers):
    print(f"Workload on CPU 0, watcher on CPU 1; {args.rounds} interleaved rounds of {args.seconds:g} s; "
          "median (min-max)")
    print()
    rows = []
    for name, by in report.items():
        for metric in by["none"]["metrics"]:
            row = [metric, spread(by["none"]["metrics"][metric]["ops_per_cpu_s"])]
            for condition in watchers:
                row.append(spread(by[condition]["metrics"][metric]["slowdown_cpu_pct"], "{:+.1f}%"))
            for condition in watchers:
                row.append(spread(by[condition]["metrics"][metric]["slowdown_wall_pct"], "{:+.1f}%"))
            rows.append(row)
    print_table(["workload", "bare ops per CPU s"] + [f"CPU per op: {w}" for w in watchers]
                + [f"wall clock: {w}" for w in watchers], rows)
    print()
    rows = []
    for name, by in report.items():
        for condition in watchers:
            e = by[condition]
            rows.append([name, condition, spread(e["bpf_ns_per_op"]), spread(e["bpf_pct_of_workload_cpu"], "{:.1f}%"),
                         spread(e["events_per_s"]), spread(e["cpu_pct_of_core"], "{:.1f}"),
                         spread(e["cpu_s_per_million_events"], "{:.1f}"), spread(e["rss_mib"], "{:.0f}"),
                         spread(e["hwm_mib"], "{:.0f}")])
    print_table(["workload", "watcher", "BPF ns per op", "BPF time / workload CPU", "events/s",
                 "CPU % of a core", "CPU s per M events",
                 "RSS MiB", "peak RSS MiB"], rows)
    print()
    rows = []
    for name, by in report.items():
        for condition in watchers:
            for prog, s in sorted(by[condition]["bpf"].items()):
                if s["run_cnt"]:
                    rows.append([name, condition, prog, f"{s['run_cnt']:,}", f"{s['ns_per_run']:.0f}"])
    print_table(["workload", "watcher", "BPF program", "runs", "ns per run"], rows)


if __name__ == "__main__":
    main()
