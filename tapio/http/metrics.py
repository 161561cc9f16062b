"""Prometheus metrics read from the counters the programs keep anyway, at scrape time.

Nothing on the hot path touches a metric object: each program registers one custom collector
whose collect() walks its state (ingest counters, pump and delivery stats, the store) and yields
metric families built on the spot. prometheus_client writes the exposition format (text, or
OpenMetrics when the scraper asks for it); its ProcessCollector adds process CPU, memory and
file descriptors.
"""
import math

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                   InfoMetricFamily)
from prometheus_client.exposition import choose_encoder

from tapio.http.asgi import Response


def new_registry(*collectors):
    """One registry per process: our collectors and the process metrics (process_cpu_seconds_total,
    process_resident_memory_bytes, ...)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def metrics_response(registry, accept=""):
    encode, content_type = choose_encoder(accept or "")
    return Response(encode(registry), 200, content_type)


class Families:
    """Builds the families of one scrape: `f.counter(name, help, labels)` returns a family that
    `f.add(name, value, *label_values)` fills; `done()` gives them all, in order."""

    def __init__(self):
        self._families = {}

    def counter(self, name, documentation, labels=()):
        self._families[name] = CounterMetricFamily(name, documentation, labels=list(labels))
        return self._families[name]

    def gauge(self, name, documentation, labels=()):
        self._families[name] = GaugeMetricFamily(name, documentation, labels=list(labels))
        return self._families[name]

    def histogram(self, name, documentation, labels=()):
        self._families[name] = HistogramMetricFamily(name, documentation, labels=list(labels))
        return self._families[name]

    def info(self, name, documentation, labels):
        """name_info{labels} 1 (an info metric: build, version)."""
        self._families[name] = InfoMetricFamily(name, documentation, value=dict(labels))

    def add(self, name, value, *label_values):
        if value is None:
            return
        self._families[name].add_metric(list(label_values), value)

    def add_histogram(self, name, cumulative, total_sum, *label_values):
        """cumulative: [(upper bound, observations at or below it), ..., (inf, all)]."""
        buckets = [("+Inf" if math.isinf(bound) else repr(float(bound)), count)
                   for bound, count in cumulative]
        self._families[name].add_metric(list(label_values), buckets, total_sum)

    def done(self):
        return list(self._families.values())

