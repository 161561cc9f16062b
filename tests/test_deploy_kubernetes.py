"""deploy/kubernetes: every manifest is a valid object of the Kubernetes API (checked strictly
against the models of the `kubernetes` client: no unknown field, no field of the wrong type, no
required field missing, namespaced kinds in the namespace and cluster-wide kinds not), the
containers' flags parse with our CLIs, the pieces fit together (selectors, ports, probes,
mounts, secrets, RBAC, the network policy), and the secrets that make-secrets.sh makes work: the
server's token file holds a collector, a reader and an admin token (read by tapio-server's own
parser), the collectors get only theirs, and the real server and collector, run with the
manifests' own flags, talk over mutual TLS with the collector token while only the reader and
admin tokens read events back.
"""
import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes.client as k8s
import pytest
import yaml

import tapio
from tapio.collector.cli import build_parser as collector_parser
from tapio.server.auth import read_tokens
from tapio.server.cli import build_parser as server_parser
from tests.helpers import ManagedProcess, free_port, http_get, read_json_lines, wait_until

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
NAMESPACE = "tapio-system"
ORIGINAL_COLLECTOR_ARGS = ["--server=tapio-server.tapio-system:9090", "--enable-ebpf",
                           "--correlation=semantic", "--buffer-size=2000"]


# --- strict validation against the client's models ---------------------------------------------

class Invalid(AssertionError):
    pass


_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str,
               "bytes": str}      # base64 text in a manifest


def build_model(type_name, value, path):
    """`value` (parsed YAML) as an instance of the client's `type_name`, or Invalid naming the
    first field that is unknown, of the wrong type, or missing though required."""
    if value is None:
        raise Invalid(f"{path}: null")
    if m := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            raise Invalid(f"{path}: a list was expected, not {value!r}")
        return [build_model(m[1], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Invalid(f"{path}: a map with string keys was expected, not {value!r}")
        return {k: build_model(m[1] or m[2], v, f"{path}.{k}") for k, v in value.items()}
    if type_name in _PRIMITIVES:
        if isinstance(value, bool) != (type_name == "bool") or not isinstance(value, _PRIMITIVES[type_name]):
            raise Invalid(f"{path}: {type_name} was expected, not {value!r}")
        return value
    if type_name == "object":      # IntOrString and free-form fields
        return value
    cls = getattr(k8s, type_name)
    if not isinstance(value, dict):
        raise Invalid(f"{path}: a {type_name} object was expected, not {value!r}")
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_json:
            raise Invalid(f"{path}.{key}: {type_name} has no field {key!r}")
        kwargs[by_json[key]] = build_model(cls.openapi_types[by_json[key]], item, f"{path}.{key}")
    try:
        return cls(**kwargs)        # the client's own checks: required fields, enumerations
    except ValueError as e:
        raise Invalid(f"{path}: {e}") from None


def _snake(kind):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def validate(doc, where):
    """The model instance of one manifest; Invalid if it is not a valid object."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group, _, version = api_version.rpartition("/")
    api_name = ("".join(p.capitalize() for p in group.removesuffix(".k8s.io").split(".")) if group
                else "Core") + version.capitalize() + "Api"
    api = getattr(k8s, api_name, None)
    cls_name = version.capitalize() + kind
    if api is None or not hasattr(k8s, cls_name):
        raise Invalid(f"{where}: {api_version} {kind} is not a kind of the Kubernetes API")
    namespaced = hasattr(api, f"create_namespaced_{_snake(kind)}")
    if not namespaced and not hasattr(api, f"create_{_snake(kind)}"):
        raise Invalid(f"{where}: {api_version} has no kind {kind}")
    model = build_model(cls_name, doc, f"{where} {kind}")
    namespace = doc["metadata"].get("namespace")
    if namespaced and namespace != NAMESPACE:
        raise Invalid(f"{where}: {kind} {doc['metadata']['name']} belongs in {NAMESPACE}, not {namespace}")
    if not namespaced and namespace is not None:
        raise Invalid(f"{where}: {kind} is cluster-wide: it takes no namespace")
    return model


def test_the_validator_refuses_what_the_api_server_would():
    meta = {"name": "a", "namespace": NAMESPACE}
    good = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    validate(good, "good")
    bad = {
        "an unknown field": {**good, "automountToken": False},
        "a wrong type": {**good, "automountServiceAccountToken": "no"},
        "a missing required field": {"apiVersion": "apps/v1", "kind": "DaemonSet",
                                     "metadata": meta, "spec": {"template": {}}},
        "a kind of another group": {**good, "apiVersion": "apps/v1"},
        "a namespace on a cluster-wide kind": {"apiVersion": "rbac.authorization.k8s.io/v1",
                                               "kind": "ClusterRole",
                                               "metadata": meta},
        "a nested typo": {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                          "spec": {"ports": [{"port": 1, "targetPortt": 2}]}},
        "an integer quantity": {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 1}}}]}},
    }
    for case, doc in bad.items():
        with pytest.raises(Invalid):
            validate(doc, case)


# --- the manifests ------------------------------------------------------------------------------

def load_base():
    kustomization = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUBE / "base" / resource).read_text()):
            if doc is not None:
                docs.append((resource, doc))
    return kustomization, docs


KUSTOMIZATION, DOCS = load_base()


def find(kind, name):
    (doc,) = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(workload, name):
    (c,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def flag(args, name):
    """The value of --name=value in a list of args (None if absent)."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key == name:
            return value
    return None


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and \
        set(selector) <= {"matchLabels"}


COLLECTOR = find("DaemonSet", "tapio-collector")
SERVER = find("Deployment", "tapio-server")


def test_the_kustomization_lists_every_manifest_and_only_those():
    listed = set(KUSTOMIZATION["resources"])
    assert listed == {p.name for p in (KUBE / "base").glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("resource,doc", DOCS,
                         ids=[f"{r}:{d['kind']}/{d['metadata']['name']}" for r, d in DOCS])
def test_every_manifest_is_a_valid_object(resource, doc):
    validate(doc, resource)
    assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "tapio"


def test_namespace_allows_what_the_collector_needs():
    namespace = find("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def by_kind_and_name(doc):
    return doc["kind"], doc["metadata"]["name"]


def _kustomize(directory):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed: the overlays were not rendered")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_renders_the_manifests_as_they_are():
    rendered = _kustomize(KUBE)
    assert sorted(rendered, key=by_kind_and_name) == sorted((d for _, d in DOCS), key=by_kind_and_name)


def test_privileged_variant_for_old_kernels():
    rendered = _kustomize(KUBE / "privileged")
    for doc in rendered:
        validate(doc, "privileged")
    (daemonset,) = [d for d in rendered if d["kind"] == "DaemonSet"]
    security = container(daemonset, "collector")["securityContext"]
    assert security["privileged"] is True and security["allowPrivilegeEscalation"] is True
    assert "capabilities" not in security
    # everything else is the base, unchanged
    def others(docs):
        return sorted((d for d in docs if d["kind"] != "DaemonSet"), key=by_kind_and_name)
    assert others(rendered) == others(d for _, d in DOCS)
    base = container(COLLECTOR, "collector")
    assert container(daemonset, "collector")["args"] == base["args"]


# --- what each piece must be --------------------------------------------------------------------

def test_collector_daemonset_as_the_original_with_capabilities_instead_of_privileged():
    spec = COLLECTOR["spec"]["template"]["spec"]
    c = container(COLLECTOR, "collector")
    assert c["args"][:4] == ORIGINAL_COLLECTOR_ARGS
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}
    assert spec["hostPID"] is True and spec["serviceAccountName"] == "tapio-collector"
    assert c["image"] == f"tapio/collector:{tapio.__version__}"
    security = c["securityContext"]
    assert not security.get("privileged")
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_RESOURCE",
                                                                "DAC_READ_SEARCH", "SYS_PTRACE"]}
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert matches(COLLECTOR["spec"]["selector"], COLLECTOR["spec"]["template"]["metadata"]["labels"])
    # the node's name from the downward API
    (node,) = [e for e in c["env"] if e["name"] == "NODE_NAME"]
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_collector_reads_the_host_paths_it_needs_read_only():
    spec = COLLECTOR["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container(COLLECTOR, "collector")["volumeMounts"]}
    for path in ("/sys/kernel/btf", "/sys/fs/cgroup", "/sys/kernel/tracing"):
        mount = mounts[path]
        assert mount.get("readOnly") is True, path
        assert volumes[mount["name"]]["hostPath"]["path"] == path
    # the one writable host path is the spool, where --spool-dir points
    writable = [m for m in mounts.values() if not m.get("readOnly") and "hostPath" in volumes[m["name"]]]
    assert [m["mountPath"] for m in writable] == ["/var/lib/tapio"]
    assert flag(container(COLLECTOR, "collector")["args"], "--spool-dir").startswith("/var/lib/tapio/")


def _probes_on_the_http_port(workload, name, http_port):
    c = container(workload, name)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == http_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def parse_container_flags(parser, c, monkeypatch):
    """The container's args (and TAPIO_* env) through our CLI's parser, as the program would."""
    for name in [n for n in os.environ if n.startswith("TAPIO_")]:
        monkeypatch.delenv(name)
    for env in c.get("env", []):
        monkeypatch.setenv(env["name"], env.get("value", "from-the-downward-api"))
    return parser().parse_args(c.get("args", []))


def test_container_flags_parse_with_our_clis(monkeypatch):
    collector = parse_container_flags(collector_parser, container(COLLECTOR, "collector"), monkeypatch)
    assert collector.server == ["tapio-server.tapio-system:9090"]
    assert collector.enable_ebpf and collector.enable_k8s and collector.correlation == "semantic"
    assert collector.buffer_size == 2000 and collector.http_host == "0.0.0.0"
    _probes_on_the_http_port(COLLECTOR, "collector", collector.http_port)

    server = parse_container_flags(server_parser, container(SERVER, "server"), monkeypatch)
    assert server.host == "0.0.0.0" and server.grpc_port == 9090
    ports = {p["name"]: p["containerPort"] for p in container(SERVER, "server")["ports"]}
    assert ports["grpc"] == server.grpc_port
    _probes_on_the_http_port(SERVER, "server", server.http_port)
    # mutual TLS and a token on both ends
    assert server.tls_cert and server.tls_key and server.tls_client_ca and server.auth_token_file
    assert collector.tls_ca and collector.tls_cert and collector.tls_key and collector.auth_token_file


def test_server_runs_unprivileged():
    pod = SERVER["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "tapio-server"
    security = container(SERVER, "server")["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
    assert container(SERVER, "server")["image"] == f"tapio/server:{tapio.__version__}"


def test_service_reaches_the_server_on_grpc_9090_and_http_8080():
    service = find("Service", "tapio-server")
    server_labels = SERVER["spec"]["template"]["metadata"]["labels"]
    collector_labels = COLLECTOR["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert all(server_labels.get(k) == v for k, v in selector.items())
    assert not all(collector_labels.get(k) == v for k, v in selector.items())
    names = {p["name"]: p["containerPort"] for p in container(SERVER, "server")["ports"]}
    ports = {(p["port"], names[p["targetPort"]]) for p in service["spec"]["ports"]}
    assert ports == {(9090, 9090), (8080, 8080)}
    # what the collectors dial is this Service
    host, port = flag(container(COLLECTOR, "collector")["args"], "--server").rsplit(":", 1)
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}" and int(port) == 9090


def test_network_policy_lets_only_collectors_reach_grpc():
    policy = find("NetworkPolicy", "tapio-server")["spec"]
    server_labels = SERVER["spec"]["template"]["metadata"]["labels"]
    collector_labels = COLLECTOR["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["podSelector"], server_labels) and policy["policyTypes"] == ["Ingress"]
    grpc_rules = []
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "a rule without ports would open every port"
        if 9090 in ports:
            grpc_rules.append(rule)
            # only pods of this namespace that are collectors
            assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"])
            assert all(matches(peer["podSelector"], collector_labels) for peer in rule["from"])
            assert not any(matches(peer["podSelector"], server_labels) for peer in rule["from"])
    assert len(grpc_rules) == 1
    assert any(8080 in {p["port"] for p in r["ports"]} and "from" not in r for r in policy["ingress"])


def test_rbac_lets_the_collector_read_pods_and_nothing_more():
    role = find("ClusterRole", "tapio-collector")
    assert [{**r, "verbs": sorted(r["verbs"])} for r in role["rules"]] == \
        [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = find("ClusterRoleBinding", "tapio-collector")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "tapio-collector"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tapio-collector",
                                    "namespace": NAMESPACE}]
    rbac = [d for _, d in DOCS if d["kind"] in ("RoleBinding", "ClusterRoleBinding", "Role", "ClusterRole")]
    assert len(rbac) == 2
    server_account = find("ServiceAccount", "tapio-server")
    assert server_account["automountServiceAccountToken"] is False


# --- the secrets ---------------------------------------------------------------------------------

def make_secrets(directory, *flags):
    """Run make-secrets.sh on `directory`: {secret name: {key: bytes}} of the secrets.yaml it
    writes, each document checked strictly."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    result = subprocess.run([str(KUBE / "make-secrets.sh"), *flags, str(directory)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    made = {}
    for doc in yaml.safe_load_all((directory / "secrets.yaml").read_text()):
        if doc:
            validate(doc, "secrets.yaml")
            made[doc["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in doc["data"].items()}
    return made


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("secrets")


@pytest.fixture(scope="module")
def secrets(secrets_dir):
    """{secret name: {key: bytes}} made by make-secrets.sh."""
    return make_secrets(secrets_dir)


def mounted_files(workload, name, secrets):
    """{path in the container: bytes} of every file the workload's secret volumes put there."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for mount in container(workload, name)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            secret = volume["secret"]["secretName"]
            assert secret in secrets, f"{secret} is mounted but make-secrets.sh does not make it"
            for key, data in secrets[secret].items():
                files[f"{mount['mountPath']}/{key}"] = data
    return files


def test_every_file_flag_names_a_file_of_a_mounted_secret(secrets):
    for workload, name in ((COLLECTOR, "collector"), (SERVER, "server")):
        files = mounted_files(workload, name, secrets)
        for arg in container(workload, name)["args"]:
            key, _, value = arg.partition("=")
            if key.startswith(("--tls-", "--auth-token")) and key != "--tls-server-name":
                assert value in files, f"{name} {arg}: no such file in its secret volumes"


def token_file(workload, name, secrets):
    """The bytes of the file the container's --auth-token-file names, from its mounted secrets."""
    return mounted_files(workload, name, secrets)[flag(container(workload, name)["args"],
                                                      "--auth-token-file")]


def parsed_tokens(data, tmp_path):
    """[(token, Principal)] of a token file, read by tapio-server's own parser."""
    path = tmp_path / "tokens"
    path.write_bytes(data)
    return [(token.decode(), principal) for token, principal in read_tokens(str(path))]


def test_the_server_gets_every_role_and_the_collectors_only_their_token(secrets, secrets_dir, tmp_path):
    tokens = parsed_tokens(token_file(SERVER, "server", secrets), tmp_path)
    by_role = {principal.role: (token, principal) for token, principal in tokens}
    assert sorted(p.role for _, p in tokens) == ["admin", "collector", "reader"]
    assert not any(p.unscoped for _, p in tokens)        # every line has its role: no warning
    collector_token, collector = by_role["collector"]
    reader_token, reader = by_role["reader"]
    admin_token, _ = by_role["admin"]
    assert len({collector_token, reader_token, admin_token}) == 3
    assert all(len(t) == 64 for t in (collector_token, reader_token, admin_token))
    # the collector token streams as the DaemonSet's ids (<node-name>-collector) and nothing else
    assert collector.collectors == ("*-collector",)
    assert collector.refusal("worker-3-collector") is None
    assert collector.refusal("worker-3") is not None and not collector.may("read")
    assert reader.may("read") and not reader.may("stream") and reader.namespaces == ()
    # collectors mount their token alone: what they send is the collector token, and no file of
    # theirs holds the reader's or the admin's
    assert token_file(COLLECTOR, "collector", secrets).decode().split() == [collector_token]
    collector_files = b"".join(mounted_files(COLLECTOR, "collector", secrets).values())
    assert reader_token.encode() not in collector_files and admin_token.encode() not in collector_files
    # the same tokens are left in the directory, for people and tools
    for role, (token, _) in by_role.items():
        assert (secrets_dir / f"{role}-token").read_text().strip() == token


def test_make_secrets_keeps_tokens_scopes_ids_and_refuses_bad_globs(tmp_path):
    first = make_secrets(tmp_path, "--collector-ids", "node-*-collector,edge-*")
    again = make_secrets(tmp_path)
    assert again["tapio-collector-token"] == first["tapio-collector-token"]
    old = {t: p for t, p in parsed_tokens(first["tapio-server-tokens"]["tokens"], tmp_path)}
    new = {t: p for t, p in parsed_tokens(again["tapio-server-tokens"]["tokens"], tmp_path)}
    assert old.keys() == new.keys()                  # renewed certificates, the same tokens
    (scoped,) = [p for p in old.values() if p.role == "collector"]
    assert scoped.collectors == ("node-*-collector", "edge-*")
    assert scoped.refusal("edge-7") is None and scoped.refusal("worker-1-collector") is not None
    # the single token of an older make-secrets.sh stays the collectors' own
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "token").write_text("0123abcd" * 8 + "\n")
    made = make_secrets(legacy)
    assert made["tapio-collector-token"]["token"].decode().strip() == "0123abcd" * 8
    for bad in ("a b", "", "x,,y", "id\nstolen admin"):
        done = subprocess.run([str(KUBE / "make-secrets.sh"), "--collector-ids", bad, str(tmp_path / "bad")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--collector-ids" in done.stderr, bad
        assert not (tmp_path / "bad").exists()


def _in_tmp(workload, name, secrets, root):
    """The container's args with every path under a volume mount moved under `root`, secret
    volumes filled from `secrets`, other volumes as empty directories."""
    args = container(workload, name)["args"]
    for path, data in mounted_files(workload, name, secrets).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    mounts = [m["mountPath"] for m in container(workload, name)["volumeMounts"]]
    for mount in mounts:
        (root / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
    moved = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and any(value == m or value.startswith(m + "/") for m in mounts):
            arg = f"{key}={root / value.lstrip('/')}"
        moved.append(arg)
    return moved


def _replace(args, **values):
    """args with --key=value replaced (key_with_underscores=None drops the flag)."""
    out, seen = [], set()
    for arg in args:
        key = arg.partition("=")[0]
        name = key.lstrip("-").replace("-", "_")
        if name in values:
            seen.add(name)
            if values[name] is not None:
                out.append(f"{key}={values[name]}")
        else:
            out.append(arg)
    out += [f"--{n.replace('_', '-')}={v}" for n, v in values.items() if n not in seen and v is not None]
    return out


def test_the_manifests_flags_and_secrets_connect_collector_and_server(secrets, tmp_path):
    """The real server and collector with the manifests' own flags (paths moved to a temporary
    directory, ports made free): the collector trusts the server's certificate for the name it
    dials, the server trusts the collector's, the token is accepted, events arrive, and both
    answer their readiness probes."""
    grpc, server_http, collector_http = free_port(), free_port(), free_port()
    events = tmp_path / "events.jsonl"
    server_args = _replace(_in_tmp(SERVER, "server", secrets, tmp_path / "server"),
                           host="127.0.0.1", grpc_port=grpc, http_port=server_http, events_out=events)
    collector_args = _replace(
        _in_tmp(COLLECTOR, "collector", secrets, tmp_path / "collector"),
        # DNS has no tapio-server.tapio-system here: dial 127.0.0.1, check the certificate for it
        server=f"127.0.0.1:{grpc}", tls_server_name=f"tapio-server.{NAMESPACE}",
        http_host="127.0.0.1", http_port=collector_http,
        enable_k8s=None,                      # no API server here
        source="synthetic", rate=200, log_format="text")
    tokens = {p.role: t for t, p in parsed_tokens(secrets["tapio-server-tokens"]["tokens"], tmp_path)}
    bin_dir = Path(sys.executable).parent
    server = ManagedProcess([str(bin_dir / "tapio-server"), *server_args], str(tmp_path / "server.log"))
    collector = None
    try:
        server.wait_log("Tapio server listening")
        collector = ManagedProcess([str(bin_dir / "tapio-collector"), *collector_args],
                                   str(tmp_path / "collector.log"))
        wait_until(lambda: len(read_json_lines(events)) > 0, 20, what="events over mutual TLS with the token")
        for url in (f"http://127.0.0.1:{server_http}/readyz", f"http://127.0.0.1:{collector_http}/readyz"):
            wait_until(lambda: http_get(url)[0] == 200, 20, what=f"{url} to answer 200")
        # the events API: the reader and admin tokens read, the collectors' token does not
        url = f"http://127.0.0.1:{server_http}/api/v1/events?limit=1"
        for role, status in (("reader", 200), ("admin", 200), ("collector", 403)):
            got, _, body = http_get(url, headers={"Authorization": f"Bearer {tokens[role]}"})
            assert got == status, (role, body)
        assert http_get(url)[0] == 401
    finally:
        if collector is not None:
            collector.stop()
        server.stop()
    for token in tokens.values():
        assert token not in server.log() + collector.log()
