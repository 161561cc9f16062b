"""cgroup v2 id -> cgroup path, for the ids that kernel events carry.

A cgroup v2 id is the kernfs inode number of the cgroup's directory (os.stat(dir).st_ino on
cgroup2fs). Two ways back from an id to a path:

* open_by_handle_at(2) with a kernfs file handle (what systemd's cg_path_from_cgroupid does): one
  cheap syscall per miss, needs CAP_DAC_READ_SEARCH (the collector runs as root);
* a walk of the hierarchy with os.scandir, recording inode -> path for every directory. Done once
  at start-up, and again on a miss at most once per `rescan_interval`, so a burst of events from
  unknown cgroups costs one walk, not one per event.

A cgroup that was removed before its id was ever seen cannot be resolved by either: the kernel has
forgotten it. Such misses return None and are counted. Ids are never reused, so a path, once
learnt, stays right; it is kept (up to `max_entries`, least recently used first out) for the late
events of a cgroup that is gone.
"""
import ctypes
import errno
import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict

__all__ = ["CgroupPaths", "find_cgroup2_mount", "parse_mountinfo_line"]

log = logging.getLogger(__name__)

# include/linux/exportfs.h: FILEID_KERNFS; the handle is the 64-bit kernfs node id.
_FILEID_KERNFS = 0xFE
_HANDLE_ERRORS_THAT_DISABLE = (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                               errno.EBADF)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount_field(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo_line(line):
    """(root, mount point, fstype) of one /proc/<pid>/mountinfo line, or None if malformed."""
    left, sep, right = line.partition(" - ")
    if not sep:
        return None
    fields, tail = left.split(), right.split()
    if len(fields) < 5 or not tail:
        return None
    return _unescape_mount_field(fields[3]), _unescape_mount_field(fields[4]), tail[0]


def find_cgroup2_mount(mountinfo="/proc/self/mountinfo"):
    """(mount point, root inside the hierarchy) of the cgroup2 mount, or None when there is none.
    With several mounts, one of the whole hierarchy (root "/") wins over a bind mount of a part."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read(4 << 20).splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        parsed = parse_mountinfo_line(line)
        if parsed and parsed[2] == "cgroup2":
            root, mount_point, _ = parsed
            found.append((root != "/", len(mount_point), mount_point, root))
    if not found:
        return None
    _, _, mount_point, root = min(found)
    return mount_point, root


class _FileHandles:
    """open_by_handle_at for kernfs ids: path of a live cgroup, or None."""

    def __init__(self, mount_point):
        self._mount_fd = -1
        self._open = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._open = libc.open_by_handle_at
            self._open.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
            self._open.restype = ctypes.c_int
            self._mount_fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self._open = None
        self.disabled_reason = "" if self._open else "open_by_handle_at is not available"

    @property
    def usable(self):
        return self._open is not None and self._mount_fd >= 0 and not self.disabled_reason

    def path(self, cgroup_id):
        """Absolute path of the cgroup directory; None when the id is unknown to the kernel."""
        handle = ctypes.create_string_buffer(struct.pack("=IiQ", 8, _FILEID_KERNFS, cgroup_id))
        fd = self._open(self._mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in _HANDLE_ERRORS_THAT_DISABLE:
                # No privilege, or no support: every later call would fail the same way.
                self.disabled_reason = os.strerror(err)
            return None
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        # Removed between the open and the readlink: the path it had is still the right answer.
        return path.removesuffix(" (deleted)")

    def close(self):
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1


class CgroupPaths:
    """Resolves cgroup v2 ids to paths as /proc/<pid>/cgroup shows them ("/", "/system.slice/x").

    `mount=None` finds the cgroup2 mount in /proc/self/mountinfo. Thread-safe. Never raises on a
    missing or unreadable hierarchy: lookups then return None and are counted as misses.
    """

    def __init__(self, mount=None, *, max_entries=65536, rescan_interval=1.0, use_file_handles=True,
                 clock=time.monotonic):
        root = "/"
        if mount is None:
            found = find_cgroup2_mount()
            if found:
                mount, root = found
                # In a cgroup namespace of its own, a mount of the node's whole hierarchy shows a
                # root above the namespace ("/../.."); only the hierarchy's root has no cgroup.type.
                if ".." in root.split("/") and not os.path.exists(os.path.join(mount, "cgroup.type")):
                    root = "/"
        self.mount = mount
        # A bind mount of part of the hierarchy: its paths continue the mount's root.
        self._prefix = "" if root in ("/", "") else root.rstrip("/")
        self._max_entries = max(1, int(max_entries))
        self._rescan_interval = float(rescan_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._paths = OrderedDict()
        self._last_scan = None
        self._handles = _FileHandles(mount) if (use_file_handles and mount) else None
        self._hits = self._misses = self._unresolved = 0
        self._rescans = self._rescans_skipped = self._handle_lookups = self._evictions = 0
        self._scan_errors = 0
        if mount is None:
            log.warning("No cgroup2 mount found: events get no container or unit context")
        else:
            self.rescan()

    # -- lookups --------------------------------------------------------------------------------

    def path(self, cgroup_id):
        """The cgroup's path ("/" for the root), or None when it cannot be resolved."""
        if type(cgroup_id) is not int or not 0 < cgroup_id < 1 << 64:
            with self._lock:
                self._misses += 1
            return self._unresolved_id()
        with self._lock:
            found = self._paths.get(cgroup_id)
            if found is not None:
                self._paths.move_to_end(cgroup_id)
                self._hits += 1
                return found
            self._misses += 1
        if self.mount is None:
            return self._unresolved_id()
        found = self._from_handle(cgroup_id)
        if found is None and not (self._handles and self._handles.usable):
            # Without file handles only a fresh walk can find a cgroup created since the last one.
            if self._rescan_due():
                self.rescan()
                with self._lock:
                    found = self._paths.get(cgroup_id)
            else:
                with self._lock:
                    self._rescans_skipped += 1
        if found is None:
            return self._unresolved_id()
        return found

    def _unresolved_id(self):
        with self._lock:
            self._unresolved += 1
        return None

    def _from_handle(self, cgroup_id):
        handles = self._handles
        if handles is None or not handles.usable:
            return None
        with self._lock:
            self._handle_lookups += 1
        absolute = handles.path(cgroup_id)
        if not handles.usable:
            log.info("cgroup ids resolve by walking %s from now on (file handles: %s)", self.mount,
                     handles.disabled_reason)
        if absolute is None:
            return None
        relative = self._relative(absolute)
        if relative is None:
            return None
        with self._lock:
            self._remember(cgroup_id, relative)
        return relative

    def _relative(self, absolute):
        mount = self.mount.rstrip("/")
        if absolute == mount:
            return self._prefix or "/"
        if not absolute.startswith(mount + "/"):
            return None
        return self._prefix + absolute[len(mount):]

    # -- the walk -------------------------------------------------------------------------------

    def _rescan_due(self):
        with self._lock:
            return self._last_scan is None or self._clock() - self._last_scan >= self._rescan_interval

    def rescan(self):
        """Walk the hierarchy now and learn every cgroup in it (at most `max_entries`)."""
        with self._lock:
            self._last_scan = self._clock()
            self._rescans += 1
        found = []
        try:
            root_ino = os.stat(self.mount).st_ino
        except OSError:
            with self._lock:
                self._scan_errors += 1
            return 0
        found.append((root_ino, self._prefix or "/"))
        pending = [(self.mount, self._prefix)]
        while pending and len(found) < self._max_entries:
            directory, relative = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        # Control files are regular files; only directories are cgroups.
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        child = f"{relative}/{entry.name}"
                        found.append((entry.inode(), child))
                        pending.append((entry.path, child))
                        if len(found) >= self._max_entries:
                            break
            except OSError:
                # Removed while we walked it: an ordinary race, not an error worth more than a count.
                with self._lock:
                    self._scan_errors += 1
        with self._lock:
            for cgroup_id, relative in found:
                self._remember(cgroup_id, relative)
        return len(found)

    def _remember(self, cgroup_id, relative):
        self._paths[cgroup_id] = relative
        self._paths.move_to_end(cgroup_id)
        while len(self._paths) > self._max_entries:
            self._paths.popitem(last=False)
            self._evictions += 1

    def close(self):
        if self._handles is not None:
            self._handles.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self):
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "unresolved": self._unresolved,
                "rescans": self._rescans,
                "rescans_rate_limited": self._rescans_skipped,
                "handle_lookups": self._handle_lookups,
                "evictions": self._evictions,
                "scan_errors": self._scan_errors,
                "entries": len(self._paths),
            }
