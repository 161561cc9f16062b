"""Tapio: kernel events from eBPF, streamed over gRPC, correlated into OpenTelemetry traces."""
__version__ = "0.1.0"
