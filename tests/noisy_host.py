"""A noisy host with known incidents: what tests/test_precision.py and benchmarks/precision.py
run against a real `tapio-server` and a real `tapio-collector --enable-ebpf`.

Background: ordinary activity made by real programs, each kind in its own loop until stopped:

  shims      a pyenv-style `python3` shim (bash) run from a shell: it runs `readlink` on itself
             and `grep` on a version file, both exit 1, then execs the real interpreter
  prompt     what a shell prompt and a user's habits run: `git rev-parse` outside a repository
             (128), `git diff --quiet` with changes (1), `grep -q` that finds nothing (1),
             `which` of a missing command (1), `test -e` of a missing file
  build      `make -B -j2` of a few C files (gcc, cc1, as, collect2, ld), or `python3 -m
             compileall` of a small package
  containers short-lived cgroups shaped like docker and Kubernetes containers (cgroup v2 under the
             harness's own top directory), whose entrypoint runs a few healthy commands
  http       a small HTTP server on 127.0.0.1 and `curl` clients (Python ones without curl)
  service    a .service cgroup whose shell loop runs `date` and `sleep` every second

Incidents, at seeded random moments, each with the ground truth a correct group states:

  crash_loop/container   a docker-shaped container whose program exits 1, restarted 6 times
  crash_loop/service     the same in a `.service` cgroup (Restart=on-failure, in effect)
  oom/container          a program in a container's cgroup v1 memory child (32 MiB) allocating
                         past the limit: OOM-killed
  oom/host               the same in a cgroup v1 memory child of no container (cgroup v2 "/")
  refused                20 connects to a closed port on 127.0.0.1 (from a container)
  timed_out              8 connects to a local blackhole: a listener whose accept queue is full,
                         so the kernel drops the SYNs; TCP_SYNCNT=1 bounds each to about 3 s.
                         Nothing leaves the machine.
  sigsegv / sigabrt      a program that dereferences NULL / calls abort()

score() compares the server's groups with the truth:

  found        a group of the incident's kind names its process, its container (or unit, or
               none) and its root cause (Incident.check says what each kind must state)
  over-claims  a found group that names processes of neither the incident nor its cgroup
  false        a group at warning or worse that belongs to no incident: noise for the person on
               call. Groups that belong to an incident but are not the one that found it are
               listed as extra, not counted as false.

Only groups about the harness's programs count (NoisyHost.owns: the group's subject is a process
it started): other programs on the same host make groups of their own. The engine builds at
most `max_groups_per_minute` (60) process-tree groups a minute per collector and drops the rest
(counted, unseen); the background stays under that budget, so the noise it makes is all visible.
"""
import collections
import dataclasses
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import uuid

from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import ServerProcess, StreamingCollector, http_json, wait_until

SEC = 1_000_000_000
SEVERE = ("warning", "error", "critical")
MEMCG_V1 = "/sys/fs/cgroup/memory"
MEMCG_LIMIT = 32 << 20
# the OOM event carries the memory cgroup's name in a fixed field (TAPIO_CGROUP_NAME_LEN, with
# its NUL): a container's leaf ("cri-containerd-<64 hex>.scope") arrives cut to this
MEMCG_NAME_CHARS = 63
RESTARTS = 6                 # a crash loop's failures (the engine's default threshold is 5)
REFUSED_CONNECTS = 20
TIMED_OUT_CONNECTS = 8
INCIDENT_KINDS = ("crash_loop/container", "crash_loop/service", "oom/container", "oom/host",
                  "refused", "timed_out", "sigsegv", "sigabrt")

# The incidents' programs: what a misconfigured service, a buggy worker, a memory hog are.
C_PROGRAMS = {
    "orders-api": """
        #include <stdio.h>
        #include <unistd.h>
        int main(void) {
            fprintf(stderr, "orders-api: DATABASE_URL is not set\\n");
            usleep(30000);
            return 1;
        }""",
    "image-resizer": """
        #include <unistd.h>
        int main(void) {
            usleep(20000);
            return *(volatile int *)0;
        }""",
    "ledger-check": """
        #include <stdio.h>
        #include <stdlib.h>
        int main(void) {
            fprintf(stderr, "ledger-check: invariant violated\\n");
            abort();
        }""",
    "report-builder": """
        #include <stdlib.h>
        #include <string.h>
        int main(void) {
            for (int i = 0; i < 512; i++) {       /* up to 512 MiB, 1 MiB at a time */
                char *p = malloc(1 << 20);
                if (!p)
                    return 3;
                memset(p, 1, 1 << 20);
            }
            return 0;
        }""",
}
# the service's program is the same failing binary under the service's own name
ALIASES = {"billing-sync": "orders-api", "batch-import": "report-builder"}

CLIENT = '''\
#!{python}
"""A client whose database does not answer, as one that retries does. Each connect is bounded
by TCP_SYNCNT=1 (one SYN retransmission: about 3 s)."""
import socket, sys, threading, time
host, port, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def once():
    with socket.socket() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        try:
            s.connect((host, port))
        except OSError:
            pass

if mode == "parallel":
    threads = [threading.Thread(target=once) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
else:
    for _ in range(count):
        once()
        time.sleep(0.05)
'''

HTTP_SERVER = '''\
import http.server, os, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
os.chdir(sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
server.timeout = 0.2
print(server.server_address[1], flush=True)
while not os.path.exists(sys.argv[2]):
    server.handle_request()
'''

HTTP_CLIENT = """
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5).read()
except urllib.error.HTTPError:
    pass
"""

SHIM = '''\
#!/usr/bin/env bash
set -e
[ -n "$PYENV_DEBUG" ] && set -x
program="${{0##*/}}"
export PYENV_ROOT="{root}"
# a shim resolves itself and the selected version before it execs the interpreter
readlink "$0" >/dev/null || true
grep -qx "3.99.0" "$PYENV_ROOT/version" 2>/dev/null || true
exec "{python}" "$@"
'''


# ---- the truth ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Incident:
    name: str                         # one of INCIDENT_KINDS
    at_s: float                       # planned moment, seconds after the background started
    kind: str = ""                    # the group kind that must report it
    comm: str = ""                    # the failing process's name (its executable's basename)
    container_id: str = ""
    unit: str = ""
    memcg: str = ""                   # the cgroup v1 memory cgroup's name
    destination: str = ""
    signal: str = ""
    cause: str = ""                   # what the root cause must say
    pids: set = dataclasses.field(default_factory=set)         # the incident's own processes
    cgroup_pids: set = dataclasses.field(default_factory=set)  # every process put in its cgroup
    start_ns: int = 0
    end_ns: int = 0
    error: str = ""                   # the harness could not inject it (never counted as found)

    def truth(self):
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in dataclasses.asdict(self).items()}

    def check(self, group):
        """'' when `group` reports this incident correctly, else what it gets wrong."""
        a = group.get("attributes") or {}
        if group.get("kind") != self.kind:
            return f"kind {group.get('kind')}, not {self.kind}"
        if group.get("severity") not in SEVERE:
            return f"severity {group.get('severity')}: the person on call would not see it"
        if (a.get("container_id") or "") != self.container_id:
            return f"container {a.get('container_id') or 'none'}, not {self.container_id or 'none'}"
        if self.unit and a.get("systemd_unit") != self.unit:
            return f"unit {a.get('systemd_unit') or 'none'}, not {self.unit}"
        cause = group.get("root_cause") or ""
        if self.cause not in cause:
            return f"root cause {cause!r} does not say {self.cause!r}"
        exe = (a.get("executable") or "").rsplit("/", 1)[-1]
        if self.kind == "crash_loop":
            if exe != self.comm and a.get("comm") != self.comm:
                return f"process {exe or a.get('comm')}, not {self.comm}"
            if (a.get("exit_codes") or {}).get("1", 0) < 5:
                return f"exit codes {a.get('exit_codes')}"
        elif self.kind in ("oom_kill", "fatal_signal"):
            if a.get("pid") not in self.pids:
                return f"pid {a.get('pid')}, not {sorted(self.pids)}"
            if exe != self.comm and a.get("comm") != self.comm:
                return f"process {exe or a.get('comm')}, not {self.comm}"
            if self.kind == "oom_kill" and a.get("memcg_name") != self.memcg[:MEMCG_NAME_CHARS]:
                return f"memory cgroup {a.get('memcg_name')}, not {self.memcg}"
            if self.kind == "fatal_signal" and a.get("signal") != self.signal:
                return f"signal {a.get('signal')}, not {self.signal}"
        elif self.kind == "connectivity_degradation":
            if a.get("destination") != self.destination:
                return f"destination {a.get('destination')}, not {self.destination}"
            if not self.pids & set(a.get("pids") or ()) and a.get("last_pid") not in self.pids:
                return f"processes {a.get('pids')}, not the client {sorted(self.pids)}"
        return ""

    def over_claims(self, group):
        """What the group claims that is not the incident's: processes of neither the incident
        nor its cgroup, OOM kills of other cgroups. [] when it claims only what is its own."""
        a = group.get("attributes") or {}
        named = set(a.get("pids") or ()) | {p.get("pid") for p in a.get("processes") or ()}
        named.discard(None)
        others = sorted(named - self.pids - self.cgroup_pids)
        claims = []
        if others:
            claims.append(f"{len(others)} process(es) of neither the incident nor its cgroup "
                          f"(pids {', '.join(map(str, others[:10]))}{', ...' if len(others) > 10 else ''})")
        if self.kind == "oom_kill" and (a.get("kills_in_history") or 1) > 1:
            claims.append(f"{a['kills_in_history']} OOM kills of it; its memory cgroup had one")
        return claims

    def related(self, group):
        """Whether the group is about this incident (by scope, or by its processes while it ran)."""
        a = group.get("attributes") or {}
        if self.container_id and a.get("container_id") == self.container_id:
            return True
        if self.unit and a.get("systemd_unit") == self.unit:
            return True
        if self.memcg and a.get("memcg_name") == self.memcg[:MEMCG_NAME_CHARS]:
            return True
        if self.destination and a.get("destination") == self.destination:
            return True
        # pids are reused (pid_max may be 32768): a pid counts only while the incident ran
        if not self.start_ns or group.get("start_ns", 0) > self.end_ns + 30 * SEC \
                or group.get("end_ns", 0) < self.start_ns - 5 * SEC:
            return False
        named = set(a.get("pids") or ()) | {a.get("pid")}
        return bool(named & (self.pids | self.cgroup_pids))


def score(incidents, groups, background_s, owns=None):
    """The report: recall, over-claims, false groups at warning or worse (and per hour).
    `owns(group)` tells the groups about the harness's programs from those of other programs on
    the host (which are counted apart, as "other")."""
    if owns is not None:
        other = [g for g in groups if not owns(g)]
        groups = [g for g in groups if owns(g)]
    else:
        other = []
    used = set()
    rows = []
    for inc in incidents:
        found, why = None, "no group"
        if inc.error:
            why = f"not injected: {inc.error}"
        else:
            candidates = [g for g in groups if g.get("kind") == inc.kind and inc.related(g)]
            for g in candidates:
                problem = inc.check(g)
                if not problem:
                    found = g
                    break
                why = problem
            if found is None and not candidates:
                why = f"no {inc.kind} group about it"
        row = {"incident": inc.name, "at_s": round(inc.at_s, 1), "found": found is not None,
               "why": "" if found else why, "truth": inc.truth()}
        if found is not None:
            used.add(found["id"])
            row.update(group=found["id"], severity=found["severity"], summary=found["summary"],
                       root_cause=found["root_cause"], over_claims=inc.over_claims(found))
        rows.append(row)
    false, extra, info = [], [], collections.Counter()
    for g in groups:
        if g["id"] in used:
            continue
        owner = next((inc for inc in incidents if inc.related(g)), None)
        entry = {"kind": g["kind"], "severity": g["severity"], "summary": g["summary"],
                 "root_cause": g.get("root_cause") or "", "id": g["id"]}
        if owner is not None:
            extra.append(dict(entry, incident=owner.name))
        elif g["severity"] in SEVERE:
            false.append(entry)
        else:
            info[g["kind"]] += 1
    found = sum(r["found"] for r in rows)
    hours = background_s / 3600 if background_s > 0 else float("nan")
    return {
        "background_s": round(background_s, 1),
        "incidents": len(rows), "found": found,
        "recall": found / len(rows) if rows else float("nan"),
        "over_claiming": sum(1 for r in rows if r.get("over_claims")),
        "false_warnings": len(false),
        "false_warnings_per_10min": len(false) / hours / 6 if hours else float("nan"),
        "false_warnings_per_hour": len(false) / hours if hours else float("nan"),
        "false_by_kind": dict(collections.Counter(f["kind"] for f in false)),
        "info_groups_by_kind": dict(info),
        "groups_total": len(groups),
        "other_groups": len(other),
        "other_by_kind_severity": dict(collections.Counter(f"{g['kind']}/{g['severity']}" for g in other)),
        "rows": rows, "false": false, "extra": extra,
    }


def format_report(report, width=110):
    """Lines for a human: the numbers, each incident, and the false groups (the noise on call)."""
    out = [f"background {report['background_s']:.0f} s, {report['groups_total']} groups; "
           f"recall {report['found']}/{report['incidents']}, {report['over_claiming']} over-claiming, "
           f"{report['false_warnings']} false at warning or worse "
           f"({report['false_warnings_per_10min']:.1f} per 10 min); {report['other_groups']} groups "
           "about other programs on the host, not counted"]
    for r in report["rows"]:
        text = r["summary"] if r["found"] else r["why"]
        mark = "found" if r["found"] else "MISSED"
        if r.get("over_claims"):
            mark = f"found, but claims {'; '.join(r['over_claims'])}"
        out.append(f"  {r['incident']:<21} {mark}: {text}"[:width])
    for f in report["false"]:
        out.append(f"  false {f['kind']}/{f['severity']}: {f['summary']}"[:width])
    return out


# ---- the host ------------------------------------------------------------------------------------

class MemoryCgroups:
    """cgroup v1 memory children with a limit, under one uniquely named directory."""

    def __init__(self):
        if not os.path.isdir(MEMCG_V1):
            raise RuntimeError(f"no cgroup v1 memory controller at {MEMCG_V1}")
        self.top = os.path.join(MEMCG_V1, f"tapio-precision-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.top)
        self._dirs = [self.top]
        self._lock = threading.Lock()

    def create(self, name, limit=MEMCG_LIMIT):
        path = os.path.join(self.top, name)
        with self._lock:
            os.mkdir(path)
            self._dirs.append(path)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
        try:
            with open(os.path.join(path, "memory.swappiness"), "w") as f:
                f.write("0")     # over the limit means OOM, not swap
        except OSError:
            pass
        return path

    def cleanup(self):
        for path in sorted(self._dirs, key=len, reverse=True):
            deadline = time.monotonic() + 10
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    # EBUSY while a killed process is still leaving: bounded
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        self._dirs.clear()


class NoisyHost:
    """The background loops and the incident injectors. Use as a context manager: everything it
    starts (processes, cgroups, files) is gone when it leaves."""

    def __init__(self, workdir, seed=1):
        self.workdir = str(workdir)
        self.seed = seed
        self.rng = random.Random(seed)
        # the harness's own interpreter: a real binary, never a host's pyenv shim, so that the
        # programs' process chains are the same on every host
        self.python = sys.executable
        self._stop = threading.Event()
        self._threads = []
        self._procs = []
        self._spawned = collections.defaultdict(list)   # pid -> [[start_ns, end_ns or None]]
        self._lock = threading.Lock()
        self.counts = collections.Counter()       # background programs run, by loop
        self.errors = []                           # background runs that could not be made
        self.tree = None
        self.memcgs = None
        self.started = self.stopped = None
        self._blackholes = []
        self._http = None
        self.http_port = None

    # -- set-up and clean-up --------------------------------------------------------------------
    def __enter__(self):
        try:
            self.tree = CgroupTree(require_cgroup_root())
            self.memcgs = MemoryCgroups()
            self._prepare()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def _prepare(self):
        os.makedirs(self.path("bin"), exist_ok=True)
        for name, source in C_PROGRAMS.items():
            src = self.path("bin", name + ".c")
            with open(src, "w") as f:
                f.write(textwrap.dedent(source).lstrip())
            subprocess.run(["gcc", "-O0", "-o", self.path("bin", name), src], check=True, timeout=120)
        for alias, name in ALIASES.items():
            shutil.copy(self.path("bin", name), self.path("bin", alias))
        client = self.path("bin", "db-client")
        with open(client, "w") as f:
            f.write(CLIENT.format(python=self.python))
        os.chmod(client, 0o755)
        shutil.copy("/bin/true", self.path("bin", "tapio-ready"))
        # a pyenv root with a shim
        os.makedirs(self.path("pyenv", "shims"), exist_ok=True)
        with open(self.path("pyenv", "version"), "w") as f:
            f.write("system\n")
        shim = self.path("pyenv", "shims", "python3")
        with open(shim, "w") as f:
            f.write(SHIM.format(root=self.path("pyenv"), python=self.python))
        os.chmod(shim, 0o755)
        # a small C project, a Python package, a git repository with a change
        os.makedirs(self.path("project", "pkg"), exist_ok=True)
        units = ["parse", "format", "store", "util"]
        for unit in units:
            with open(self.path("project", f"{unit}.c"), "w") as f:
                f.write(f"int {unit}_value(int x) {{ return x * {len(unit)} + 1; }}\n")
            with open(self.path("project", "pkg", f"{unit}.py"), "w") as f:
                f.write(f"def {unit}(x):\n    return [i * {len(unit)} for i in range(x)]\n")
        with open(self.path("project", "main.c"), "w") as f:
            f.write("".join(f"int {u}_value(int);\n" for u in units)
                    + "int main(void) { return " + " + ".join(f"{u}_value(0)" for u in units)
                    + " - 4; }\n")
        with open(self.path("project", "Makefile"), "w") as f:
            objs = " ".join(f"{u}.o" for u in units + ["main"])
            f.write(f"app: {objs}\n\tgcc -o app {objs}\n%.o: %.c\n\tgcc -O1 -c -o $@ $<\n")
        git = ["git", "-C", self.path("project"), "-c", "user.name=dev", "-c", "user.email=dev@localhost"]
        subprocess.run(["git", "init", "-q", self.path("project")], check=True, timeout=30)
        subprocess.run(git + ["add", "."], check=True, timeout=30)
        subprocess.run(git + ["commit", "-q", "-m", "initial"], check=True, timeout=30)
        with open(self.path("project", "util.c"), "a") as f:
            f.write("/* work in progress */\n")
        os.makedirs(self.path("not-a-repo"), exist_ok=True)
        os.makedirs(self.path("www"), exist_ok=True)
        with open(self.path("www", "index.html"), "w") as f:
            f.write("<html>" + "x" * 2000 + "</html>\n")

    def cleanup(self):
        self._stop.set()
        self._write_stop_file()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for t in self._threads:
            t.join(60)
        self._threads.clear()
        for blackhole in self._blackholes:
            for s in blackhole:
                s.close()
        self._blackholes.clear()
        if self.tree is not None:
            self.tree.cleanup()
        if self.memcgs is not None:
            self.memcgs.cleanup()

    # -- running programs ---------------------------------------------------------------------
    def popen(self, argv, v2=None, memcg=None, env=None, **kw):
        """Start argv; with v2 (a cgroup v2 directory) and memcg (a v1 memory cgroup) the process
        moves itself there before it execs, as a container runtime's init does."""
        moves = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in (v2, memcg) if d)
        if moves:
            argv = ["sh", "-c", moves + 'exec "$0" "$@"', *argv]
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        start = time.time_ns()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, **kw)
        with self._lock:
            self._spawned[p.pid].append([start, None])
            self._procs.append(p)
            # keep the list short: forget those that were waited for
            if len(self._procs) > 256:
                self._procs = [q for q in self._procs if q.returncode is None]
        return p

    def run(self, argv, timeout=60, **kw):
        p = self.popen(argv, **kw)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        with self._lock:
            self._spawned[p.pid][-1][1] = time.time_ns()
        return p

    def owns(self, group):
        """Whether the group's subject (a tree's root, a crash loop's or a connect's process, an
        OOM or a signal's victim) is a process this harness started (while it ran: pids are
        reused) or the harness itself. Other programs on the host (other test runs, say) make
        groups too; they are neither background nor incidents. A group about another program
        that names the harness's processes among its own is not the harness's."""
        a = group.get("attributes") or {}
        named = {a.get("pid"), a.get("last_pid")} - {None}
        if os.getpid() in named:
            return True
        start, end = group.get("start_ns", 0) - SEC, group.get("end_ns", 0) + SEC
        with self._lock:
            for pid in named:
                for began, ended in self._spawned.get(pid, ()):
                    if began <= end and (ended is None or ended >= start):
                        return True
        return False

    def cgroup(self, relative):
        with self._lock:
            self.tree.mkdir(relative)
        return self.tree.directory(relative)

    def remove_cgroup(self, relative, levels=1):
        """rmdir the cgroup and `levels - 1` of its parents (bounded: a process may still leave)."""
        parts = relative.strip("/").split("/")
        for n in range(levels):
            rel = "/".join(parts[:len(parts) - n])
            deadline = time.monotonic() + 5
            while True:
                try:
                    with self._lock:
                        self.tree.rmdir(rel)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)

    # -- readiness ----------------------------------------------------------------------------
    def wait_ready(self, server_url, timeout=60):
        """Until an exec made now has reached the server: the collector's probes see this host."""
        marker = self.path("bin", "tapio-ready")
        query = urllib.parse.urlencode({"comm": "tapio-ready", "limit": 1})

        def seen():
            self.run([marker], timeout=10)
            status, body = http_json(f"{server_url}/api/v1/events?{query}")
            return status == 200 and body.get("count", 0) > 0
        wait_until(seen, timeout, interval=0.5, what="an exec on this host to reach the server")

    # -- the background -----------------------------------------------------------------------
    def start_background(self):
        self.started = time.monotonic()
        self._http = self._start_http()
        # pauses between runs, in seconds: about 50 commands a minute that may make a tree of
        # processes, under the engine's default budget of 60 process-tree groups a minute (it
        # builds no group past it, so a busier background would hide part of the noise)
        loops = {
            "shims": ((2.0, 5.0), self._shim),
            "prompt": ((2.0, 5.0), self._prompt),
            "build": ((10.0, 20.0), self._build),
            "containers": ((4.0, 10.0), self._container),
            "http": ((0.2, 0.6), self._http_client),
            "service": ((0.0, 0.0), self._service),
        }
        for name, (every, action) in loops.items():
            t = threading.Thread(target=self._loop, args=(name, every, action), daemon=True,
                                 name=f"background-{name}")
            self._threads.append(t)
            t.start()

    def _write_stop_file(self):
        if os.path.isdir(self.workdir):
            with open(self.path("stop"), "w"):
                pass

    def stop_background(self):
        """Stop the loops; the long-running programs (the HTTP server, the service) leave by
        themselves, with exit code 0, as they would when stopped cleanly."""
        self._stop.set()
        self._write_stop_file()
        for t in self._threads:
            t.join(60)
        self._threads.clear()
        if self._http is not None:
            try:
                self._http.wait(15)
            except subprocess.TimeoutExpired:
                self._http.kill()
        self.stopped = time.monotonic()

    @property
    def background_s(self):
        end = self.stopped if self.stopped is not None else time.monotonic()
        return end - self.started if self.started is not None else 0.0

    def _loop(self, name, every, action):
        rng = random.Random(f"{self.seed}-{name}")
        while not self._stop.is_set():
            try:
                action(rng)
                self.counts[name] += 1
            except Exception as e:   # a background run that failed to start is reported, not fatal
                self.errors.append(f"{name}: {e!r}")
                if len(self.errors) > 100:
                    return
            self._stop.wait(rng.uniform(*every))

    def _shim(self, rng):
        env = {"PATH": self.path("pyenv", "shims") + ":" + os.environ.get("PATH", "/usr/bin:/bin")}
        script = rng.choice(['python3 -c "import sys"',
                             'python3 -c "print(1)" >/dev/null',
                             'python3 --version >/dev/null; echo done >/dev/null'])
        self.run(["bash", "-c", script], timeout=30, env=env)

    def _prompt(self, rng):
        """Short scripts of the kind prompts, editors and hooks run (bash -c: each its own tree).
        Taken in turn, so that each runs as often in a short run as in a long one; two of them
        end non-zero, as such scripts do: their last command's status is the script's."""
        project, elsewhere = self.path("project"), self.path("not-a-repo")
        scripts = [
            f'cd "{elsewhere}" && git rev-parse --git-dir >/dev/null 2>&1',
            f'cd "{project}" && git diff --quiet; git status --porcelain >/dev/null',
            f'grep -q TODO "{project}/main.c"; grep -rn "no such symbol" "{project}" >/dev/null',
            'which definitely-not-installed >/dev/null 2>&1; test -e /nonexistent/file; true',
            f'cd "{project}" && git log --oneline -1 >/dev/null && git rev-parse --abbrev-ref HEAD >/dev/null',
        ]
        if not hasattr(self, "_prompt_turn"):
            self._prompt_turn = rng.randrange(len(scripts))
        self._prompt_turn += 1
        self.run(["bash", "-c", scripts[self._prompt_turn % len(scripts)]], timeout=30)

    def _build(self, rng):
        if rng.random() < 0.6:
            self.run(["make", "-s", "-B", "-j2", "-C", self.path("project")], timeout=120)
        else:
            self.run([self.python, "-m", "compileall", "-f", "-q", self.path("project", "pkg")], timeout=120)

    def _container(self, rng):
        cid = secrets.token_hex(32)
        if rng.random() < 0.5:
            relative = f"bg/system.slice/docker-{cid}.scope"
            levels = 1
        else:
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4)).replace("-", "_")
            relative = (f"bg/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/"
                        f"cri-containerd-{cid}.scope")
            levels = 2
        directory = self.cgroup(relative)
        entry = rng.choice([
            "hostname >/dev/null; ls / >/dev/null; sleep 0.3; cat /etc/os-release >/dev/null",
            "id >/dev/null; env >/dev/null; sleep 0.5; date >/dev/null",
            "uname -a >/dev/null; sleep 0.2; ls /etc >/dev/null; sleep 0.2",
        ])
        self.run(["sh", "-ec", entry], v2=directory, timeout=30)
        self.remove_cgroup(relative, levels)

    def _start_http(self):
        server = self.popen([self.python, "-c", HTTP_SERVER, self.path("www"), self.path("stop")],
                            stdout=subprocess.PIPE)
        line = server.stdout.readline()
        server.stdout.close()
        self.http_port = int(line)
        return server

    def _http_client(self, rng):
        url = f"http://127.0.0.1:{self.http_port}" + rng.choice(["/", "/index.html", "/index.html", "/missing"])
        if shutil.which("curl"):
            self.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", url], timeout=30)
        else:
            self.run([self.python, "-c", HTTP_CLIENT, url], timeout=30)

    def _service(self, rng):
        directory = self.cgroup("bg/system.slice/tapio-bg-cron.service")
        stop = self.path("stop")
        self.run(["sh", "-c", f'while [ ! -e "{stop}" ]; do date >/dev/null; sleep 1; done'],
                 v2=directory, timeout=24 * 3600)

    # -- incidents ------------------------------------------------------------------------------
    def schedule(self, duration_s, repeats=1, start_s=5.0, tail_s=15.0):
        """The incidents, each kind `repeats` times, at seeded random moments in the background."""
        latest = max(start_s + 1, duration_s - tail_s)
        planned = [Incident(name, self.rng.uniform(start_s, latest))
                   for name in INCIDENT_KINDS for _ in range(repeats)]
        return sorted(planned, key=lambda i: i.at_s)

    def inject_all(self, incidents):
        """Start each incident at its moment (seconds after start_background). Returns the threads."""
        threads = []
        for inc in incidents:
            t = threading.Thread(target=self._inject_at, args=(inc,), daemon=True,
                                 name=f"incident-{inc.name}")
            threads.append(t)
            t.start()
        return threads

    def _inject_at(self, inc):
        delay = self.started + inc.at_s - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            inc.error = "the background stopped first"
            return
        inc.start_ns = time.time_ns()
        try:
            getattr(self, "_" + inc.name.replace("/", "_"))(inc)
        except Exception as e:
            inc.error = repr(e)
        inc.end_ns = time.time_ns()

    def _program(self, name):
        return self.path("bin", name)

    def _crash_loop(self, inc, directory):
        rng = random.Random(f"{self.seed}-{inc.name}-{inc.at_s}")
        for _ in range(RESTARTS):
            p = self.run([self._program(inc.comm)], v2=directory, timeout=30)
            inc.pids.add(p.pid)
            if p.returncode != 1:
                raise RuntimeError(f"{inc.comm} exited {p.returncode}, not 1")
            time.sleep(rng.uniform(0.1, 0.4))     # the restart delay

    def _crash_loop_container(self, inc):
        cid = secrets.token_hex(32)
        inc.kind, inc.comm, inc.container_id = "crash_loop", "orders-api", cid
        inc.cause = "exit code 1"
        self._crash_loop(inc, self.cgroup(f"incidents/system.slice/docker-{cid}.scope"))
        inc.cgroup_pids |= inc.pids

    def _crash_loop_service(self, inc):
        inc.kind, inc.comm = "crash_loop", "billing-sync"
        inc.unit = f"billing-sync-{secrets.token_hex(3)}.service"
        inc.cause = "exit code 1"
        self._crash_loop(inc, self.cgroup(f"incidents/system.slice/{inc.unit}"))
        inc.cgroup_pids |= inc.pids

    def _oom(self, inc, v2, memcg_name):
        memcg = self.memcgs.create(memcg_name)
        inc.kind, inc.memcg = "oom_kill", memcg_name
        inc.cause = f"memory cgroup {memcg_name[:MEMCG_NAME_CHARS]} reached its limit"
        p = self.run([self._program(inc.comm)], v2=v2, memcg=memcg, timeout=60)
        inc.pids.add(p.pid)
        inc.cgroup_pids.add(p.pid)
        if p.returncode != -signal.SIGKILL:
            raise RuntimeError(f"{inc.comm} exited {p.returncode}, not by SIGKILL")

    def _oom_container(self, inc):
        cid = secrets.token_hex(32)
        uid = str(uuid.uuid4()).replace("-", "_")
        leaf = f"cri-containerd-{cid}.scope"
        v2 = self.cgroup(f"incidents/kubepods.slice/kubepods-burstable.slice/"
                         f"kubepods-burstable-pod{uid}.slice/{leaf}")
        inc.comm, inc.container_id = "report-builder", cid
        self._oom(inc, v2, leaf)

    def _oom_host(self, inc):
        inc.comm = "batch-import"
        self._oom(inc, None, f"batch-import-{secrets.token_hex(3)}")

    def _closed_port(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]      # bound, never listening, then closed: refused

    def _refused(self, inc):
        cid = secrets.token_hex(32)
        directory = self.cgroup(f"incidents/system.slice/docker-{cid}.scope")
        port = self._closed_port()
        inc.kind, inc.comm, inc.container_id = "connectivity_degradation", "db-client", cid
        inc.destination, inc.cause = f"127.0.0.1:{port}", "connection refused"
        p = self.run([self._program("db-client"), "127.0.0.1", str(port), str(REFUSED_CONNECTS), "serial"],
                     v2=directory, timeout=60)
        inc.pids.add(p.pid)
        inc.cgroup_pids.add(p.pid)

    def _timed_out(self, inc):
        # a listener whose accept queue is full (backlog 0, one connection waiting): the kernel
        # drops every further SYN, as a firewall that drops them would
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._blackholes.append((listener, filler))
        inc.kind, inc.comm = "connectivity_degradation", "db-client"
        inc.destination, inc.cause = f"127.0.0.1:{port}", "time out"
        p = self.run([self._program("db-client"), "127.0.0.1", str(port), str(TIMED_OUT_CONNECTS),
                      "parallel"], timeout=60)
        inc.pids.add(p.pid)
        # the blackhole's owner made the one connect that got through: a group may name it
        inc.cgroup_pids |= {p.pid, os.getpid()}

    def _crash(self, inc, name, sig, cause, in_container):
        inc.kind, inc.comm, inc.signal, inc.cause = "fatal_signal", name, sig.name, cause
        directory = None
        if in_container:
            inc.container_id = secrets.token_hex(32)
            directory = self.cgroup(f"incidents/system.slice/docker-{inc.container_id}.scope")
        # no core file: `ulimit -c 0` in the shell that execs it (the same process)
        p = self.run(["sh", "-c", 'ulimit -c 0; exec "$0"', self._program(name)], v2=directory, timeout=30)
        inc.pids.add(p.pid)
        inc.cgroup_pids.add(p.pid)
        if p.returncode != -sig:
            raise RuntimeError(f"{name} exited {p.returncode}, not by {sig.name}")

    def _sigsegv(self, inc):
        self._crash(inc, "image-resizer", signal.SIGSEGV, "a fault in the process itself", True)

    def _sigabrt(self, inc):
        self._crash(inc, "ledger-check", signal.SIGABRT, "raised SIGABRT itself", False)


# ---- the stack ----------------------------------------------------------------------------------

class Stack:
    """A real tapio-server (HTTP API on) and tapio-collector --enable-ebpf streaming to it."""

    def __init__(self, tmp_path, server_flags=()):
        self.server = ServerProcess(tmp_path, list(server_flags), http=True)
        self.collector = None
        try:
            self.server.wait_listening()
            self.collector = StreamingCollector(tmp_path, self.server.address)
            self.collector.wait_log(f"Connected to Tapio server at {self.server.address}", 60)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self):
        return self.server.http_url

    def groups(self):
        """Every group the server has, following the API's pages (bounded)."""
        out, url = [], "/api/v1/groups?limit=1000"
        for _ in range(100):
            status, body = http_json(self.url + url, timeout=30)
            if status != 200:
                raise RuntimeError(f"GET {url}: {status} {body}")
            out.extend(body["groups"])
            url = body.get("next")
            if not url:
                break
        return out

    def stats(self):
        status, body = http_json(self.url + "/api/v1/stats", timeout=30)
        return body if status == 200 else {}

    def stop(self):
        codes = {}
        for name, proc in (("collector", self.collector), ("server", self.server)):
            if proc is not None:
                codes[name] = proc.stop()
        return codes


def settle(stack, incidents, timeout=30.0, quiet=6.0):
    """After the background: wait (bounded) until every incident is found, then until no group
    has appeared or changed for `quiet` seconds (late trees close `grace` after their last exit).
    Returns the groups."""
    deadline = time.monotonic() + timeout
    groups = stack.groups()
    while time.monotonic() < deadline:
        if all(inc.error or any(inc.related(g) and not inc.check(g) for g in groups) for inc in incidents):
            break
        time.sleep(0.5)
        groups = stack.groups()
    last = {(g["id"], g["end_ns"], g["status"]) for g in groups}
    since = time.monotonic()
    while time.monotonic() < deadline + quiet and time.monotonic() - since < quiet:
        time.sleep(0.5)
        groups = stack.groups()
        now = {(g["id"], g["end_ns"], g["status"]) for g in groups}
        if now != last:
            last, since = now, time.monotonic()
    return groups


def run(workdir, seconds, repeats=1, seed=1, server_flags=(), progress=None):
    """The whole measurement: start the stack, the background and the incidents, score.
    Returns the report (score() plus what ran and the server's counters)."""
    say = progress or (lambda text: None)
    tmp = __import__("pathlib").Path(workdir)
    with NoisyHost(tmp / "host", seed) as host:
        stack = Stack(tmp, server_flags)
        try:
            host.wait_ready(stack.url)
            say(f"stack ready; {seconds:.0f} s of background with incidents")
            incidents = host.schedule(seconds, repeats)
            host.start_background()
            threads = host.inject_all(incidents)
            host._stop.wait(seconds)
            for t in threads:
                t.join(120)
            host.stop_background()
            say("background stopped; waiting for the last groups")
            groups = settle(stack, incidents)
            report = score(incidents, groups, host.background_s, host.owns)
            stats = stack.stats()
            report.update(seed=seed, activity=dict(host.counts), activity_errors=host.errors[:20],
                          server_events=(stats.get("events") or {}).get("received"),
                          server_drops=stats.get("drops"), groups_opened=stats.get("groups_opened"))
        finally:
            codes = stack.stop()
    report["exit_codes"] = codes
    return report
