"""The collector runs with the capabilities the deployments give it, and no others: the real
collector, loading the real BPF programs, in the two ways we deploy it:

* the DaemonSet's: uid 0 in the container, but a bounding set of only the capabilities the
  manifest adds (what the container runtime does with `drop: [ALL]` and `add: [...]`);
* the systemd unit's: a user of its own (DynamicUser=yes) holding the capabilities as ambient
  ones (AmbientCapabilities=), with no_new_privs.

Both must attach the probes and report a real exec. Without CAP_BPF, it must say what it needs.
A capability this test process may not grant (outside its own bounding set, as CAP_SYS_RESOURCE is
in some containers) is left out, and the test says so.
"""
import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ManagedProcess, read_json_lines, wait_until

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = str(Path(sys.executable).parent / "tapio-collector")
NOBODY = 65534

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capability_numbers():
    header = Path("/usr/include/linux/capability.h")
    if not header.exists():
        pytest.skip("no /usr/include/linux/capability.h (linux-libc-dev) for the capability numbers")
    return {m[1]: int(m[2]) for m in re.finditer(r"#define\s+(CAP_[A-Z_]+)\s+(\d+)\b", header.read_text())}


def daemonset_capabilities():
    manifest = ROOT / "deploy" / "kubernetes" / "base" / "collector-daemonset.yaml"
    daemonset = yaml.safe_load(manifest.read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return ["CAP_" + name for name in container["securityContext"]["capabilities"]["add"]]


def unit_capabilities():
    text = (ROOT / "deploy" / "systemd" / "tapio-collector.service").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("AmbientCapabilities=")]
    return line.partition("=")[2].split()


def grantable(names):
    """(numbers of the capabilities this process may hand on, names it may not)."""
    numbers = capability_numbers()
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", status, re.M)[1], 16)
    kept = [numbers[n] for n in names if bounding >> numbers[n] & 1]
    return kept, [n for n in names if not bounding >> numbers[n] & 1]


def _check(result):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def as_root_with_only(caps):
    """preexec_fn: stay uid 0 but bound the capabilities to `caps` (what a container runtime
    does); exec then gives root exactly those."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())

    def preexec():
        for cap in range(last + 1):
            if cap not in caps:
                _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
    return preexec


def as_dynamic_user_with_ambient(caps, uid=NOBODY):
    """preexec_fn: become `uid` keeping `caps` as ambient capabilities, with no_new_privs (what
    DynamicUser=yes, AmbientCapabilities= and NoNewPrivileges=yes do)."""
    libc = ctypes.CDLL(None, use_errno=True)
    mask = sum(1 << cap for cap in caps)

    def preexec():
        _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        data = (_CapData * 2)()
        for i in range(2):
            word = mask >> (32 * i) & 0xFFFFFFFF
            data[i].effective = data[i].permitted = data[i].inheritable = word
        _check(libc.capset(ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data))
        for cap in caps:
            _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    return preexec


class ConfinedProcess(ManagedProcess):
    """A ManagedProcess whose child runs `preexec` (which confines it) before the exec."""

    def __init__(self, argv, log_path, preexec, cwd):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log, cwd=cwd,
                                     preexec_fn=preexec, start_new_session=True)


def run_collector(tmp_path, preexec):
    """The collector with --output to a file anyone may write; (process, events path)."""
    tmp_path.chmod(0o777)
    events = tmp_path / "events.jsonl"
    argv = [COLLECTOR, "--enable-ebpf", "--output", str(events), "--correlation", "raw",
            "--http-port", "0", "--flush-interval", "50ms"]
    return ConfinedProcess(argv, str(tmp_path / "collector.log"), preexec, tmp_path), events


def attaches_and_sees_an_exec(tmp_path, preexec, who):
    proc, events = run_collector(tmp_path, preexec)
    try:
        proc.wait_log("eBPF probes attached")
        status = Path(f"/proc/{proc.proc.pid}/status").read_text()
        marker = f"tapio-caps-{os.getpid()}-{who}"

        def seen():
            subprocess.run(["/bin/sh", "-c", ":", marker], check=True)
            return [e for e in read_json_lines(events) if e["type"] == "exec" and marker in e["exec"]["args"]]
        wait_until(seen, timeout=15, interval=0.3, what=f"an exec seen by the collector {who}")
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
    return status


def test_collector_as_root_with_only_the_daemonsets_capabilities(ebpf, tmp_path):
    caps, left_out = grantable(daemonset_capabilities())
    status = attaches_and_sees_an_exec(tmp_path, as_root_with_only(caps), "as-the-daemonset-runs-it")
    assert int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)[1], 16) == sum(1 << c for c in caps)
    if left_out:
        print(f"not granted here (outside this process's bounding set): {', '.join(left_out)}")


def test_collector_as_a_dynamic_user_with_the_units_ambient_capabilities(ebpf, tmp_path):
    caps, left_out = grantable(unit_capabilities())
    status = attaches_and_sees_an_exec(tmp_path, as_dynamic_user_with_ambient(caps), "as-the-unit-runs-it")
    assert re.search(r"^Uid:\s*(\d+)", status, re.M)[1] == str(NOBODY)
    assert int(re.search(r"^CapAmb:\s*([0-9a-f]+)", status, re.M)[1], 16) == sum(1 << c for c in caps)
    if left_out:
        print(f"not granted here (outside this process's bounding set): {', '.join(left_out)}")


def test_without_cap_bpf_the_collector_says_what_it_needs(ebpf, tmp_path):
    numbers = capability_numbers()
    caps, _ = grantable([c for c in daemonset_capabilities() if c != "CAP_BPF"])
    assert numbers["CAP_BPF"] not in caps
    proc, _ = run_collector(tmp_path, as_root_with_only(caps))
    try:
        code = proc.proc.wait(30)
    finally:
        proc.stop()
    assert code == 2, proc.log()
    assert "CAP_BPF" in proc.log()
