"""deploy/kubernetes through the real `kubectl`: `kubectl apply --dry-run=client -k` of both
kustomizations, against a kubeconfig that points at the tests' API server (tests/fixtures/enrich/
apiserver.py) serving discovery for every kind the `kubernetes` client knows. kubectl builds the
kustomization, decodes every document, maps each kind to its resource through discovery (an
unknown kind or apiVersion fails here), asks for the live object (none: each is "created") and
prints what it would send. The DaemonSet kubectl renders then grants exactly what the README says
the collector needs.

`--validate=false`: kubectl's schema validation downloads the server's OpenAPI document, which
only a real API server has (no copy of it ships with kubectl or the client); the schema check is
done by tests/test_deploy_kubernetes.py against the client's models, field by field.
"""
import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes.client as k8s
import pytest
import yaml

from tests.fixtures.enrich.apiserver import FakeApiServer, write_kubeconfig

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
README = ROOT / "README.md"
REQUIRE_CONTAINERS = os.environ.get("TAPIO_REQUIRE_CONTAINERS") == "1"

_CREATE = re.compile(r"_create_(namespaced_)?(\w+)_serialize\(")
_PATH = re.compile(r"method='POST',\s*resource_path='(/apis?/[^']+)'")


def discovery():
    """{group/version: [APIResource]} from the `create_*` calls of the client's API modules."""
    import kubernetes.client.api as apis
    out = {}
    for module in sorted(Path(apis.__file__).parent.glob("*_api.py")):
        for method in module.read_text().split("\n    def ")[1:]:
            m = _CREATE.match(method)
            found = m and _PATH.search(method)
            if not found:
                continue
            namespaced, snake, path = bool(m[1]), m[2], found[1]
            parts = path.strip("/").split("/")
            if parts[0] == "api":
                group_version, rest = parts[1], parts[2:]
            else:
                group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
            if namespaced:
                if rest[:2] != ["namespaces", "{namespace}"]:
                    continue
                rest = rest[2:]
            if len(rest) != 1:          # subresources (bindings, evictions, tokens) are not kinds
                continue
            kind = "".join(w.capitalize() for w in snake.split("_"))
            version = group_version.rpartition("/")[2]
            if not hasattr(k8s, version.capitalize() + kind):
                continue
            out.setdefault(group_version, []).append({
                "name": rest[0], "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
    return out


class DiscoveryApiServer(FakeApiServer):
    """The pod API server of the enrichment tests, plus legacy discovery; every object is absent."""

    def __init__(self):
        self.resources = discovery()
        super().__init__()

    def _handle(self, request):
        path = request.path.split("?")[0].rstrip("/")
        with self._lock:
            self.requests.append((path, {}))
        groups = {}
        for gv in self.resources:
            if "/" in gv:
                group, version = gv.split("/")
                groups.setdefault(group, []).append({"groupVersion": gv, "version": version})
        if path == "/api":
            body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        elif path == "/apis":
            body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in sorted(groups.items())]}
        elif path.startswith(("/api/", "/apis/")) and path.split("/", 2)[2] in self.resources:
            gv = path.split("/", 2)[2]
            body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": self.resources[gv]}
        else:
            self._send_json(request, 404, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                           "status": "Failure", "reason": "NotFound", "code": 404,
                                           "message": f"{path} not found"})
            return
        self._send_json(request, 200, body)


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    binary = shutil.which("kubectl")
    if binary is None:
        why = "no kubectl on PATH (Debian: apt-get install kubernetes-client; ./build.sh test does)"
        if REQUIRE_CONTAINERS:
            pytest.fail(f"TAPIO_REQUIRE_CONTAINERS=1 but {why}")
        pytest.skip(why)
    server = DiscoveryApiServer()
    config = write_kubeconfig(tmp_path_factory.mktemp("kubectl") / "kubeconfig", server.url)

    def run(*args):
        try:
            done = subprocess.run([binary, "--kubeconfig", str(config), *args], capture_output=True,
                                  text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kubectl {' '.join(args)} did not finish in 120 s")
        return done
    yield run
    server.stop()


def dry_run(kubectl, directory):
    done = kubectl("apply", "--dry-run=client", "--validate=false", "-k", str(directory), "-o", "json")
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    return rendered["items"] if rendered.get("kind") == "List" else [rendered]


def kustomized(kubectl, directory):
    done = kubectl("kustomize", str(directory))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("variant", ["", "privileged"])
def test_kubectl_accepts_every_manifest(kubectl, variant):
    directory = KUBE / variant if variant else KUBE
    objects = dry_run(kubectl, directory)
    expected = {(d["kind"], d["metadata"]["name"]) for d in kustomized(kubectl, directory)}
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == expected
    assert {"DaemonSet", "Deployment", "Service", "Namespace"} <= {o["kind"] for o in objects}


def test_kubectl_refuses_a_kind_the_api_does_not_have(kubectl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: DaemonSett\nmetadata: {name: x, namespace: tapio-system}\n")
    done = kubectl("apply", "--dry-run=client", "--validate=false", "-f", str(bad))
    assert done.returncode != 0 and "DaemonSett" in done.stderr


def readme_capabilities():
    """The capabilities the README's "Deploying" section names as what the collector needs, and
    the list it gives for the DaemonSet."""
    text = README.read_text()
    needs = text[text.index("What the collector needs from a node"):text.index("### Kubernetes")]
    named = set(re.findall(r"`CAP_([A-Z_]+)`", needs))
    (listed,) = re.findall(r"with only\s+`([A-Z_ ]+)` \(all others dropped\)", text)
    return named, set(listed.split())


def test_the_daemonset_grants_what_the_readme_says_and_no_more(kubectl):
    objects = dry_run(kubectl, KUBE)
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet"]
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    named, listed = readme_capabilities()
    assert set(security["capabilities"]["add"]) == listed == named
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True and security["runAsUser"] == 0
    assert spec["hostPID"] is True and not spec.get("hostNetwork") and not spec.get("hostIPC")
    # the node's paths the README names, read-only; the spool is the one writable host path
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = {volumes[m["name"]]["hostPath"]["path"]: m.get("readOnly", False)
                   for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]}
    assert host_mounts == {"/sys/kernel/btf": True, "/sys/fs/cgroup": True, "/sys/kernel/tracing": True,
                           "/var/lib/tapio-collector": False}
    # the privileged variant is the same collector, privileged, for kernels without CAP_BPF
    (privileged,) = [o for o in dry_run(kubectl, KUBE / "privileged") if o["kind"] == "DaemonSet"]
    (pcontainer,) = privileged["spec"]["template"]["spec"]["containers"]
    assert pcontainer["securityContext"]["privileged"] is True
    assert pcontainer["args"] == container["args"]


def test_kubectl_accepts_the_secrets_and_the_workloads_mount_what_their_flags_read(kubectl, tmp_path):
    """make-secrets.sh for real, its secrets.yaml through `kubectl apply --dry-run=client`, and
    the rendered workloads: every --tls-*/--auth-token-file path is a key of a Secret that
    secrets.yaml holds, mounted where the flag looks; the server's token file has the three
    roles, the collectors' holds their token alone."""
    made = subprocess.run([str(KUBE / "make-secrets.sh"), str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    done = kubectl("apply", "--dry-run=client", "--validate=false", "-f", str(tmp_path / "s" / "secrets.yaml"),
                   "-o", "json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    secrets = {o["metadata"]["name"]: o for o in (listed["items"] if listed.get("kind") == "List" else [listed])}
    assert set(secrets) == {"tapio-server-tls", "tapio-collector-tls", "tapio-server-tokens",
                            "tapio-collector-token"}
    assert all(o["kind"] == "Secret" and o["metadata"]["namespace"] == "tapio-system" for o in secrets.values())
    files = {}
    for workload in dry_run(kubectl, KUBE):
        if workload["kind"] not in ("DaemonSet", "Deployment"):
            continue
        spec = workload["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounted = {}
        for mount in c["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret:
                for key, data in secrets[secret["secretName"]]["data"].items():
                    mounted[f"{mount['mountPath']}/{key}"] = base64.b64decode(data)
        for arg in c["args"]:
            key, _, value = arg.partition("=")
            if key in ("--tls-cert", "--tls-key", "--tls-ca", "--tls-client-ca", "--auth-token-file"):
                assert value in mounted, f"{workload['metadata']['name']} {arg}: no such secret file"
                files[workload["kind"], key] = mounted[value]
    server_lines = [line.split() for line in files["Deployment", "--auth-token-file"].decode().splitlines()
                    if line and not line.startswith("#")]
    assert sorted(fields[1] for fields in server_lines) == ["admin", "collector", "reader"]
    (collector_line,) = [fields for fields in server_lines if fields[1] == "collector"]
    assert files["DaemonSet", "--auth-token-file"].decode().split() == [collector_line[0]]
