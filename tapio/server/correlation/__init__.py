"""The correlation engine: kernel events of one collector -> semantic groups.

config.py   windows and thresholds (one TOML file, --correlation-config), one section per rule
engine.py   the ingest consumer: feeds each collector's state and dispatches to the rules
state.py    what one collector's rules share (the compiled core, recent batches, clock), and
            the Rule interface
rules/      one module per group kind (process_tree, crash_loop, oom_kill, connectivity,
            fatal_signal)
groups.py   what a group is, and the words of its summary and root cause
recent.py   the recent batches of each collector, which event references point into
"""
from tapio.server.correlation.config import CorrelationConfig, load_config
from tapio.server.correlation.engine import CorrelationEngine

__all__ = ["CorrelationConfig", "CorrelationEngine", "load_config"]
