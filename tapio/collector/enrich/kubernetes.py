"""Pod metadata for this node from the Kubernetes API: one LIST + WATCH, never a request per event.

A daemon thread lists the pods with `spec.nodeName=<node>` and then watches them from the list's
resourceVersion, keeping an index pod uid -> PodInfo (and container id -> pod) that lookups read
under a lock. The watch is resumed from the last resourceVersion when the server ends it; on 410
Gone (the version is too old) and after any error the thread lists again, after a capped
exponential backoff with jitter for errors.

While the API server is unreachable the index keeps what it knew: lookups go on answering from it,
and pods it has not seen yet just return None. The failure is counted (`api_errors`, `last_error`)
and logged once when it starts and once when it is over, not once per retry.

The official `kubernetes` client does the configuration (in-cluster service account or a
kubeconfig) and the HTTP; responses are read as raw JSON (`_preload_content=False`), so a field
the client's models would reject cannot stop the index, and a stop() can cut a blocked read short.
"""
import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["ContainerMeta", "KubernetesPods", "PodInfo", "pod_info_from_json", "split_container_id"]

log = logging.getLogger(__name__)

MAX_LABELS = 64
MAX_WATCH_LINE = 8 << 20   # a pod object is tens of KB; a line this long is not one


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    name: str
    image: str
    runtime: str = ""   # from the containerID scheme: containerd, cri-o, docker


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    name: str
    namespace: str
    labels: tuple = ()          # ((key, value), ...) sorted by key
    qos_class: str = ""
    node_name: str = ""
    containers: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def _dict(value):
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _str(value):
    return value if isinstance(value, str) else ""


# containerID schemes the kubelet reports -> the runtime names of the wire contract.
_SCHEME_RUNTIMES = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}


def split_container_id(value):
    """"containerd://<id>" -> ("containerd", "<id>"); ("", "") for anything else."""
    scheme, sep, container_id = _str(value).partition("://")
    if not sep or not container_id or "/" in container_id:
        return "", ""
    return _SCHEME_RUNTIMES.get(scheme, scheme), container_id


def pod_info_from_json(obj):
    """A PodInfo from a Pod as the API serves it in JSON; None without a uid. Never raises."""
    obj = _dict(obj)
    meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
    uid = _str(meta.get("uid"))
    if not uid:
        return None
    labels = sorted((k, v) for k, v in _dict(meta.get("labels")).items()
                    if isinstance(k, str) and isinstance(v, str))[:MAX_LABELS]
    spec_images = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in _list(spec.get(key)):
            container = _dict(container)
            spec_images[_str(container.get("name"))] = _str(container.get("image"))
    containers = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container_status in _list(status.get(key)):
            container_status = _dict(container_status)
            name = _str(container_status.get("name"))
            image = _str(container_status.get("image")) or spec_images.get(name, "")
            # The previous instance of a restarted container still has late events in flight.
            terminated = _dict(_dict(container_status.get("lastState")).get("terminated"))
            for value in (terminated.get("containerID"), container_status.get("containerID")):
                runtime, container_id = split_container_id(value)
                if container_id:
                    containers[container_id] = ContainerMeta(name, image, runtime)
    return PodInfo(uid=uid, name=_str(meta.get("name")), namespace=_str(meta.get("namespace")),
                   labels=tuple(labels), qos_class=_str(status.get("qosClass")),
                   node_name=_str(spec.get("nodeName")), containers=MappingProxyType(containers))


class _Gone(Exception):
    """The resourceVersion is too old (HTTP 410 or a watch ERROR event with code 410)."""


class _StopRequested(Exception):
    pass


def _describe(exc):
    """One short line for an error of the client, urllib3 or the socket layer."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    reason = getattr(exc, "reason", None)   # urllib3 MaxRetryError wraps the real cause
    if isinstance(reason, BaseException):
        exc = reason
    text = str(exc)
    # urllib3 starts with the connection's repr: "HTTPConnection(host=..., port=...): Failed to ..."
    head, sep, rest = text.partition("): ")
    if sep and ("Connection(" in head or head.startswith("<")):
        text = rest
    return f"{type(exc).__name__}: {text}"[:300]


class KubernetesPods:
    """The index of this node's pods. Call start(); lookups are safe from any thread."""

    def __init__(self, node_name, *, kubeconfig=None, in_cluster=None, backoff_initial_s=0.5,
                 backoff_max_s=30.0, watch_timeout_s=300, connect_timeout_s=5.0,
                 deleted_grace_s=30.0, max_pods=5000):
        self.node_name = node_name
        self._kubeconfig = kubeconfig
        self._in_cluster = in_cluster
        self._backoff_initial = float(backoff_initial_s)
        self._backoff_max = float(backoff_max_s)
        self._watch_timeout = max(1, int(watch_timeout_s))
        self._connect_timeout = float(connect_timeout_s)
        self._deleted_grace = float(deleted_grace_s)
        self._max_pods = max(1, int(max_pods))
        self._lock = threading.Lock()
        self._pods = {}          # uid -> PodInfo
        self._containers = {}    # container id -> uid
        self._deleted = {}       # uid -> monotonic time after which it leaves the index
        self._listeners = []
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = None
        self._response = None    # the HTTP response being read, so stop() can cut it short
        self._failing = False
        self.last_error = ""
        self.server = ""
        self._counts = dict.fromkeys(
            ("lists", "watches", "events", "relists_gone", "api_errors", "pods_dropped", "lookups",
             "lookup_misses"), 0)

    # -- life cycle -----------------------------------------------------------------------------

    def start(self):
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tapio-k8s-pods", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        """Stop the watch thread; True when it ended within `timeout` seconds."""
        self._stop.set()
        self._cut_response()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait_synced(self, timeout):
        """Wait (bounded) until the first LIST has filled the index."""
        return self._synced.wait(timeout)

    @property
    def synced(self):
        return self._synced.is_set()

    def add_listener(self, callback):
        """callback(pod_uid) after a pod was added, changed or removed; callback(None) after a
        re-list replaced the whole index. Called from the watch thread."""
        self._listeners.append(callback)

    # -- lookups --------------------------------------------------------------------------------

    def pod(self, uid):
        """The PodInfo of a pod uid, or None."""
        with self._lock:
            self._counts["lookups"] += 1
            found = self._pods.get(uid) if isinstance(uid, str) else None
            if found is None:
                self._counts["lookup_misses"] += 1
            return found

    def container(self, container_id):
        """(PodInfo, ContainerMeta) of a container id, or None."""
        with self._lock:
            self._counts["lookups"] += 1
            pod = meta = None
            if isinstance(container_id, str):
                pod = self._pods.get(self._containers.get(container_id))
                meta = pod.containers.get(container_id) if pod is not None else None
            if meta is None:
                self._counts["lookup_misses"] += 1
                return None
            return pod, meta

    def pods(self):
        with self._lock:
            return list(self._pods.values())

    def stats(self):
        with self._lock:
            out = dict(self._counts)
            out["pods"] = len(self._pods)
            out["synced"] = int(self._synced.is_set())
            out["failing"] = int(self._failing)
            return out

    # -- the index ------------------------------------------------------------------------------

    def _put(self, pod):
        old = self._pods.get(pod.uid)
        if old is None and len(self._pods) >= self._max_pods:
            self._purge_deleted(force=True)
            if len(self._pods) >= self._max_pods:
                self._counts["pods_dropped"] += 1
                return
        if old is not None:
            for container_id in old.containers:
                if container_id not in pod.containers and self._containers.get(container_id) == pod.uid:
                    del self._containers[container_id]
        self._pods[pod.uid] = pod
        self._deleted.pop(pod.uid, None)
        for container_id in pod.containers:
            self._containers[container_id] = pod.uid

    def _drop(self, uid):
        pod = self._pods.pop(uid, None)
        self._deleted.pop(uid, None)
        if pod is not None:
            for container_id in pod.containers:
                if self._containers.get(container_id) == uid:
                    del self._containers[container_id]

    def _mark_deleted(self, uid):
        # Late events of a deleted pod's processes still deserve its name: keep it for a while.
        if self._deleted_grace <= 0:
            self._drop(uid)
        elif uid in self._pods:
            self._deleted.setdefault(uid, time.monotonic() + self._deleted_grace)

    def _purge_deleted(self, force=False):
        now = time.monotonic()
        for uid, until in list(self._deleted.items()):
            if force or until <= now:
                self._drop(uid)

    def _replace_all(self, pods):
        with self._lock:
            listed = {pod.uid for pod in pods}
            for uid in list(self._pods):
                if uid not in listed:
                    self._mark_deleted(uid)
            for pod in pods:
                self._put(pod)
            self._purge_deleted()
        self._notify(None)

    def _apply(self, kind, obj):
        pod = pod_info_from_json(obj)
        if pod is None:
            return
        with self._lock:
            if kind == "DELETED":
                self._mark_deleted(pod.uid)
            else:
                self._put(pod)
            self._purge_deleted()
        self._notify(pod.uid)

    def _notify(self, uid):
        for callback in list(self._listeners):
            try:
                callback(uid)
            except Exception:   # a listener's bug must not end the watch
                log.debug("pod listener failed", exc_info=True)

    # -- the watch thread -----------------------------------------------------------------------

    def _run(self):
        api = None
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if api is None:
                        api = self._connect()
                    version = self._list(api)
                    failures = 0
                    self._recovered()
                    while not self._stop.is_set():
                        started = time.monotonic()
                        version, events = self._watch(api, version)
                        if events == 0 and time.monotonic() - started < 1.0:
                            # A server that ends every watch at once must not make us spin.
                            self._stop.wait(self._backoff_initial)
                except _Gone:
                    with self._lock:
                        self._counts["relists_gone"] += 1
                    # Normal after a long outage; a server answering 410 every time must not
                    # turn it into a LIST loop.
                    self._stop.wait(self._backoff_initial * random.uniform(0.5, 1.0))
                except _StopRequested:
                    break
                except Exception as exc:   # any failure: count it, back off, list again
                    if self._stop.is_set():
                        break
                    failures += 1
                    self._failed(exc)
                    delay = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 30))
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
        finally:
            if api is not None:
                try:
                    api.api_client.close()
                except Exception:
                    pass

    def _connect(self):
        from kubernetes import client, config   # imported here: heavy, and only with --enable-k8s

        configuration = client.Configuration()
        in_cluster = self._in_cluster
        if in_cluster is None:
            in_cluster = self._kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=self._kubeconfig, client_configuration=configuration,
                                    persist_config=False)
        # Our own loop retries with backoff; urllib3's retries would only add log lines.
        configuration.retries = 0
        self.server = configuration.host
        return client.CoreV1Api(client.ApiClient(configuration))

    def _request(self, api, read_timeout, **params):
        response = api.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", _preload_content=False,
            _request_timeout=(self._connect_timeout, read_timeout), **params)
        self._response = response
        if self._stop.is_set():
            self._cut_response()
        return response

    def _release(self, response):
        self._response = None
        try:
            response.close()
            response.release_conn()
        except Exception:
            pass

    def _list(self, api):
        response = self._request(api, 60)
        try:
            body = json.loads(response.data)
        finally:
            self._release(response)
        body = _dict(body)
        pods = [pod for pod in map(pod_info_from_json, _list(body.get("items"))) if pod is not None]
        self._replace_all(pods)
        with self._lock:
            self._counts["lists"] += 1
        version = _str(_dict(body.get("metadata")).get("resourceVersion"))
        if not self._synced.is_set():
            log.info("Watching pods on node %s", self.node_name,
                     extra={"fields": {"pods": len(pods), "server": self.server}})
        self._synced.set()
        return version

    def _watch(self, api, version):
        """Read one watch stream to its end; returns (last resourceVersion, events seen)."""
        from kubernetes.client.exceptions import ApiException

        # Spread the server-side timeouts (as client-go does) so that the collectors of a cluster
        # do not all re-watch at the same moment; the read timeout only catches a silent peer.
        timeout = int(self._watch_timeout * random.uniform(1.0, 2.0))
        try:
            response = self._request(api, timeout + 30, watch=True, resource_version=version or None,
                                     allow_watch_bookmarks=True, timeout_seconds=timeout)
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise
        with self._lock:
            self._counts["watches"] += 1
        events = 0
        try:
            for line in self._lines(response):
                event = _dict(json.loads(line))
                kind = _str(event.get("type"))
                obj = _dict(event.get("object"))
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('code')} {_str(obj.get('message'))}")
                new_version = _str(_dict(obj.get("metadata")).get("resourceVersion"))
                if new_version:
                    version = new_version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    events += 1
                    with self._lock:
                        self._counts["events"] += 1
                    self._apply(kind, obj)
        finally:
            self._release(response)
        if self._stop.is_set():
            raise _StopRequested()
        return version, events

    def _lines(self, response):
        buffered = b""
        for chunk in response.stream(65536, decode_content=True):
            if self._stop.is_set():
                return
            buffered += chunk
            while True:
                end = buffered.find(b"\n")
                if end < 0:
                    break
                line, buffered = buffered[:end].strip(), buffered[end + 1:]
                if line:
                    yield line
            if len(buffered) > MAX_WATCH_LINE:
                raise RuntimeError("watch event larger than %d bytes" % MAX_WATCH_LINE)
        if buffered.strip():
            yield buffered.strip()

    def _cut_response(self):
        """Unblock a read in the watch thread by shutting its socket down (urllib3 >= 2.3 has
        HTTPResponse.shutdown(); before that, the connection's socket)."""
        response = self._response
        if response is None:
            return
        try:
            response.shutdown()
            return
        except Exception:
            pass
        try:
            sock = getattr(getattr(response, "connection", None), "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass

    def _failed(self, exc):
        message = _describe(exc)
        with self._lock:
            self._counts["api_errors"] += 1
            self.last_error = message
            first = not self._failing
            self._failing = True
        if first:
            log.warning("Kubernetes API unreachable: pod metadata comes from the last known index "
                        "until it is back", extra={"fields": {"server": self.server, "error": message}})
        else:
            log.debug("Kubernetes API still unreachable: %s", message)

    def _recovered(self):
        with self._lock:
            was_failing, self._failing = self._failing, False
            pods = len(self._pods)
        if was_failing:
            log.info("Kubernetes API reachable again", extra={"fields": {"server": self.server, "pods": pods}})
