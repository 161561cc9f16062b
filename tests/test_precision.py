"""Precision and recall on a noisy host (issue 13), the short form of benchmarks/precision.py.

A real `tapio-server` and `tapio-collector --enable-ebpf` watch a minute of ordinary activity
made by real programs (pyenv-style shims, a C build, git and grep failing as they normally do,
short-lived container cgroups, loopback HTTP) with one incident of each kind injected at a seeded
random moment (crash loops in a container and in a .service unit, OOM kills in a container and
outside any, refused and timed-out connects, SIGSEGV and SIGABRT). tests/noisy_host.py says what
each incident must be reported as. The targets: every incident found with the right kind,
process, container and root cause; no group claiming processes that are not the incident's; no
group at warning or worse that belongs to no incident.

TAPIO_PRECISION_SECONDS (default 60) and TAPIO_PRECISION_SEED (default 13) change the run.
"""
import os

import pytest

from tests import noisy_host
from tests.helpers import require_ebpf

pytestmark = pytest.mark.kernel

SECONDS = float(os.environ.get("TAPIO_PRECISION_SECONDS", "60"))
SEED = int(os.environ.get("TAPIO_PRECISION_SEED", "13"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_ebpf()
    result = noisy_host.run(tmp_path_factory.mktemp("precision"), SECONDS, repeats=1, seed=SEED)
    print("\n".join(noisy_host.format_report(result, width=200)))
    return result


def _explain(report):
    return "\n" + "\n".join(noisy_host.format_report(report, width=400))


def test_the_stack_stopped_cleanly(report):
    assert report["exit_codes"] == {"collector": 0, "server": 0}


def test_the_background_ran(report):
    # every loop ran its programs: otherwise "no false warnings" would say nothing
    assert not report["activity_errors"], report["activity_errors"]
    for loop in ("shims", "prompt", "build", "containers", "http"):
        assert report["activity"].get(loop, 0) >= 1, report["activity"]


def test_every_incident_was_injected(report):
    missing = [r["incident"] for r in report["rows"] if r["why"].startswith("not injected")]
    assert not missing, _explain(report)


def test_every_incident_is_found_with_its_kind_process_container_and_cause(report):
    assert report["recall"] == 1.0, _explain(report)


def test_no_group_claims_processes_that_are_not_the_incidents(report):
    claims = {r["incident"]: r["over_claims"] for r in report["rows"] if r.get("over_claims")}
    assert not claims, f"{claims}{_explain(report)}"


def test_no_false_group_at_warning_or_worse(report):
    assert report["false_warnings"] == 0, _explain(report)
