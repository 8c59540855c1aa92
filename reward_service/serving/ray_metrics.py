"""A replica's Prometheus metrics mirrored into Ray's, so the deployment is measured as a whole.

Through Serve's proxy, GET /metrics answers from whichever replica the request reaches. Ray's
metrics agent instead exports every worker's `ray.util.metrics` on one port per node (the
replicas' series told apart by a `WorkerId` label), which Prometheus sums: `sum without
(WorkerId) (ray_reward_items_scored_total)` counts the items all replicas scored. Each replica
copies its own registry there every `SYNC_PERIOD_S`: gauges as gauges (queue depth, items
admitted), counters and each histogram's `_bucket`, `_sum` and `_count` as counters, advanced by
what they grew since the last copy. Names keep ours under Ray's `ray_` prefix.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from ray.util import metrics as ray_metrics

# Ray's agent exports every few seconds itself; copying more often than that buys nothing.
SYNC_PERIOD_S = 2.0


class RayMetricsMirror:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._metrics: dict[str, Any] = {}
        # The counter values already passed to Ray, per series.
        self._passed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def sync(self) -> None:
        for family in self._registry.collect():
            is_gauge = family.type == "gauge"
            for sample in family.samples:
                if sample.name.endswith("_created"):  # prometheus-client's creation timestamps
                    continue
                metric = self._metric(sample.name, family.documentation, is_gauge, sample.labels)
                tags = dict(sample.labels)
                if is_gauge:
                    metric.set(sample.value, tags=tags)
                    continue
                series = (sample.name, tuple(sorted(tags.items())))
                grown = sample.value - self._passed.get(series, 0.0)
                if grown > 0:
                    metric.inc(grown, tags=tags)
                    self._passed[series] = sample.value

    def _metric(self, name: str, documentation: str, is_gauge: bool, labels: dict[str, str]):
        if name not in self._metrics:
            kind = ray_metrics.Gauge if is_gauge else ray_metrics.Counter
            self._metrics[name] = kind(name, description=documentation, tag_keys=tuple(labels))
        return self._metrics[name]
