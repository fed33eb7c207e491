"""Every metric the study judges, defined once: what it measures, its unit, which way is better,
the statistic its paired CI uses, and its label in tables and the report.

A leaf module: it imports nothing from the study, so the params models (which check a budget
line's metric name) and every step and the report can all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("policy_closed_book", "policy_grounded", "retention")
TASK_LABELS = {
    "policy_closed_book": "closed-book policy",
    "policy_grounded": "grounded policy",
    "retention": "retention",
}


@dataclass(frozen=True)
class Metric:
    """One metric. ``statistic`` is the paired bootstrap's: ``mean_diff`` (points) or ``ppl_pct``
    (percent change of perplexity). ``budget``: a quality-budget line may name it; ``live``:
    judged by the rollout (step 05), not offline."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    statistic: str
    task: str | None = None
    domain: str | None = None
    budget: bool = True
    live: bool = False


def _task_metrics() -> list[Metric]:
    out = []
    for task in TASKS:
        out.append(Metric(f"{task}_acc", f"{TASK_LABELS[task]} accuracy", "points", True, "mean_diff", task=task))
        # Flip rate: share of items whose correctness differs from the baseline's (either way).
        out.append(
            Metric(
                f"{task}_flip_rate",
                f"{TASK_LABELS[task]} flip rate",
                "points",
                False,
                "mean_diff",
                task=task,
                budget=False,
            )
        )
    return out


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        *_task_metrics(),
        Metric("indomain_ppl", "in-domain perplexity", "percent", False, "ppl_pct", domain="in_domain"),
        Metric("generic_ppl", "generic perplexity", "percent", False, "ppl_pct", domain="generic"),
        Metric("indomain_top1_agreement", "in-domain top-1 agreement", "points", True, "mean_diff", domain="in_domain"),
        Metric("satisfaction", "user satisfaction", "points", True, "mean_diff", live=True),
    ]
}

# Metrics a quality-budget line may name, in the order the params docs list them.
BUDGET_METRICS = tuple(m.name for m in METRICS.values() if m.budget)
# Task accuracy metric -> task.
METRIC_TASK = {m.name: m.task for m in METRICS.values() if m.task and m.name.endswith("_acc")}


def metric(name: str) -> Metric:
    """The registered metric, or a ValueError that lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def label(name: str) -> str:
    """The metric's label for tables and the report (the name itself when unregistered)."""
    return METRICS[name].label if name in METRICS else name
