"""The correlation engine: kernel events of one collector -> semantic groups.

config.py   windows and thresholds (one TOML file, --correlation-config)
engine.py   the ingest consumer: feeds the compiled state (tapio._fast.correlate), decides groups
groups.py   what a group is, and the words of its summary and root cause
recent.py   the recent batches of each collector, which event references point into
"""
from tapio.server.correlation.config import CorrelationConfig, load_config
from tapio.server.correlation.engine import CorrelationEngine

__all__ = ["CorrelationConfig", "CorrelationEngine", "load_config"]
