"""Builds the semantic path's enrichment from the collector's flags, and takes it down again."""
import logging

from tapio.collector.clock import boot_to_wall_ns

from .cgroup_paths import CgroupPaths
from .container import parse_cgroup_path
from .context import ContextResolver
from .proc import ProcessTable
from .systemd import UnitRestarts

log = logging.getLogger("tapio.collector.enrich")


class Enrichment:
    def __init__(self, node_name, enable_k8s=False, kubeconfig=None, enable_systemd=True):
        self.cgroup_paths = CgroupPaths()
        self.kubernetes = None
        if enable_k8s:
            from .kubernetes import KubernetesPods
            self.kubernetes = KubernetesPods(node_name, kubeconfig=kubeconfig)
        self.contexts = ContextResolver(self.cgroup_paths, self.kubernetes, node_name=node_name,
                                        enable_systemd=enable_systemd)
        self.processes = ProcessTable(boot_to_wall_ns())
        self.restarts = UnitRestarts() if enable_systemd else None

    def start(self):
        """Blocking start-up work (call it from a thread): the /proc snapshot, so that processes
        that started before the collector have complete trees; the pod watch."""
        n = self.processes.snapshot()
        if self.restarts is not None:
            for pid, path in self.processes.cgroup_paths():
                unit = parse_cgroup_path(path).systemd_unit
                if unit:
                    self.restarts.track(unit, pid)
        log.info("Process table: %d processes from /proc", n)
        if self.kubernetes is not None:
            self.kubernetes.start()

    def on_pod_change(self, callback):
        if self.kubernetes is not None:
            self.kubernetes.add_listener(lambda uid: callback())

    def stats(self):
        out = {}
        for name in ("cgroup_paths", "contexts", "processes", "restarts", "kubernetes"):
            part = getattr(self, name)
            if part is not None:
                out.update({f"{name}_{k}": v for k, v in part.stats().items()})
        return out

    def close(self):
        if self.kubernetes is not None:
            self.kubernetes.stop()
        self.cgroup_paths.close()
