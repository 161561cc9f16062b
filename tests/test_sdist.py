"""`./build.sh sdist` makes an sdist that a host with only gcc, the Python headers and libbpf-dev
builds and installs with no network: it carries the Cython-generated C, the compiled BPF object
and the generated protobuf modules, so neither Cython nor clang nor protoc is needed there.

The install runs in a fresh venv that has the runtime dependencies (as an operator's would), with
`pip install --no-index --no-build-isolation`, no network (a network namespace of its own when this
host allows one), no pip configuration, and a PATH that holds the C toolchain and nothing else.

The helpers here (the offline environment, the base interpreter) serve tests/test_bundle.py too.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import tapio

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(900)   # a build of the sdist, a venv, and a compile of the C core

EM_BPF = 247    # ELF e_machine of BPF objects


def run_build(*args):
    """`./build.sh ARGS...`; returns the path it prints last (the artifact)."""
    result = subprocess.run(["./build.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"./build.sh {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return ROOT / result.stdout.strip().splitlines()[-1]


def base_python():
    """The interpreter this test venv was made from: what an operator's python3 would be."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _works(argv):
    try:
        return subprocess.run([*argv, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def offline_argv():
    """A prefix that runs a command without network: a new network namespace (only a loopback
    that is down), as root or in a user namespace. Empty where neither is allowed: then only
    offline_env() keeps pip off the network."""
    unshare = shutil.which("unshare")
    if unshare:
        for argv in ([unshare, "--net"], [unshare, "--map-root-user", "--net"]):
            if _works(argv):
                return argv
    return []


def offline_env(**extra):
    """This environment without pip settings, proxies or virtualenv traces, plus everything that
    keeps pip off the network: PIP_NO_INDEX=1, no pip configuration file, dead proxies."""
    drop = ("PIP_", "VIRTUAL_ENV", "PYTHON", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    dead = "http://127.0.0.1:9"
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead)
    env.update(extra)
    return env


def backend_pins():
    """The build backend's pins (setuptools, wheel) from requirements/dev.txt: what a build
    without isolation needs in the venv, as ./build.sh bundle takes them."""
    lines = (ROOT / "requirements" / "dev.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.split("=")[0].split("<")[0].split(">")[0].strip()
            in ("setuptools", "wheel")]


def toolchain_bin(directory):
    """A directory holding only the C toolchain (the compiler Python was built with, gcc, as, ld)
    and pkg-config: the PATH of a host with gcc, python3-dev and libbpf-dev and nothing else."""
    directory.mkdir()
    compiler = (sysconfig.get_config_var("CC") or "gcc").split()[0]
    for tool in {compiler, "gcc", "cc", "as", "ld", "pkg-config"}:
        path = shutil.which(tool)
        if path:
            (directory / tool).symlink_to(path)
    return directory


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    copy = tmp_path_factory.mktemp("sdist") / f"tapio-{tapio.__version__}.tar.gz"
    # Another build in this checkout (a second test session, say) starts by clearing dist/: when
    # it does so between the build and the copy, build again.
    for _ in range(3):
        built = run_build("sdist")
        assert built.name == copy.name
        try:
            shutil.copy2(built, copy)
            return copy
        except FileNotFoundError:
            continue
    pytest.fail("dist/ kept being cleared by other builds in this checkout")


def sdist_files(path):
    """{path inside the project: bytes} of every file in the sdist."""
    files = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name.split("/", 1)[1]] = tar.extractfile(member).read()
    return files


def test_sdist_carries_the_generated_c_the_bpf_object_and_the_wire_modules(sdist):
    files = sdist_files(sdist)
    assert f"Version: {tapio.__version__}" in files["PKG-INFO"].decode()
    modules = sorted(p.stem for p in (ROOT / "tapio" / "_fast").glob("*.pyx"))
    assert modules
    assert [m for m in modules if f"tapio/_fast/{m}.c" not in files] == []
    # a .pyx would make setup.py cythonize; a .so or .pyc is this machine's build
    assert [n for n in files if n.endswith((".pyx", ".so", ".pyc", ".o")) and not n.endswith(".bpf.o")] == []

    bpf_object = files["tapio/_fast/tapio.bpf.o"]
    assert bpf_object == (ROOT / "tapio" / "_fast" / "tapio.bpf.o").read_bytes()
    assert bpf_object[:4] == b"\x7fELF" and int.from_bytes(bpf_object[18:20], "little") == EM_BPF

    for proto in (ROOT / "proto" / "tapio" / "v1").glob("*.proto"):
        stem = proto.stem
        assert f"proto/tapio/v1/{proto.name}" in files
        for generated in (f"{stem}_pb2.py", f"{stem}_pb2_grpc.py", f"{stem}_pb2.pyi"):
            assert f"tapio/v1/{generated}" in files, generated
    # the C includes the shared event header; the BPF programs ship with their source
    for source in sorted((ROOT / "bpf").glob("*.h")) + sorted((ROOT / "bpf").glob("*.bpf.c")):
        assert f"bpf/{source.name}" in files


def _build_output(rel):
    """This machine's build outputs and the Cython sources: what the sdist must not carry."""
    name = rel.rsplit("/", 1)[-1]
    return ("__pycache__" in rel.split("/") or name.endswith((".so", ".pyc", ".pyx", ".pxi"))
            or rel.startswith("tapio/_fast/") and name.endswith(".html"))


def test_sdist_leaves_no_file_of_the_package_behind(sdist):
    """Every file the package has in the checkout (code, data, the dashboard's static files) is
    in the sdist."""
    files = sdist_files(sdist)
    in_checkout = (p.relative_to(ROOT).as_posix() for p in (ROOT / "tapio").rglob("*") if p.is_file())
    assert [rel for rel in in_checkout if not _build_output(rel) and rel not in files] == []


def test_sdist_builds_and_installs_offline_with_only_gcc(sdist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([base_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # The runtime dependencies, installed the way this host installs packages (its index or
    # mirror): the venv an operator has before installing Tapio.
    deps = subprocess.run([python, "-m", "pip", "install", "-q", "--no-compile", "-r",
                           str(ROOT / "requirements" / "runtime.txt"), *backend_pins()],
                          capture_output=True, text=True, timeout=600)
    assert deps.returncode == 0, deps.stderr[-3000:]
    absent = subprocess.run([python, "-I", "-c", "import importlib.util as u; "
                             "print([m for m in ('Cython', 'grpc_tools') if u.find_spec(m)])"],
                            capture_output=True, text=True, check=True)
    assert absent.stdout.strip() == "[]"

    env = {"PATH": str(toolchain_bin(tmp_path / "toolchain")), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "LANG": "C.UTF-8", "PIP_NO_INDEX": "1",
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run([*offline_argv(), python, "-m", "pip", "install", "--no-index",
                              "--no-build-isolation", str(sdist)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, f"{install.stdout[-3000:]}\n{install.stderr[-3000:]}"

    # it runs from the venv, not from this checkout, with the BPF object the sdist carried
    where = subprocess.run([python, "-I", "-c", "import tapio, tapio._fast.kernel as k; "
                            "print(tapio.__file__); print(k.DEFAULT_OBJECT)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    package, bpf_object = where.stdout.split()
    assert package.startswith(str(venv)) and bpf_object.startswith(str(venv))
    assert Path(bpf_object).read_bytes() == (ROOT / "tapio" / "_fast" / "tapio.bpf.o").read_bytes()
    assert list(Path(bpf_object).parent.glob("*.c")) == []   # the C was for building only
    for program in ("tapio-collector", "tapio-server"):
        version = subprocess.run([str(venv / "bin" / program), "--version"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"{program} {tapio.__version__}", version.stderr
