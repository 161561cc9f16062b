"""Container id -> (name, image), read from the container runtime's own state on disk.

A cgroup path gives a container's id and runtime; the name a person gave it (`podman run --name
web`) and its image live only in the runtime's metadata:

  podman (containers-storage)   <graphroot>/<driver>-containers/containers.json: one JSON list of
                                every container, {"id", "names": [...], "metadata": "<JSON text
                                with image-name>"}; graphroot from /etc/containers/storage.conf
                                (default /var/lib/containers/storage)
  docker                        /var/lib/docker/containers/<id>/config.v2.json: {"Name": "/web",
                                "Config": {"Image": "nginx:1.25"}}

Kubernetes pods are named by the API server (kubernetes.py), not here. Lookups happen on a
context-cache miss (a cgroup seen for the first time), never per event. podman's list is read again
only when an id is not in it and the file changed since the last read; docker's file is read once
per id. Both are bounded in bytes, and the answers are kept in a bounded LRU. Nothing here raises on
missing, unreadable or hostile files: the answer is then empty.
"""
import json
import os
import re
import threading
from collections import OrderedDict

__all__ = ["RuntimeState", "podman_graphroot"]

PODMAN_ROOT = "/var/lib/containers/storage"
PODMAN_CONFIG = "/etc/containers/storage.conf"
DOCKER_ROOT = "/var/lib/docker"

# containers.json of a host with a few thousand containers stays well below this.
MAX_PODMAN_LIST_BYTES = 32 << 20
MAX_DOCKER_CONFIG_BYTES = 4 << 20
MAX_NAME_CHARS = 253
MAX_IMAGE_CHARS = 1024

_ID = re.compile(r"[0-9a-f]{64}")
_GRAPHROOT = re.compile(r'^\s*graphroot\s*=\s*"([^"]+)"', re.MULTILINE)
_NOTHING = ("", "")


def podman_graphroot(config_path=PODMAN_CONFIG):
    """containers-storage's graphroot as storage.conf sets it, else the default."""
    try:
        with open(config_path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return PODMAN_ROOT
    match = _GRAPHROOT.search(text)
    return match[1] if match and match[1].startswith("/") else PODMAN_ROOT


def _text(value, limit):
    return value[:limit] if isinstance(value, str) else ""


def _read_bounded(path, limit):
    """The file's bytes, or None when it is missing, unreadable or larger than `limit`."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    return None if len(data) > limit else data


class RuntimeState:
    """Thread-safe. `podman_root` and `docker_root` point at the runtimes' state directories (in a
    container: where the host's are mounted)."""

    def __init__(self, podman_root=None, docker_root=DOCKER_ROOT, max_entries=4096):
        self._podman_root = podman_root or podman_graphroot()
        self._docker_root = docker_root
        self._max_entries = max(1, int(max_entries))
        self._lock = threading.Lock()
        self._cache = OrderedDict()      # container id -> (name, image)
        self._podman_seen = {}           # containers.json path -> (inode, size, mtime_ns) last read
        self._counts = dict.fromkeys(("hits", "misses", "found", "not_found", "podman_reads",
                                      "docker_reads", "read_errors"), 0)

    def lookup(self, container_id, runtime=""):
        """(name, image) of the container, empty strings for what the runtime's state does not say."""
        if not isinstance(container_id, str) or not _ID.fullmatch(container_id):
            return _NOTHING
        with self._lock:
            found = self._cache.get(container_id)
            if found is not None:
                self._cache.move_to_end(container_id)
                self._counts["hits"] += 1
                return found
            self._counts["misses"] += 1
            answer = _NOTHING
            if runtime in ("podman", ""):
                answer = self._from_podman(container_id)
            if answer is _NOTHING and runtime in ("docker", ""):
                answer = self._from_docker(container_id)
            if answer is _NOTHING:
                # not cached: the runtime may write its state after this first look
                self._counts["not_found"] += 1
                return answer
            self._counts["found"] += 1
            self._remember(container_id, answer)
            return answer

    def fill(self, message, container_id, runtime=""):
        """Set a tapio.v1.Context's container_name and image (those still empty) from the state."""
        name, image = self.lookup(container_id, runtime)
        if name and not message.container_name:
            message.container_name = name
        if image and not message.image:
            message.image = image

    def _remember(self, container_id, answer):
        self._cache[container_id] = answer
        self._cache.move_to_end(container_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    # -- podman -------------------------------------------------------------------------------------
    def _podman_lists(self):
        try:
            names = os.listdir(self._podman_root)
        except OSError:
            return []
        return [os.path.join(self._podman_root, n, "containers.json")
                for n in sorted(names) if n.endswith("-containers")]

    def _from_podman(self, container_id):
        for path in self._podman_lists():
            try:
                st = os.stat(path)
            except OSError:
                continue
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._podman_seen.get(path) == stamp:
                continue         # read already, and the id was not in it
            self._podman_seen[path] = stamp
            self._counts["podman_reads"] += 1
            self._load_podman_list(path)
        return self._cache.get(container_id, _NOTHING)

    def _load_podman_list(self, path):
        data = _read_bounded(path, MAX_PODMAN_LIST_BYTES)
        try:
            entries = json.loads(data) if data is not None else None
        except ValueError:
            entries = None
        if not isinstance(entries, list):
            self._counts["read_errors"] += 1
            return
        # The newest containers are last; read from the end so that the LRU keeps them.
        for entry in entries[-self._max_entries:]:
            if not isinstance(entry, dict):
                continue
            cid = entry.get("id")
            if not isinstance(cid, str) or not _ID.fullmatch(cid):
                continue
            names = entry.get("names")
            name = _text(names[0], MAX_NAME_CHARS) if isinstance(names, list) and names else ""
            image = ""
            metadata = entry.get("metadata")
            if isinstance(metadata, str) and len(metadata) <= 65536:
                try:
                    meta = json.loads(metadata)
                except ValueError:
                    meta = None
                if isinstance(meta, dict):
                    image = _text(meta.get("image-name"), MAX_IMAGE_CHARS)
                    name = name or _text(meta.get("name"), MAX_NAME_CHARS)
            if name or image:
                self._remember(cid, (name, image))

    # -- docker -------------------------------------------------------------------------------------
    def _from_docker(self, container_id):
        path = os.path.join(self._docker_root, "containers", container_id, "config.v2.json")
        data = _read_bounded(path, MAX_DOCKER_CONFIG_BYTES)
        if data is None:
            return _NOTHING
        self._counts["docker_reads"] += 1
        try:
            config = json.loads(data)
        except ValueError:
            config = None
        if not isinstance(config, dict):
            self._counts["read_errors"] += 1
            return _NOTHING
        name = _text(config.get("Name"), MAX_NAME_CHARS + 1).lstrip("/")
        inner = config.get("Config")
        image = _text(inner.get("Image"), MAX_IMAGE_CHARS) if isinstance(inner, dict) else ""
        return (name, image) if name or image else _NOTHING

    def stats(self):
        with self._lock:
            out = dict(self._counts)
            out["entries"] = len(self._cache)
            return out
