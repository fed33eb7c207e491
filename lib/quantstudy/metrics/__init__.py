"""Metrics: the registry (each metric once: unit, direction, statistic, label), the
model-facing measurement (``scoring``: perplexity streams and task-item scoring, used by steps
02 and 03) and the statistics on its arrays (``stats``: bootstrap, verdicts, flips, effects).

Only the registry is imported here: config reads it through this package, and ``scoring``
needs torch (import ``quantstudy.metrics.scoring`` where it is used)."""

from quantstudy.metrics.registry import BUDGET_METRICS, METRIC_TASK, METRICS, Metric, label, metric

__all__ = ["BUDGET_METRICS", "METRIC_TASK", "METRICS", "Metric", "label", "metric"]
