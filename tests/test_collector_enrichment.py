"""Enrichment through a real collector: real cgroups, a real Kubernetes API client against a
test API server, real processes that started before the collector, real kernel events."""
import os
import subprocess
import uuid

import pytest

from tests.fixtures.enrich.apiserver import FakeApiServer, make_pod, write_kubeconfig
from tests.fixtures.enrich.cgroups import CgroupTree, require_cgroup_root
from tests.helpers import CollectorProcess, require_ebpf, wait_until
from tests.test_enrich_context import (BURSTABLE_CONTAINER, DOCKER_CONTAINER, ID_DOCKER, ID_POD,
                                       SERVICE, UID_BURSTABLE)

pytestmark = pytest.mark.kernel


@pytest.fixture
def tree():
    require_ebpf()
    tree = CgroupTree(require_cgroup_root())
    try:
        for leaf in (BURSTABLE_CONTAINER, DOCKER_CONTAINER, SERVICE):
            tree.mkdir(leaf)
        yield tree
    finally:
        tree.cleanup()


def run_in(tree, leaf, tmp_path, code=0):
    """A uniquely named program exec'd inside the cgroup; returns its path."""
    script = tmp_path / f"tapio-enrich-{uuid.uuid4().hex[:8]}"
    script.write_text(f"#!/bin/sh\nexit {code}\n")
    script.chmod(0o755)
    procs = os.path.join(tree.directory(leaf), "cgroup.procs")
    subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec "$0"', str(script)], check=False, timeout=30)
    return str(script)


def events_of(collector, filename, what):
    execs = collector.wait_for(lambda e: e["type"] == "exec" and e["exec"]["filename"] == filename, what=what)
    pid = execs[0]["pid"]
    exits = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == pid, what=what + " (exit)")
    return execs[0], exits[0]


def test_events_carry_pod_container_runtime_and_unit(tree, tmp_path):
    collector = CollectorProcess(tmp_path / "events.jsonl", ["--events", "exec,exit"])
    try:
        collector.wait_attached()
        expected = {
            BURSTABLE_CONTAINER: {"container_id": ID_POD, "container_runtime": "containerd",
                                  "pod_uid": UID_BURSTABLE, "qos_class": "Burstable"},
            DOCKER_CONTAINER: {"container_id": ID_DOCKER, "container_runtime": "docker"},
            SERVICE: {"systemd_unit": "tapio-enrich-test.service"},
        }
        for leaf, fields in expected.items():
            exec_, exit_ = events_of(collector, run_in(tree, leaf, tmp_path), f"events from {leaf}")
            for event in (exec_, exit_):
                context = event["context"]
                assert {k: context.get(k) for k in fields} == fields, leaf
                assert context["cgroup_path"] == tree.path(leaf)
                assert event["cgroup_id"] == os.stat(tree.directory(leaf)).st_ino
    finally:
        assert collector.stop() == 0, collector.log()


def test_pod_names_come_from_the_api_and_events_keep_flowing_without_it(tree, tmp_path):
    api = FakeApiServer()
    api.set_pods([make_pod(UID_BURSTABLE, "payment-7d9", "shop", node="node-a",
                           labels={"app": "payment"},
                           containers=[("api", "containerd://" + ID_POD, "registry.local/payment:1.4")])])
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    collector = CollectorProcess(tmp_path / "events.jsonl",
                                 ["--events", "exec,exit", "--enable-k8s", "--kubeconfig", str(kubeconfig),
                                  "--node-name", "node-a"])
    try:
        collector.wait_attached()
        api_was_asked = wait_until(lambda: api.open_watches() >= 1, 15, what="the collector's pod watch")
        assert api_was_asked
        exec_, _ = events_of(collector, run_in(tree, BURSTABLE_CONTAINER, tmp_path), "a pod's events")
        context = exec_["context"]
        assert (context["pod_name"], context["namespace"], context["container_name"], context["image"]) == \
            ("payment-7d9", "shop", "api", "registry.local/payment:1.4")
        assert context["labels"] == {"app": "payment"}

        api.stop()                                                  # the API goes away...
        exec_, exit_ = events_of(collector, run_in(tree, BURSTABLE_CONTAINER, tmp_path, code=4),
                                 "events after the API went away")
        assert exit_["exit"]["exit_code"] == 4                      # ...events keep flowing
        assert exec_["context"]["pod_uid"] == UID_BURSTABLE
    finally:
        assert collector.stop() == 0, collector.log()
        api.stop()


def test_processes_from_before_the_collector_have_a_parent_chain(ebpf, tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # sh waits on the fifo: it exists before the collector starts, and exits after
    early = subprocess.Popen(["sh", "-c", f'read x < {gate}; exit 7'])
    collector = CollectorProcess(tmp_path / "events.jsonl", ["--events", "exec,exit"])
    try:
        collector.wait_attached()
        with open(gate, "w") as f:
            f.write("go\n")
        assert early.wait(10) == 7
        exit_ = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == early.pid,
                                   what="the early process's exit")[0]
        process = exit_["process"]
        assert process["ancestors"][0] == os.getpid()
        assert process["ancestors"][-1] == 1
        assert process["executable"].endswith("sh") or "dash" in process["executable"]
        assert "read x" in process["command_line"]
    finally:
        early.kill()
        early.wait()
        assert collector.stop() == 0, collector.log()
