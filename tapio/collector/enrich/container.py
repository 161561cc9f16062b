"""Which container, pod and systemd unit a cgroup v2 path belongs to: pure string parsing.

Every runtime names its cgroups its own way, and the same runtime names them differently under the
systemd and the cgroupfs cgroup drivers. The shapes handled here (innermost match wins, so
containers nested in containers, kind and k3d nodes resolve to the workload, not the node):

  Kubernetes, systemd driver (QoS in the slice name; Guaranteed pods sit right under kubepods):
    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    /kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope            (crio-conmon-<id>.scope: not it)
    /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/docker-<id>.scope
    /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-...-pod<uid_>.slice/...   (--cgroup-root)
  Kubernetes, systemd driver configured in the kubelet but not in the runtime (the "slice:prefix:id"
  cgroupsPath used as a plain path; seen in the wild under containerd.service):
    /system.slice/containerd.service/kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>
  Kubernetes, cgroupfs driver (QoS is the parent directory; Guaranteed pods sit under kubepods):
    /kubepods/burstable/pod<uid>/<id>     /kubepods/pod<uid>/<id>     .../pod<uid>/crio-<id>
  Docker:      /docker/<id>   /system.slice/docker-<id>.scope
  Podman:      /machine.slice/libpod-<id>.scope[/container]   /machine.slice/machine-libpod_pod_<pod>.slice/...
               /libpod_parent/libpod-<id>   quadlet: /system.slice/<name>.service/libpod-payload-<id>
               (libpod-conmon-<id>.scope and a quadlet's runtime/ hold conmon, not the container)
  containerd:  /system.slice/nerdctl-<id>.scope (nerdctl, systemd driver)
               /<namespace>/<id> (ctr and nerdctl with cgroupfs: /default/<id>, /k8s.io/<id>)

Pod UIDs are UUIDs; in systemd unit names their '-' become '_' (systemd reserves '-' for slice
nesting), which is undone here. Static (mirror) pods have a 32-hex-digit hash as their UID.
"""
import re
from dataclasses import dataclass

__all__ = ["ContainerInfo", "parse_cgroup_path", "pod_uid_from_cgroup_name"]


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What a cgroup path says about its workload; empty strings for what it does not say."""
    container_id: str = ""
    runtime: str = ""       # docker, containerd, cri-o, podman (the names the wire contract uses)
    pod_uid: str = ""
    qos_class: str = ""     # Guaranteed, Burstable, BestEffort (only together with a pod UID)
    systemd_unit: str = ""  # innermost service/scope that is not itself a container


EMPTY = ContainerInfo()

# Paths longer than this are not produced by any runtime; parsing them would only cost time.
MAX_PATH_CHARS = 4096

_HEX64 = r"[0-9a-f]{64}"
# A UUID with '-' (cgroupfs) or '_' (systemd names), or the 32-hex-digit hash of a static pod.
_POD_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}|[0-9a-f]{32}"

# Scope prefixes of the systemd cgroup driver -> runtime. A conmon scope ("crio-conmon-<id>",
# "libpod-conmon-<id>") never matches: "conmon-<id>" is not 64 hex digits.
_SCOPE_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}
_SCOPE = re.compile(r"(?P<prefix>cri-containerd|crio|docker|libpod|nerdctl)-(?P<id>" + _HEX64 + r")\.scope")
# cgroupfs driver leaves: cri-o and podman keep a prefix, containerd and docker use the bare id.
_PREFIXED_LEAF = re.compile(r"(?P<prefix>crio|libpod|libpod-payload)-(?P<id>" + _HEX64 + r")")
_LEAF_RUNTIMES = {"crio": "cri-o", "libpod": "podman", "libpod-payload": "podman"}
_BARE_ID = re.compile(_HEX64)
# "slice:prefix:id", the systemd driver's cgroupsPath taken literally as a directory name.
_COLON_FORM = re.compile(r"(?P<slice>[^:/]+\.slice):(?P<prefix>cri-containerd|crio|docker):(?P<id>" + _HEX64 + r")")
_COLON_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}

# "kubepods-burstable-pod<uid>.slice", "kubepods-pod<uid>.slice", "kubelet-kubepods-...": the
# optional leading words come from a kubelet --cgroup-root such as kind's /kubelet.
_POD_SLICE = re.compile(r"(?:.+-)?kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>" + _POD_UID + r")\.slice")
_POD_DIR = re.compile(r"pod(?P<uid>" + _POD_UID + r")")
_QOS_NAMES = {None: "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}
_QOS_DIRS = {"burstable": "Burstable", "besteffort": "BestEffort", "kubepods": "Guaranteed"}

# Parents of a bare 64-hex leaf whose runtime the path gives away.
_BARE_PARENT_RUNTIMES = {"docker": "docker", "actions_job": "docker"}
# containerd namespaces whose cgroupfs default path is /<namespace>/<id>; ctr lets the id be any
# name, so at the top of the hierarchy these accept any valid containerd identifier.
_CONTAINERD_NAMESPACES = {"default", "k8s.io"}
_CONTAINERD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,75}")

# Units that hold processes; slices never do, and .socket/.mount/.swap only their helpers.
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(?:service|scope|socket|mount|swap)")


def pod_uid_from_cgroup_name(text):
    """A pod UID as the API server spells it: '-' restored from systemd's '_', lower case."""
    return text.replace("_", "-").lower()


def _pod_of(name, parent):
    """(pod uid, qos class) when the component `name` is a pod's cgroup, else None."""
    match = _POD_SLICE.fullmatch(name)
    if match:
        return pod_uid_from_cgroup_name(match["uid"]), _QOS_NAMES[match["qos"]]
    match = _POD_DIR.fullmatch(name)
    if match:
        # cgroupfs: the QoS is the parent directory. Under a cgroup namespace the parent can be
        # hidden ("..") and then the QoS is unknown rather than guessed.
        return pod_uid_from_cgroup_name(match["uid"]), _QOS_DIRS.get(parent, "")
    return None


def _container_of(name, parent, depth):
    """(container id, runtime) when the component `name` (at `depth`, 1 = top) is a container's
    cgroup, else None."""
    match = _SCOPE.fullmatch(name)
    if match:
        return match["id"], _SCOPE_RUNTIMES[match["prefix"]]
    match = _PREFIXED_LEAF.fullmatch(name)
    if match:
        return match["id"], _LEAF_RUNTIMES[match["prefix"]]
    if _BARE_ID.fullmatch(name):
        if parent in _CONTAINERD_NAMESPACES and depth == 2:
            return name, "containerd"
        # Under a pod the runtime is not in the path; the Kubernetes index can supply it.
        return name, _BARE_PARENT_RUNTIMES.get(parent, "")
    if depth == 2 and parent in _CONTAINERD_NAMESPACES and _CONTAINERD_ID.fullmatch(name):
        return name, "containerd"
    return None


def parse_cgroup_path(path):
    """Parse a cgroup v2 path such as /proc/<pid>/cgroup's "0::" line shows it. Never raises:
    anything that is not a recognisable shape gives empty fields."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        return EMPTY
    container_id = runtime = pod_uid = qos_class = unit = ""
    parent = ""
    depth = 0
    for name in path.split("/"):
        if not name or name == ".":
            continue
        depth += 1
        colon = _COLON_FORM.fullmatch(name)
        if colon:
            pod = _pod_of(colon["slice"], parent)
            if pod:
                pod_uid, qos_class = pod
                unit = ""
            container_id, runtime = colon["id"], _COLON_RUNTIMES[colon["prefix"]]
        else:
            pod = _pod_of(name, parent)
            if pod:
                pod_uid, qos_class = pod
                # A unit above a pod (e.g. containerd.service) does not own it: the kubelet does.
                unit = ""
                container_id = runtime = ""
            else:
                found = _container_of(name, parent, depth)
                if found:
                    container_id, runtime = found
                elif _UNIT.fullmatch(name):
                    unit = name
        parent = name
    return ContainerInfo(container_id, runtime, pod_uid, qos_class, unit)
