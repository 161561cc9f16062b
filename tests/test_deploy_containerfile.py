"""deploy/Containerfile, read: every file it copies is in the repository and in the build context
(not left out by its ignore file), every command it runs is one this repository's CI runs too
(./build.sh steps, the bundle's install.sh with flags it has, apt installs of packages build.sh
installs or their runtime libraries), and the images fit the Kubernetes manifests (stage names,
tags, the server's non-root user, the programs the entrypoints start). The public build needs a
registry and the network; tests/test_podman_image.py builds and runs the offline one
(`./build.sh image`, INSTALL=wheels) with podman.
"""
import fnmatch
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import tapio

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
IGNORE = ROOT / "deploy" / "Containerfile.dockerignore"
KUBE = ROOT / "deploy" / "kubernetes" / "base"
PREFIX = "/opt/tapio"


def instructions():
    """[(stage, INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, stage, pending = [], None, ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            stage = parts[parts.index("AS") + 1] if "AS" in parts else parts[0]
        out.append((stage, word, rest.strip()))
    return out


INSTRUCTIONS = instructions()


def build_sh():
    return (ROOT / "build.sh").read_text()


def build_steps():
    """The subcommands build.sh dispatches."""
    (arms,) = re.findall(r"^\s+([a-z|]+)\)\n\s+step=\$1", build_sh(), re.M)
    return set(arms.split("|"))


def apt_packages(array):
    (items,) = re.findall(rf"^{array}=\(([^)]*)\)", build_sh(), re.M)
    return set(items.split())


def install_sh_flags():
    """The options deploy/bundle/install.sh accepts (its case arms)."""
    text = (ROOT / "deploy" / "bundle" / "install.sh").read_text()
    return set(re.findall(r"^\s+(--[a-z-]+)\)", text, re.M))


def ignored(path):
    """Whether the ignore file leaves `path` (relative to the repository) out of the context: a
    pattern matches the path or a directory above it; `**/` matches at any depth."""
    patterns = [p.strip() for p in IGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        for pattern in patterns:
            if pattern.startswith("**/"):
                if any(fnmatch.fnmatchcase("/".join(parts[j:i]), pattern[3:]) for j in range(i)):
                    return True
            elif fnmatch.fnmatchcase("/".join(parts[:i]), pattern):
                return True
    return False


def test_stages_and_base_images():
    stages = [s for s, word, _ in INSTRUCTIONS if word == "FROM"]
    assert stages == ["build", "wheels", "installed", "runtime", "collector", "server"]
    froms = {s: rest.split()[0] for s, word, rest in INSTRUCTIONS if word == "FROM"}
    # the venv made in the build (or wheels) stage runs in the runtime stage: the same Python at
    # the same path
    assert froms["build"] == froms["wheels"] == froms["runtime"] == "${PYTHON_IMAGE}"
    assert froms["collector"] == froms["server"] == "runtime"
    # /opt/tapio comes from the stage INSTALL names: the public build by default
    assert froms["installed"] == "${INSTALL}"
    args = dict(rest.split("=", 1) for _, word, rest in INSTRUCTIONS if word == "ARG")
    assert args["INSTALL"] == "build" and args["PYTHON_IMAGE"].startswith("docker.io/library/python:3.11-")
    # ./build.sh image: the other stage, FROM the base it makes
    text = build_sh()
    assert "--build-arg INSTALL=wheels" in text and '--build-arg "PYTHON_IMAGE=$base"' in text


def test_every_copied_file_is_in_the_repository_and_the_build_context():
    copies = [(stage, rest) for stage, word, rest in INSTRUCTIONS if word == "COPY"]
    assert copies
    for stage, rest in copies:
        args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            assert args == ["--from=installed", PREFIX, PREFIX]
            continue
        if stage == "wheels":
            # the context of ./build.sh image (build/image), which it fills with wheels/
            assert args == ["wheels/", "/tmp/wheels/"]
            assert 'mkdir -p "$ctx/wheels"' in build_sh()
            continue
        for source in args[:-1]:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            assert not ignored(source), f"COPY {source}: left out of the context by {IGNORE.name}"
            kept = [p for p in files if not ignored(p.relative_to(ROOT).as_posix())]
            assert kept, f"COPY {source}: every file in it is left out of the context"


def test_the_context_leaves_out_this_checkouts_build_outputs():
    for output in (".venv", "build", "dist", "tapio/_fast/codec.c", "tapio/_fast/codec.cpython-311.so",
                   "tapio/v1/events_pb2.py", "tapio/_fast/__pycache__/x.pyc", "tapio.egg-info"):
        assert ignored(output), output
    for source in ("tapio/_fast/codec.pyx", "bpf/tapio_events.h", "build.sh", "deploy/bundle/install.sh",
                   "tapio/collector/build/x.py"):
        assert not ignored(source), source


def _commands(rest):
    # "have it || { install it; }": the offline base has the libraries already
    guard = re.fullmatch(r"(dpkg-query -W [\w ]+) >/dev/null 2>&1 \|\| \{ (.*); \}", rest)
    if guard:
        return [shlex.split(guard[1])] + _commands(guard[2])
    return [shlex.split(part) for part in rest.split("&&")]


def test_every_command_is_one_ci_runs():
    steps, flags = build_steps(), install_sh_flags()
    build_packages = apt_packages("APT_BUILD")
    runtime_libraries = set()
    for _, word, rest in INSTRUCTIONS:
        if word != "RUN":
            continue
        for argv in _commands(rest):
            if argv[:1] == ["./build.sh"]:
                assert argv[1] in steps, argv
            elif argv[:2] == ["apt-get", "update"]:
                assert len(argv) == 2
            elif argv[:2] == ["apt-get", "install"]:
                packages = [a for a in argv[2:] if not a.startswith("-")]
                if set(packages) <= build_packages:
                    continue
                runtime_libraries.update(packages)
            elif argv[:2] == ["rm", "-rf"]:
                assert argv[2:] in (["/var/lib/apt/lists/*"], ["/tmp/wheels"]), argv
            elif argv[:1] == ["tar"]:
                # the bundle ./build.sh bundle makes, unpacked as tests/test_bundle.py does
                assert argv[1] == "-xzf" and fnmatch.fnmatch(
                    f"dist/bundle/tapio-bundle-{tapio.__version__}-cp311-linux_x86_64.tar.gz", argv[2])
            elif argv[:2] == ["dpkg-query", "-W"]:
                assert set(argv[2:]) == {"libbpf1", "libelf1"}
            elif argv[:3] == ["python3", "-m", "venv"]:
                assert argv[3:] == [f"{PREFIX}/venv"]
            elif argv[0] == f"{PREFIX}/venv/bin/pip":
                # offline: only the wheels in the context
                assert argv[1:] == ["install", "--no-index", "--no-cache-dir", "--find-links", "/tmp/wheels", "tapio"]
            elif argv[:2] == ["ln", "-s"]:
                assert argv[2:] == ["venv", f"{PREFIX}/current"]
            elif argv[0].endswith("/install.sh"):
                assert argv[0].startswith("/tmp/tapio-bundle-")
                assert {a for a in argv[1:] if a.startswith("--")} <= flags
                assert argv[argv.index("--prefix") + 1] == PREFIX
            else:
                pytest.fail(f"RUN {' '.join(argv)}: not a command CI runs")
    # the runtime stage's packages are the shared libraries of build.sh's -dev packages
    assert runtime_libraries == {"libbpf1", "libelf1"}
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        pytest.skip("no dpkg-query to check which -dev packages bring the runtime libraries")
    depends = ""
    for dev in ("libbpf-dev", "libelf-dev"):
        assert dev in build_packages
        depends += subprocess.run([dpkg, "-W", "-f=${Depends}\n", dev], capture_output=True, text=True).stdout
    for library in runtime_libraries:
        assert re.search(rf"\b{re.escape(library)}\b", depends), \
            f"{library} is not a library build.sh's -dev packages use"


def test_images_fit_the_manifests():
    entrypoints = {s: rest for s, word, rest in INSTRUCTIONS if word == "ENTRYPOINT"}
    users = {s: rest for s, word, rest in INSTRUCTIONS if word == "USER"}
    for stage, program in (("collector", "tapio-collector"), ("server", "tapio-server")):
        # install.sh --prefix puts the programs in PREFIX/current/bin (tests/test_bundle.py)
        entrypoint = shlex.split(entrypoints[stage].strip("[]").replace(",", " "))
        assert entrypoint == [f"{PREFIX}/current/bin/{program}"]
        manifest = "collector-daemonset.yaml" if stage == "collector" else "server-deployment.yaml"
        workload = yaml.safe_load((KUBE / manifest).read_text())
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"tapio/{stage}:{tapio.__version__}"
    assert "collector" not in users         # root, bounded by the DaemonSet's capabilities
    server = yaml.safe_load((KUBE / "server-deployment.yaml").read_text())["spec"]["template"]["spec"]
    uid, gid = users["server"].split(":")
    assert int(uid) == server["securityContext"]["runAsUser"] != 0
    assert int(gid) == server["securityContext"]["runAsGroup"]
    # the build commands in its header are the ones the README gives
    header = CONTAINERFILE.read_text()
    for stage in ("collector", "server"):
        assert f"--target {stage} -t tapio/{stage}:{tapio.__version__} ." in header
