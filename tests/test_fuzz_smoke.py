"""The fuzz targets of tests/fuzz in CI: every seed through each target, then each target under
atheris for a few seconds. A crash, a hang or an exception the code does not promise fails it;
./build.sh fuzz SECONDS runs them for longer."""
import os
import subprocess
import sys

import pytest

from tests.fuzz.targets import TARGETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
SMOKE_SECONDS = 3


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_run_clean(name):
    seeds = sorted(os.listdir(os.path.join(CORPUS, name)))
    assert seeds, f"no seeds in tests/fuzz/corpus/{name}"
    for seed in seeds:
        with open(os.path.join(CORPUS, name, seed), "rb") as f:
            TARGETS[name](f.read())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_smoke(name, tmp_path):
    found = tmp_path / "corpus"
    found.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, f"-max_total_time={SMOKE_SECONDS}",
         "-max_len=8192", "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/",
         str(found), os.path.join(CORPUS, name)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"{name}: exit {run.returncode}\n{run.stderr[-4000:]}"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(("crash-", "timeout-", "oom-"))]
