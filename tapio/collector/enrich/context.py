"""cgroup id -> the serialized tapio.v1.Context that events from that cgroup carry.

Built once per cgroup from its path (container, pod, QoS, systemd unit) and, with --enable-k8s,
from the pod index (pod name, namespace, labels, container name, image), then kept as wire bytes
so that the hot path only copies them. When the pod index learns about a pod, the contexts of its
cgroups are dropped, so the events after the pod appears carry its name. node_name is not set
here: the batch carries it once.
"""
import threading
from collections import OrderedDict

from tapio.v1 import events_pb2

from .container import parse_cgroup_path
from .runtime_state import RuntimeState

__all__ = ["ContextResolver"]


class ContextResolver:
    """`cgroup_paths` is a CgroupPaths (anything with .path(cgroup_id)); `kubernetes` a
    KubernetesPods or None. Thread-safe: the pod index invalidates from its own thread."""

    def __init__(self, cgroup_paths, kubernetes=None, *, node_name="", enable_systemd=True,
                 max_entries=16384, runtime_state=None):
        self._paths = cgroup_paths
        self._kubernetes = kubernetes
        self.node_name = node_name
        self._enable_systemd = enable_systemd
        self._max_entries = max(1, int(max_entries))
        self.runtime_state = runtime_state if runtime_state is not None else RuntimeState()
        self._lock = threading.Lock()
        self._cache = OrderedDict()   # cgroup id -> (wire bytes, pod uid)
        self._by_pod = {}             # pod uid -> {cgroup id}
        self._counts = dict.fromkeys(("hits", "misses", "unresolved", "invalidations", "evictions"), 0)
        if kubernetes is not None:
            kubernetes.add_listener(self.invalidate_pod)

    def context_bytes(self, cgroup_id):
        """The serialized Context of the cgroup, or None when its path cannot be resolved."""
        if type(cgroup_id) is not int:
            with self._lock:
                self._counts["unresolved"] += 1
            return None
        with self._lock:
            cached = self._cache.get(cgroup_id)
            if cached is not None:
                self._cache.move_to_end(cgroup_id)
                self._counts["hits"] += 1
                return cached[0]
            self._counts["misses"] += 1
        path = self._paths.path(cgroup_id)
        if path is None:
            with self._lock:
                self._counts["unresolved"] += 1
            return None
        message, pod_uid = self._build(path)
        wire = message.SerializeToString()
        with self._lock:
            self._store(cgroup_id, wire, pod_uid)
        return wire

    def context(self, cgroup_id):
        """The Context message itself (a fresh copy), or None."""
        wire = self.context_bytes(cgroup_id)
        return None if wire is None else events_pb2.Context.FromString(wire)

    def _build(self, path):
        info = parse_cgroup_path(path)
        message = events_pb2.Context(cgroup_path=path)
        if info.container_id:
            message.container_id = info.container_id
        if info.runtime:
            message.container_runtime = info.runtime
        if info.pod_uid:
            message.pod_uid = info.pod_uid
        if info.qos_class:
            message.qos_class = info.qos_class
        if self._enable_systemd and info.systemd_unit:
            message.systemd_unit = info.systemd_unit
        if self._kubernetes is not None and (info.pod_uid or info.container_id):
            self._add_pod_metadata(message, info)
        if info.container_id and not message.container_name:
            self.runtime_state.fill(message, info.container_id, info.runtime)
        return message, message.pod_uid

    def _add_pod_metadata(self, message, info):
        pod = meta = None
        if info.container_id:
            found = self._kubernetes.container(info.container_id)
            if found is not None:
                pod, meta = found
        if pod is None and info.pod_uid:
            pod = self._kubernetes.pod(info.pod_uid)
        if pod is None:
            return
        message.pod_uid = message.pod_uid or pod.uid
        if pod.name:
            message.pod_name = pod.name
        if pod.namespace:
            message.namespace = pod.namespace
        if pod.qos_class and not message.qos_class:
            message.qos_class = pod.qos_class
        for key, value in pod.labels:   # PodInfo keeps them sorted by key
            message.labels.add(key=key, value=value)
        if meta is not None:
            if meta.name:
                message.container_name = meta.name
            if meta.image:
                message.image = meta.image
            # cgroupfs paths do not name the runtime; the kubelet's containerID scheme does.
            if meta.runtime and not message.container_runtime:
                message.container_runtime = meta.runtime

    def _store(self, cgroup_id, wire, pod_uid):
        self._cache[cgroup_id] = (wire, pod_uid)
        self._cache.move_to_end(cgroup_id)
        if pod_uid:
            self._by_pod.setdefault(pod_uid, set()).add(cgroup_id)
        while len(self._cache) > self._max_entries:
            old_id, (_, old_pod) = self._cache.popitem(last=False)
            self._forget_pod_link(old_id, old_pod)
            self._counts["evictions"] += 1

    def _forget_pod_link(self, cgroup_id, pod_uid):
        if pod_uid:
            ids = self._by_pod.get(pod_uid)
            if ids is not None:
                ids.discard(cgroup_id)
                if not ids:
                    del self._by_pod[pod_uid]

    def invalidate_pod(self, pod_uid):
        """Drop the cached contexts of a pod's cgroups; pod_uid None drops every pod's."""
        with self._lock:
            uids = list(self._by_pod) if pod_uid is None else [pod_uid]
            for uid in uids:
                for cgroup_id in self._by_pod.pop(uid, ()):
                    if self._cache.pop(cgroup_id, None) is not None:
                        self._counts["invalidations"] += 1

    def stats(self):
        with self._lock:
            out = dict(self._counts)
            out["entries"] = len(self._cache)
            return out
