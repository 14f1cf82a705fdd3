"""The engine's Prometheus metrics mirrored into Ray's, so they are scraped as Ray's are.

Behind Serve's proxy, a replica's own /metrics is whichever replica the request lands on. Ray
exports each node's metrics from one port and tags Serve metrics with the application, deployment
and replica, so every sample of the engine's registry becomes a Serve gauge of the same name
(Ray prefixes `ray_`): counters and histogram buckets keep their running totals.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from ray.serve.metrics import Gauge

PERIOD_S = 5.0  # Ray's metrics agent reports every few seconds; copying faster gains nothing


class RayMirror:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.gauges: dict[tuple[str, tuple[str, ...]], Gauge] = {}

    def copy(self) -> None:
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation times, not measurements
                    continue
                keys = tuple(sorted(sample.labels))
                gauge = self.gauges.get((sample.name, keys))
                if gauge is None:
                    gauge = Gauge(sample.name, family.documentation, tag_keys=keys or None)
                    self.gauges[sample.name, keys] = gauge
                gauge.set(sample.value, tags=dict(sample.labels) or None)
