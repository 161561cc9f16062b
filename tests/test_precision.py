"""Precision and recall on a noisy host (issue 13), the short form of benchmarks/precision.py.

A real `tapio-server` and `tapio-collector --enable-ebpf` watch a minute of ordinary activity
made by real programs (pyenv-style shims, a C build, git and grep failing as they normally do,
short-lived container cgroups, loopback HTTP) with one incident of each kind injected at a seeded
random moment (crash loops in a container and in a .service unit, OOM kills in a container and
outside any, refused and timed-out connects, SIGSEGV and SIGABRT). tests/noisy_host.py says what
each incident must be reported as. The targets: every incident found with the right kind,
process, container and root cause; no group claiming processes that are not the incident's; no
group at warning or worse that belongs to no incident. The first tests try the judge itself on
groups made by hand: a judge that found everything would prove nothing.

TAPIO_PRECISION_SECONDS (default 60) and TAPIO_PRECISION_SEED (default 13) change the run.
"""
import os

import pytest

from tests import noisy_host
from tests.helpers import require_ebpf

SECONDS = float(os.environ.get("TAPIO_PRECISION_SECONDS", "60"))
SEED = int(os.environ.get("TAPIO_PRECISION_SEED", "13"))


# ---- the judge, on groups made by hand ---------------------------------------------------------

T0 = 1_700_000_000 * noisy_host.SEC
CID = "c" * 64


def crash_loop_incident():
    inc = noisy_host.Incident("crash_loop/container", 10.0, kind="crash_loop", comm="orders-api",
                              container_id=CID, cause="exit code 1", pids={101, 102, 103, 104, 105, 106},
                              start_ns=T0, end_ns=T0 + 3 * noisy_host.SEC)
    inc.cgroup_pids |= inc.pids
    return inc


def group(kind, severity="error", summary="", root_cause="", start=T0, **attributes):
    return {"id": f"{kind}-{len(attributes)}-{severity}-{summary}", "kind": kind, "severity": severity,
            "summary": summary, "root_cause": root_cause, "start_ns": start, "end_ns": start + noisy_host.SEC,
            "attributes": attributes}


def test_a_crash_loop_is_found_only_with_its_container_process_cause_and_severity():
    inc = crash_loop_incident()
    right = dict(container_id=CID, executable="/tmp/bin/orders-api", pid=101, pids=sorted(inc.pids),
                 exit_codes={"1": 6})
    cause = "orders-api exit code 1 every time"
    assert inc.check(group("crash_loop", root_cause=cause, **right)) == ""
    wrong = {
        "kind process_tree": group("process_tree", root_cause=cause, **right),
        "container": group("crash_loop", root_cause=cause, **dict(right, container_id="d" * 64)),
        "process": group("crash_loop", root_cause=cause, **dict(right, executable="/bin/sh", comm="sh")),
        "root cause": group("crash_loop", root_cause="", **right),
        "severity": group("crash_loop", severity="info", root_cause=cause, **right),
        "exit codes": group("crash_loop", root_cause=cause, **dict(right, exit_codes={"1": 2})),
    }
    for what, g in wrong.items():
        assert inc.check(g), what


def test_the_score_counts_false_warnings_extra_groups_and_over_claims():
    inc = crash_loop_incident()
    found = group("crash_loop", root_cause="exit code 1 every time", container_id=CID,
                  executable="/x/orders-api", pid=101, pids=[101, 102, 103, 104, 105, 106, 7777],
                  exit_codes={"1": 6})
    groups = [
        found,
        group("process_tree", "warning", "bash and 2 descendant(s)", pid=900, pids=[900, 901]),
        group("process_tree", "info", "make and 9 descendant(s)", pid=910, pids=[910]),
        group("fatal_signal", "error", "sh killed by SIGSEGV", pid=103, pids=[103]),   # about the incident
        group("process_tree", "warning", "a later process reusing pid 103", start=T0 + 600 * noisy_host.SEC,
              pid=103, pids=[103]),
        group("process_tree", "warning", "another program's", pid=5000, pids=[5000]),
    ]
    report = noisy_host.score([inc], groups, 600.0, owns=lambda g: g["attributes"]["pid"] != 5000)
    assert report["found"] == 1 and report["recall"] == 1.0
    assert report["rows"][0]["over_claims"] and "7777" in report["rows"][0]["over_claims"][0]
    assert report["over_claiming"] == 1
    assert [f["summary"] for f in report["false"]] == ["bash and 2 descendant(s)", "a later process reusing pid 103"]
    assert report["false_warnings_per_10min"] == 2.0 and report["false_warnings_per_hour"] == 12.0
    assert [e["kind"] for e in report["extra"]] == ["fatal_signal"]
    assert report["info_groups_by_kind"] == {"process_tree": 1}
    assert report["other_groups"] == 1
    missed = noisy_host.score([crash_loop_incident()], groups[1:], 600.0)
    assert missed["recall"] == 0.0 and missed["rows"][0]["why"]


# ---- the noisy host --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_ebpf()
    result = noisy_host.run(tmp_path_factory.mktemp("precision"), SECONDS, repeats=1, seed=SEED)
    print("\n".join(noisy_host.format_report(result, width=200)))
    return result


def _explain(report):
    return "\n" + "\n".join(noisy_host.format_report(report, width=400))


@pytest.mark.kernel
def test_the_stack_stopped_cleanly(report):
    assert report["exit_codes"] == {"collector": 0, "server": 0}


@pytest.mark.kernel
def test_the_background_ran(report):
    # every loop ran its programs: otherwise "no false warnings" would say nothing
    assert not report["activity_errors"], report["activity_errors"]
    for loop in ("shims", "prompt", "build", "containers", "http"):
        assert report["activity"].get(loop, 0) >= 1, report["activity"]


@pytest.mark.kernel
def test_every_incident_was_injected(report):
    missing = [r["incident"] for r in report["rows"] if r["why"].startswith("not injected")]
    assert not missing, _explain(report)


@pytest.mark.kernel
def test_every_incident_is_found_with_its_kind_process_container_and_cause(report):
    assert report["recall"] == 1.0, _explain(report)


@pytest.mark.kernel
def test_no_group_claims_processes_that_are_not_the_incidents(report):
    claims = {r["incident"]: r["over_claims"] for r in report["rows"] if r.get("over_claims")}
    assert not claims, f"{claims}{_explain(report)}"


@pytest.mark.kernel
def test_no_false_group_at_warning_or_worse(report):
    assert report["false_warnings"] == 0, _explain(report)
