"""Enrichment: what the collector adds to a kernel event on a cache miss.

  cgroup_paths  cgroup v2 id -> path                       (CgroupPaths)
  container     path -> container, runtime, pod, QoS, unit  (parse_cgroup_path, pure)
  kubernetes    pod uid / container id -> pod metadata      (KubernetesPods, LIST + WATCH thread)
  context       cgroup id -> serialized tapio.v1.Context    (ContextResolver)
  proc          pid -> serialized tapio.v1.Process          (ProcessTable)
  systemd       unit restarts from exec/exit events         (UnitRestarts)
  enrichment    all of the above, built from the collector's flags, started and closed
                                                           (Enrichment)

Every component is bounded, counts its hits and misses (stats()), and never raises on bad or
missing data from /proc, cgroupfs or the API server. The kubernetes module is not imported here:
it pulls in the kubernetes client, which only --enable-k8s needs.
"""
from .cgroup_paths import CgroupPaths
from .container import ContainerInfo, parse_cgroup_path
from .context import ContextResolver
from .proc import ProcessTable
from .systemd import UnitRestarts
from .enrichment import Enrichment

__all__ = ["CgroupPaths", "ContainerInfo", "ContextResolver", "Enrichment", "ProcessTable",
           "UnitRestarts", "parse_cgroup_path"]
