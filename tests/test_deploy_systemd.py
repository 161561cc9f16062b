"""deploy/systemd: the units for hosts without Kubernetes. Their command lines and Environment=
defaults parse with our CLIs, they confine the programs (a dynamic user, ProtectSystem=strict, the
collector's capabilities and no others, the server with none), they restart on failure, and
`systemd-analyze verify` finds nothing to say about them (where systemd-analyze is installed).
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tapio.collector.cli import build_parser as collector_parser
from tapio.server.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALL_PREFIX = "/opt/tapio/current"      # what install.sh replaces with its --prefix


def parse_unit(path):
    """{section: [(key, value), ...]} of a unit file, repeated keys kept in order."""
    sections, current = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: continued lines are not used here"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot read {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit, section, key):
    return [v for k, v in unit[section] if k == key]


def one(unit, section, key):
    (value,) = values(unit, section, key)
    return value


def environment(unit):
    """The Environment= assignments, in order."""
    env = {}
    for line in values(unit, "Service", "Environment"):
        for item in shlex.split(line):
            name, _, value = item.partition("=")
            env[name] = value
    return env


COLLECTOR = parse_unit(UNITS / "tapio-collector.service")
SERVER = parse_unit(UNITS / "tapio-server.service")


def parse_exec_start(unit, parser, monkeypatch):
    """ExecStart= through our CLI's parser, with the unit's Environment= as the environment."""
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    for name in [n for n in os.environ if n.startswith("TAPIO_")]:
        monkeypatch.delenv(name)
    for name, value in environment(unit).items():
        monkeypatch.setenv(name, value)
    return argv[0], parser().parse_args(argv[1:])


def test_collector_unit_runs_the_collector_as_the_original(monkeypatch):
    program, args = parse_exec_start(COLLECTOR, collector_parser, monkeypatch)
    assert program == f"{INSTALL_PREFIX}/bin/tapio-collector"
    assert args.enable_ebpf and args.server == ["127.0.0.1:9090"]
    assert args.correlation == "semantic" and args.buffer_size == 2000
    assert args.spool_dir.startswith(f"/var/lib/{one(COLLECTOR, 'Service', 'StateDirectory')}/")
    assert args.http_host == "127.0.0.1" and args.http_port == 9091


def test_server_unit_runs_the_server(monkeypatch):
    program, args = parse_exec_start(SERVER, server_parser, monkeypatch)
    assert program == f"{INSTALL_PREFIX}/bin/tapio-server"
    assert args.grpc_port == 9090 and args.http_port == 8080
    assert args.db.startswith(f"/var/lib/{one(SERVER, 'Service', 'StateDirectory')}/")


def test_settings_come_from_an_environment_file_that_may_be_absent():
    for unit, name in ((COLLECTOR, "collector"), (SERVER, "server")):
        assert values(unit, "Service", "EnvironmentFile") == [f"-/etc/tapio/{name}.env"]
        # it comes after the defaults, so that its settings win
        keys = [k for k, _ in unit["Service"]]
        defaults = [i for i, k in enumerate(keys) if k == "Environment"]
        assert keys.index("EnvironmentFile") > max(defaults, default=-1)


@pytest.mark.parametrize("unit", [COLLECTOR, SERVER], ids=["collector", "server"])
def test_units_confine_and_restart(unit):
    service = dict(unit["Service"])
    assert service["DynamicUser"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure" and service["RestartSec"]
    assert service["StateDirectory"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit, "Unit", "After")


def test_collector_has_the_daemonsets_capabilities_and_the_server_none():
    manifest = ROOT / "deploy" / "kubernetes" / "base" / "collector-daemonset.yaml"
    daemonset = yaml.safe_load(manifest.read_text())
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    wanted = ["CAP_" + c for c in container["securityContext"]["capabilities"]["add"]]
    assert one(COLLECTOR, "Service", "AmbientCapabilities").split() == wanted
    assert one(COLLECTOR, "Service", "CapabilityBoundingSet").split() == wanted
    assert one(COLLECTOR, "Service", "LimitMEMLOCK") == "infinity"
    assert one(SERVER, "Service", "AmbientCapabilities") == ""
    assert one(SERVER, "Service", "CapabilityBoundingSet") == ""


def test_capability_names_are_known_to_linux():
    header = Path("/usr/include/linux/capability.h")
    if not header.exists():
        pytest.skip("no /usr/include/linux/capability.h (linux-libc-dev) to check the names against")
    text = header.read_text()
    for name in one(COLLECTOR, "Service", "AmbientCapabilities").split():
        assert f"#define {name} " in text or f"#define {name}\t" in text, name


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units were parsed and checked, not verified")
    # verify checks that ExecStart= is executable: point the units at this venv's programs
    venv = str(Path(sys.executable).parent.parent)
    for unit in UNITS.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALL_PREFIX, venv))
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 2
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and values it ignores: any word from it is a finding
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
