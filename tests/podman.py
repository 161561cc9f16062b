"""Real podman containers for tests: a base image built here with no registry, containers that are
always removed, every podman call bounded.

Container tests need root, podman, runc and mmdebstrap (`./build.sh test` installs them). Without
them they skip with the reason, unless TAPIO_REQUIRE_CONTAINERS=1 (set by .ci/run), where they
fail: CI must not pass by skipping them.

This host's quirks, kept in one place: crun refuses a hybrid (v1 + v2) cgroup layout, so runc runs
the containers; podman raises the nofile/nproc limits by default, which a host may forbid, so the
containers get explicit limits.
"""
import functools
import json
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE_SCRIPT = os.path.join(ROOT, "deploy", "podman", "base-image.sh")
REQUIRE_CONTAINERS = os.environ.get("TAPIO_REQUIRE_CONTAINERS") == "1"

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
# Every test container's name starts so: a session's leftovers are recognisable.
NAME_PREFIX = "tapio-test-"
# mmdebstrap and the import take about 75 s on a quiet host with a near mirror
BASE_BUILD_TIMEOUT = 420


def podman(*args, timeout=60, check=True, input=None):
    """Run `podman --runtime runc ARGS`, bounded; returns the CompletedProcess (text)."""
    try:
        # conmon leaves an "oom" marker in its working directory when a container is OOM-killed:
        # not in the checkout
        run = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                             input=input, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"podman {' '.join(args[:3])} did not finish in {timeout}s: {e.stderr}")
    if check and run.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {run.returncode}:\n{run.stderr}")
    return run


@functools.lru_cache(maxsize=1)
def why_no_containers():
    """None when this host can run podman containers, else why not."""
    if os.geteuid() != 0:
        return "container tests run rootful podman: they need root"
    for tool, package in (("podman", "podman"), ("runc", "runc"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (Debian: apt-get install {package}; ./build.sh test does)"
    try:
        info = subprocess.run([*PODMAN, "info", "--format", "{{.Host.CgroupManager}}"],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer in 60 s"
    if info.returncode != 0:
        return f"`podman info` failed: {info.stderr.strip()[:300]}"
    return None


def require_containers():
    """Skip without podman (or fail under TAPIO_REQUIRE_CONTAINERS=1)."""
    why = why_no_containers()
    if why is None:
        return
    if REQUIRE_CONTAINERS:
        pytest.fail(f"TAPIO_REQUIRE_CONTAINERS=1 but {why}")
    pytest.skip(why)


@functools.lru_cache(maxsize=1)
def base_image():
    """localhost/tapio-base:<hash> (Debian bookworm with Python, libbpf, libelf), built on the
    first call on this host and cached (deploy/podman/base-image.sh)."""
    require_containers()
    try:
        run = subprocess.run([BASE_IMAGE_SCRIPT], capture_output=True, text=True,
                             timeout=BASE_BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the base image was not built in {BASE_BUILD_TIMEOUT}s")
    if run.returncode != 0:
        pytest.fail(f"building the base image failed:\n{run.stderr}")
    return run.stdout.strip().splitlines()[-1]


def unique_name(word):
    return f"{NAME_PREFIX}{word}-{uuid.uuid4().hex[:8]}"


class Containers:
    """The containers a test module starts; remove_all() takes every one of them away."""

    def __init__(self, image):
        self.image = image
        self.names = []

    def run(self, name, command, *flags, detach=False, image=None, timeout=120):
        """`podman run --name NAME [flags] IMAGE COMMAND...`; returns the CompletedProcess (for a
        detached one, stdout is its id). Never --rm: inspect works after exit; remove_all() cleans."""
        self.names.append(name)
        return podman("run", "--name", name, *LIMITS, *(["--detach"] if detach else []), *flags,
                      image or self.image, *command, timeout=timeout, check=False)

    def inspect(self, name):
        return json.loads(podman("inspect", "--type", "container", name).stdout)[0]

    def wait_exit(self, name, timeout=60):
        """The container's exit code once it has stopped (podman wait, bounded)."""
        run = podman("wait", name, timeout=timeout)
        return int(run.stdout.strip().splitlines()[-1])

    def remove_all(self):
        if self.names:
            podman("rm", "--force", "--time", "0", "--ignore", *self.names, timeout=120, check=False)
            self.names.clear()


def cgroup_path_of(container_id):
    """The container's cgroup v2 path, as its init process sees it from the host."""
    state = json.loads(podman("inspect", "--type", "container", container_id).stdout)[0]["State"]
    pid = state.get("Pid") or 0
    if pid <= 0:
        return None
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None
