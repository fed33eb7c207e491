"""Metrics: the registry (each metric once: unit, direction, statistic, label)."""
from quantstudy.metrics.registry import BUDGET_METRICS, METRIC_TASK, METRICS, Metric, label, metric

__all__ = ["BUDGET_METRICS", "METRIC_TASK", "METRICS", "Metric", "label", "metric"]
