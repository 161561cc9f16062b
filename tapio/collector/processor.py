"""The dual-path processor: what each batch of kernel events becomes on the wire.

- Raw path: every event, unenriched, straight from the arena to the codec.
- Semantic path: filtered, enriched (container, pod, unit, process), identical repeats
  collapsed, priority events (OOM kills, fatal signals, failed exits) first and in their own
  batch, which the delivery buffer sends first and drops last.
Both can run at once (`--correlation both`); every batch says which path it came from.

`ProcessorConfig` keeps the original Tapio's names and defaults for what the processor reads:

| original              | default | here                                                           |
|-----------------------|---------|----------------------------------------------------------------|
| raw_buffer_size       | 10000   | events read from the kernel per round when only raw runs       |
| semantic_buffer_size  | 5000    | the same when the semantic path runs (`--buffer-size` sets both)|
| batch_size            | 100     | most events per raw batch (`--batch-size`)                      |
| semantic_batch_size   | 50      | most events per semantic batch (`--semantic-batch-size`)        |
| enable_raw_path       | False   | `--correlation raw|both`                                        |
| enable_semantic_path  | True    | `--correlation semantic|both`                                   |

tapio-collector's own defaults for the two batch sizes are larger (tapio/collector/cli.py): a batch
costs the collector about a millisecond of CPU on its way out and back (thread hops in gRPC),
whatever it holds (README, "Cost on the node"). The original's other settings belong to other
parts here: flush_interval to the pump
(`--flush-interval`), max_memory_usage to the send buffer (`--max-memory`), metrics_interval
to the statistics log (`--metrics-interval`), tapio_server_addr to the connection manager
(`--server`); worker_count has no counterpart (per-event work is C in one thread, and
`--worker-count` is accepted and ignored).
"""
import array
import dataclasses
import logging
import os

from tapio._fast.codec import encode_field
from tapio._fast.semantic import SemanticProcessor

log = logging.getLogger("tapio.collector.processor")

PATH_RAW = 1          # tapio.v1.BatchPath
PATH_SEMANTIC = 2


@dataclasses.dataclass
class ProcessorConfig:
    raw_buffer_size: int = 10000
    semantic_buffer_size: int = 5000
    batch_size: int = 100
    enable_raw_path: bool = False
    enable_semantic_path: bool = True
    semantic_batch_size: int = 50
    exclude_comms: tuple = ()
    include_cgroups: tuple = ()          # cgroup path prefixes; empty: every cgroup
    collapse_repeats: bool = True

    @property
    def buffer_size(self):
        """Events read from the kernel per round (the arena's capacity)."""
        return self.semantic_buffer_size if self.enable_semantic_path else self.raw_buffer_size


@dataclasses.dataclass
class BatchPlan:
    path: int
    order: object          # slot indices (a uint32 memoryview), or None for every slot
    priority: bool = False
    # the slots [first, last] whose events this batch accounts for (its own, and those
    # filtered or collapsed on the way), or None: each path's plans of one round partition
    # the round's slots, so that a server can tell a missing range
    slots: tuple = None


class DualPathProcessor:
    def __init__(self, config, enrichment=None):
        """enrichment: a tapio.collector.enrich.Enrichment (or anything with its
        contexts, processes, cgroup_paths and restarts attributes, each may be None)."""
        self.config = config
        self.contexts = getattr(enrichment, "contexts", None)
        self.processes = getattr(enrichment, "processes", None)
        self.cgroup_paths = getattr(enrichment, "cgroup_paths", None)
        self.restarts = getattr(enrichment, "restarts", None)
        self._all_slots = memoryview(array.array("I"))
        self.semantic = None
        if config.enable_semantic_path:
            self.semantic = SemanticProcessor(
                self._context_field, self._process_field, self._on_exec, self._on_exit,
                exclude_comms=config.exclude_comms,
                include_cgroup=self._included if config.include_cgroups else None,
                self_pid=os.getpid(), collapse=config.collapse_repeats)
            if enrichment is not None:
                # contexts cached in C must be asked for again when pods appear (thread-safe:
                # it only sets a flag that the next batch reads)
                enrichment.on_pod_change(self.semantic.forget_contexts)

    # -- what the C loop calls on a cache miss ------------------------------------------------
    def _context_field(self, cgroup_id):
        body = self.contexts.context_bytes(cgroup_id) if self.contexts else None
        return encode_field(12, body) if body else None

    def _process_field(self, pid):
        body = self.processes.process_bytes(pid) if self.processes else None
        return encode_field(13, body) if body else None

    def _included(self, cgroup_id):
        path = self.cgroup_paths.path(cgroup_id) if self.cgroup_paths else None
        return path is not None and any(path.startswith(p) for p in self.config.include_cgroups)

    def _unit(self, cgroup_id):
        if self.restarts is None or self.contexts is None:
            return ""
        context = self.contexts.context(cgroup_id)
        return context.systemd_unit if context is not None else ""

    def _on_exec(self, pid, ppid, uid, filename, args, boot_ns, cgroup_id):
        if self.processes is not None:
            # the kernel's argv: NUL-terminated strings (the last may be cut short)
            argv = args[:-1].split(b"\0") if args.endswith(b"\0") else args.split(b"\0")
            self.processes.on_exec(pid, ppid, uid, filename, argv if args else [], boot_ns)
        unit = self._unit(cgroup_id)
        if unit and self.restarts.on_exec(unit, pid, boot_ns, ppid):
            log.info("Unit %s restarted (%d restarts seen)", unit, self.restarts.restarts(unit))

    def _on_exit(self, pid, cgroup_id, boot_ns):
        unit = self._unit(cgroup_id)
        if unit:
            self.restarts.on_exit(unit, pid, boot_ns)
        if self.processes is not None:
            self.processes.on_exit(pid)

    def cgroup_name(self, cgroup_id):
        """A short name of a cgroup for a metric label: namespace/pod/container, the container's
        name or id, the systemd unit, or the path; the id when nothing resolves it."""
        context = self.contexts.context(cgroup_id) if self.contexts is not None else None
        if context is not None:
            if context.pod_name:
                return "/".join(p for p in (context.namespace, context.pod_name, context.container_name) if p)
            name = context.container_name or context.container_id[:12] or context.systemd_unit
            if name or context.cgroup_path:
                return name or context.cgroup_path
        path = self.cgroup_paths.path(cgroup_id) if self.cgroup_paths is not None else None
        return path or str(cgroup_id)

    # -- per round ----------------------------------------------------------------------------
    def plans(self, arena):
        """The batches this arena's events become, in sending order. A generator: the caller
        encodes each plan before asking for the next, so the raw batch is encoded before the
        semantic pass annotates the arena's slots."""
        n = len(arena)
        if self.config.enable_raw_path:
            size = self.config.batch_size
            if n <= size:
                yield BatchPlan(PATH_RAW, None, slots=(0, n - 1) if n else None)
            else:
                all_slots = self._slots(n)
                for start in range(0, n, size):
                    end = min(start + size, n)
                    yield BatchPlan(PATH_RAW, all_slots[start:end], slots=(start, end - 1))
        if self.semantic is not None:
            order, n_priority = self.semantic.process(arena)
            size = self.config.semantic_batch_size
            if n_priority:
                # sent ahead of older batches, it accounts for no range: its events lie in the
                # range of a routine batch of this round
                yield BatchPlan(PATH_SEMANTIC, order[:n_priority], priority=True)
            routine = order[n_priority:]
            if not len(routine):
                if n:       # everything filtered, collapsed or priority: a batch still says so
                    yield BatchPlan(PATH_SEMANTIC, routine, slots=(0, n - 1))
                return
            first = 0
            for start in range(0, len(routine), size):
                chunk = routine[start:start + size]
                last = n - 1 if start + size >= len(routine) else chunk[len(chunk) - 1]
                yield BatchPlan(PATH_SEMANTIC, chunk, slots=(first, last))
                first = last + 1

    def _slots(self, n):
        """Slot indices 0..n-1, to cut a big raw round into batches."""
        if len(self._all_slots) < n:
            self._all_slots = memoryview(array.array("I", range(n)))
        return self._all_slots[:n]

    def stats(self):
        return self.semantic.stats() if self.semantic is not None else {}
