"""The correlation rules, one module per group kind (see docs/correlation.md, one section each):

process_tree.py   a process and its descendants (the compiled core's finished trees)
crash_loop.py     one executable failing again and again in one container or service
oom_kill.py       an OOM kill, its victim and the processes of its memory cgroup that follow it
connectivity.py   failed connects to one destination (the compiled core's connection table)
fatal_signal.py   a process killed by a fault signal (SIGSEGV, SIGABRT, ...)

A rule is a subclass of state.Rule; its module imports only state, groups, config and the
vocabulary, never another rule. A new group kind is one module here, added to RULES, plus its
[section] in config.py, its section in docs/correlation.md, and its name and intent in
tapio/vocab.py GROUP_KINDS.
"""
from tapio.server.correlation.rules.connectivity import Connectivity
from tapio.server.correlation.rules.crash_loop import CrashLoop
from tapio.server.correlation.rules.fatal_signal import FatalSignal
from tapio.server.correlation.rules.oom_kill import OomKill
from tapio.server.correlation.rules.process_tree import ProcessTree

# the order the engine calls them in (on every hot event, batch and tick)
RULES = (ProcessTree, Connectivity, FatalSignal, OomKill, CrashLoop)

__all__ = ["RULES"]
