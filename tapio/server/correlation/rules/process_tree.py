"""process_tree: a process and its descendants, from exec to exit, one group per root.

The compiled core (ProcessTable) builds the trees and hands over the finished ones that qualify;
this rule rate-limits them and turns each into a group.

Severity is what a person on call wants to hear about: a tree is `info` (shells run tools that
exit non-zero all day: grep that finds nothing, test, readlink, which) unless something abnormal
happened in it: a process killed by a fatal signal ([fatal_signal] signals) or SIGKILL, or a core
dump; then `warning`. The same thing failing again and again is the crash_loop rule's to say, in
the container or unit where repetition means something: a shell script that ends in a grep that
finds nothing fails every time it runs, and that is routine.
"""
import collections
import signal as _signal

from tapio import vocab
from tapio.server.correlation.groups import counted, fmt_duration, where
from tapio.server.correlation.state import NEVER, SUBJECT_CONTEXT, Rule, process_entry

SIGKILL = int(_signal.SIGKILL)


class ProcessTree(Rule):
    kind = "process_tree"
    # a tree's processes start with their execs: one held back is a process the tree lacks, or
    # knows by its exit only (no program, no command line, perhaps under the wrong parent)
    routine_types = ("exec",)

    @classmethod
    def core_options(cls, config):
        tree = config.process_tree
        return {"max_tree_processes": tree.max_processes,
                "min_processes": tree.min_processes if tree.enabled else NEVER,
                "min_processes_failed": tree.min_processes_failed if tree.enabled else NEVER,
                "tree_grace_s": tree.grace, "tree_max_s": tree.max_duration,
                "split_on_cgroup": tree.split_on_cgroup}

    def __init__(self, state):
        super().__init__(state)
        self.cfg = self.config.process_tree
        self.monotonic = state.engine.monotonic
        # a token bucket: the core frees the trees over the budget without building them
        self.tokens = float(self.cfg.max_groups_per_minute)
        self.tokens_at = self.monotonic()
        self.crash_signals = self.config.fatal_signal_numbers() | {SIGKILL}

    def on_tick(self, now, force):
        limit = self.cfg.max_groups_per_minute
        t = self.monotonic()
        self.tokens = min(float(limit), self.tokens + (t - self.tokens_at) / 60e9 * limit)
        self.tokens_at = t
        suppressed = self.core.trees_suppressed
        trees = self.core.tick_trees(now, force, int(self.tokens))
        self.tokens -= len(trees)
        self.state.engine.trees_rate_limited += self.core.trees_suppressed - suppressed
        for info, nodes in trees:
            self._tree(info, nodes, now)

    def _tree(self, info, nodes, now):
        nodes = [dict(zip(self.core.NODE_FIELDS, n)) for n in nodes]
        group = self.state.new_group(self.kind, nodes[0]["start_ns"])
        processes = [self._process(n, now) for n in nodes]
        for n, p in zip(nodes, processes):
            if n["cgroup_id"]:
                # where it ran its last program (or exited); its events may be gone from the
                # recent ones
                group.cgroups.add(n["cgroup_id"])
            for ref in (n["first_exec"], n["last_exec"], n["exit_event"]):
                if ref is not None:
                    group.add_event(self.recent.event(ref), self.recent.event_id(ref))
            group.span(p["start_ns"], p["end_ns"])
        root = processes[0]
        failed = [p for p in processes if p["state"] == "exited" and (p["exit_code"] or p["signal"])]
        group.attributes["processes"] = processes
        group.set_subject(None, pid=root["pid"], comm=root["comm"], executable=root["executable"],
                          command_line=root["command_line"],
                          **{k: v for k, v in root["context"].items() if k in SUBJECT_CONTEXT})
        group.attributes.update(pids=[p["pid"] for p in processes], process_count=info["processes"],
                                failed=len(failed), running=info["live"],
                                not_recorded=info["dropped"], partial=info["forced"])
        names = collections.Counter()
        for p in processes[1:]:
            label = p["comm"] + (f" ({vocab.exit_text(p['exit_code'], p['signal'])})"
                                 if p["exit_code"] or p["signal"] else "")
            names[label] += 1
        ran = counted(names) if names else "no other process"
        place = where(root.get("context"))
        group.summary = (f"{root['comm']} (pid {root['pid']}{', ' + place if place else ''}) and "
                         f"{info['processes'] - 1} descendant(s) in "
                         f"{fmt_duration(group.end_ns - group.start_ns)}: {ran}"
                         + (f"; {vocab.exit_text(root['exit_code'], root['signal'])}"
                            if root["exit_code"] or root["signal"] else "")
                         + (" (still running when closed)" if info["forced"] else ""))
        crashed = [p for p in failed if p["signal"] in self.crash_signals or p["core_dumped"]]
        group.attributes["crashed"] = len(crashed)
        if crashed:
            group.severity = "warning"
            first = min(crashed, key=lambda p: p["end_ns"])
            group.root_cause = (f"{first['comm']} (pid {first['pid']}) "
                                f"{vocab.exit_text(first['exit_code'], first['signal'], first['core_dumped'])}")
        else:
            group.severity = "info"
            if failed:
                first = min(failed, key=lambda p: p["end_ns"])
                group.root_cause = (f"{first['comm']} (pid {first['pid']}) "
                                    f"{vocab.exit_text(first['exit_code'], first['signal'], first['core_dumped'])}")
        group.status = "closed"
        self.state.finish(group)

    def _process(self, node, now):
        """A process of a group, for its span: from the table's node and its exec/exit events."""
        first = self.recent.event(node["first_exec"]) if node["first_exec"] else None
        last = self.recent.event(node["last_exec"]) if node["last_exec"] else None
        exit_ev = self.recent.event(node["exit_event"]) if node["exit_event"] else None
        return process_entry(node, last or first, exit_ev, now)
