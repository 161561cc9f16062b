"""`./build.sh bundle`: one tarball for air-gapped hosts. Unpacked in a temporary directory, its
install.sh installs it with pip kept off the network (a network namespace of its own where the
host allows one, `--no-index`, PIP_NO_INDEX=1, no pip configuration), and the installed
tapio-collector and tapio-server run: --version, the server's HTTP surface and dashboard, and
(with eBPF) the installed collector streaming real kernel events to the installed server.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

import tapio
from tests.helpers import ManagedProcess, free_port, http_get, read_json_lines, wait_until
from tests.test_sdist import ROOT, backend_pins, base_python, offline_argv, offline_env, run_build

pytestmark = pytest.mark.timeout(900)   # a bundle, then a venv and a compile of the C core

PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")
BUNDLE = f"tapio-bundle-{tapio.__version__}-{PYTHON_TAG}-{PLATFORM}"


def program_env():
    """This environment without traces of the test venv: the installed programs run on their own.
    (Not offline_env(): its dead proxies would catch gRPC's connections too.)"""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def kernel_can_run_the_collector():
    release = os.uname().release.split("-")[0].split(".")
    return os.path.exists("/sys/kernel/btf/vmlinux") and (int(release[0]), int(release[1])) >= (5, 8)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(the tarball, the directory it unpacks to)."""
    where = tmp_path_factory.mktemp("bundle")
    tarball = run_build("bundle", str(where))
    assert tarball == where / f"{BUNDLE}.tar.gz"
    with tarfile.open(tarball) as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {BUNDLE}
        tar.extractall(where, filter="data")
    return tarball, where / BUNDLE


def install(bundle_dir, prefix, *flags, env=None, timeout=600):
    return subprocess.run([*offline_argv(), str(bundle_dir / "install.sh"), "--prefix", str(prefix),
                           "--python", base_python(), *flags],
                          cwd=bundle_dir.parent, env=env or offline_env(), capture_output=True,
                          text=True, timeout=timeout)


class Installed:
    def __init__(self, prefix, units, result):
        self.prefix, self.units, self.result = prefix, units, result
        self.bin = prefix / "current" / "bin"


@pytest.fixture(scope="module")
def installed(bundle, tmp_path_factory):
    base = tmp_path_factory.mktemp("host")
    prefix, units = base / "opt" / "tapio", base / "systemd"
    result = install(bundle[1], prefix, "--systemd-dir", str(units))
    return Installed(prefix, units, result)


def test_bundle_holds_the_sdist_wheels_for_this_python_the_bpf_object_and_install_sh(bundle):
    _, top = bundle
    info = dict(line.split("=", 1) for line in (top / "BUNDLE-INFO").read_text().split())
    assert info == {"version": tapio.__version__, "python": PYTHON_TAG, "platform": PLATFORM}
    assert (top / "sdist" / f"tapio-{tapio.__version__}.tar.gz").is_file()
    checkout_object = (ROOT / "tapio" / "_fast" / "tapio.bpf.o").read_bytes()
    assert (top / "bpf" / "tapio.bpf.o").read_bytes() == checkout_object
    assert os.access(top / "install.sh", os.X_OK)
    assert (top / "install.sh").read_bytes() == (ROOT / "deploy" / "bundle" / "install.sh").read_bytes()
    for unit in ("tapio-collector.service", "tapio-server.service"):
        assert (top / "systemd" / unit).read_bytes() == (ROOT / "deploy" / "systemd" / unit).read_bytes()

    # a wheel of every pinned requirement, at its pin, installable by this interpreter
    wheels = {}
    here = set(sys_tags())
    for wheel in (top / "wheels").glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        assert tags & here, f"{wheel.name} is not for this Python and platform"
        wheels[name] = str(version)
    runtime = (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in runtime] + backend_pins()
    for pin in filter(None, pins):
        name, _, version = pin.partition("==")
        assert wheels.get(canonicalize_name(name)) == (version or wheels.get(canonicalize_name(name))), pin

    # what install.sh checks first: nothing changed on the way
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=top, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split(None, 1)[1] for line in (top / "SHA256SUMS").read_text().splitlines()}
    files = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    assert listed == files - {"SHA256SUMS"}


def test_install_offline_then_both_programs_report_their_version(installed):
    result = installed.result
    expected = 0 if kernel_can_run_the_collector() else 1
    assert result.returncode == expected, f"{result.stdout}\n{result.stderr[-4000:]}"
    assert "Kernel check" in result.stdout
    assert os.readlink(installed.prefix / "current") == tapio.__version__
    for program in ("tapio-collector", "tapio-server"):
        version = subprocess.run([str(installed.bin / program), "--version"], cwd=installed.prefix,
                                 env=program_env(), capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"{program} {tapio.__version__}", version.stderr
    # the programs run from the prefix, not from this checkout, with no build tools in the venv
    where = subprocess.run([str(installed.bin / "python"), "-I", "-c",
                            "import importlib.util as u, tapio._fast.kernel as k; print(k.__file__); "
                            "print([m for m in ('Cython', 'grpc_tools') if u.find_spec(m)])"],
                           cwd=installed.prefix, capture_output=True, text=True, timeout=60)
    module, build_tools = where.stdout.splitlines()
    assert os.path.realpath(module).startswith(str(installed.prefix / tapio.__version__) + "/")
    assert build_tools == "[]"


def test_install_writes_systemd_units_that_start_this_install(installed):
    for unit in ("tapio-collector", "tapio-server"):
        text = (installed.units / f"{unit}.service").read_text()
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_start.split("=", 1)[1].split()[0] == str(installed.bin / unit)
        assert "/opt/tapio/" not in text.replace(str(installed.prefix), "")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the installed units were checked, not verified")
    verify = subprocess.run([analyze, "verify", *sorted(str(p) for p in installed.units.glob("*.service"))],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr


def test_installed_server_serves_health_and_the_dashboard(installed, tmp_path):
    http = free_port()
    server = ManagedProcess([str(installed.bin / "tapio-server"), "--host", "127.0.0.1",
                             "--grpc-port", str(free_port()), "--http-port", str(http)],
                            str(tmp_path / "server.log"), env=program_env())
    try:
        server.wait_log("Dashboard on")
        status, _, body = http_get(f"http://127.0.0.1:{http}/healthz")
        assert status == 200, body
        status, headers, body = http_get(f"http://127.0.0.1:{http}/")
        assert status == 200 and "text/html" in headers.get("content-type", "").lower(), body[:200]
    finally:
        assert server.stop() == 0, server.log()


def test_installed_collector_streams_kernel_events_to_the_installed_server(ebpf, installed, tmp_path):
    port = free_port()
    events = tmp_path / "events.jsonl"
    server = ManagedProcess([str(installed.bin / "tapio-server"), "--host", "127.0.0.1",
                             "--grpc-port", str(port), "--http-port", "0", "--events-out", str(events)],
                            str(tmp_path / "server.log"), env=program_env())
    collector = None
    try:
        server.wait_log("Tapio server listening")
        collector = ManagedProcess([str(installed.bin / "tapio-collector"), "--enable-ebpf",
                                    "--server", f"127.0.0.1:{port}", "--correlation", "raw",
                                    "--flush-interval", "50ms", "--http-port", "0"],
                                   str(tmp_path / "collector.log"), env=program_env())
        collector.wait_log("eBPF probes attached")
        marker = f"tapio-bundle-{os.getpid()}"

        def arrived():
            subprocess.run(["/bin/sh", "-c", ":", marker], check=True)
            return [e for e in read_json_lines(events)
                    if e["type"] == "exec" and marker in e["exec"]["args"]]
        wait_until(arrived, timeout=20, interval=0.5, what="an exec seen by the installed collector")
    finally:
        if collector is not None:
            assert collector.stop() == 0, collector.log()
        server.stop()


def test_damaged_bundle_is_refused_before_anything_changes(bundle, tmp_path):
    copy = tmp_path / BUNDLE
    shutil.copytree(bundle[1], copy, symlinks=True)
    wheel = next((copy / "wheels").glob("grpcio-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    result = install(copy, tmp_path / "opt", timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "damaged" in result.stderr and wheel.name in result.stderr
    assert not (tmp_path / "opt").exists()


def test_missing_build_tools_are_listed_before_anything_changes(bundle, tmp_path):
    """A host without a C compiler and pkg-config: both are named, with the packages that bring
    them, and nothing is installed."""
    compilers = {(sysconfig.get_config_var("CC") or "gcc").split()[0], "gcc", "cc", "c89", "c99"}
    path = tmp_path / "bin"
    path.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else ():
            name = tool.name
            if (name in compilers or "gcc" in name or "clang" in name or "pkg-config" in name
                    or name.startswith("pkgconf") or (path / name).exists()):
                continue
            (path / name).symlink_to(tool)
    result = install(bundle[1], tmp_path / "opt", env=offline_env(PATH=str(path)), timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "a C compiler" in result.stderr and "pkg-config" in result.stderr
    assert "nothing was changed" in result.stderr
    assert not (tmp_path / "opt").exists()


def test_the_same_version_is_not_installed_twice_without_reinstall(bundle, installed):
    result = install(bundle[1], installed.prefix, "--no-kernel-check", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--reinstall" in result.stderr
    assert os.readlink(installed.prefix / "current") == tapio.__version__


def test_kernel_report_alone(bundle):
    result = subprocess.run([str(bundle[1] / "install.sh"), "--check-kernel"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == (0 if kernel_can_run_the_collector() else 1), result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Kernel check")
    assert any(line.split()[:1] == ["ok"] and "BTF" in line for line in lines) == \
        os.path.exists("/sys/kernel/btf/vmlinux")
    assert lines[-1].startswith("This kernel can" if result.returncode == 0 else "This kernel cannot")
