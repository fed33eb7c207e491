"""The rollout's design, fixed before launch: the staged schedule with its baseline holdback,
and the metrics tested (satisfaction and each configured guardrail) with their margins.

Holdback and schedule
---------------------
A stage at 100% leaves no concurrent baseline to compare against. The schedule therefore
keeps a :data:`HOLDBACK` (5%) baseline holdback in any stage above 95%: the quantized share
actually served is ``min(stage, 1 - HOLDBACK)``. Day *k* of the logs (the *k*-th calendar day
present) is day *k* of the schedule; the simulator follows it, and real logs are expected to.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from quantstudy.config.params import RolloutSection
from quantstudy.rollout_logs import GUARDRAIL_COLUMNS, RolloutError

PRIMARY = "satisfaction"
HOLDBACK = 0.05  # baseline share kept during a 100% stage, so every look has both arms


def schedule(rollout_params: RolloutSection) -> pd.DataFrame:
    """One row per day: day (1-based), stage (1-based), planned stage share, served quantized share."""
    rows = []
    for s, share in enumerate(rollout_params.stages, start=1):
        for d in range(rollout_params.days_per_stage):
            rows.append({"stage": s, "stage_share": share, "quantized_share": min(share, 1.0 - HOLDBACK)})
    out = pd.DataFrame(rows)
    out.insert(0, "day", np.arange(1, len(out) + 1))
    return out


def served_shares(rollout_params: RolloutSection, days: int) -> np.ndarray:
    """Served quantized share per day for ``days`` days: the schedule, then its last share."""
    shares = schedule(rollout_params)["quantized_share"].to_numpy(dtype=float)
    if days > len(shares):
        shares = np.concatenate([shares, np.full(days - len(shares), shares[-1])])
    return shares[:days]


def metric_specs(rollout_params: RolloutSection) -> list[dict[str, Any]]:
    """Satisfaction (the primary metric) and each configured guardrail: what is tested, how.

    ``scale`` turns a difference into its display unit (x100 = points for shares)."""
    if rollout_params.margin is None:
        raise RolloutError(
            "rollout.margin is not set: take it from the quality budget with "
            "quantstudy.config.params.rollout_margin(params) (rollout.run_step does)"
        )
    specs = [
        {
            "metric": PRIMARY,
            "label": "primary metric",
            "margin": float(rollout_params.margin),
            "higher_is_better": True,
            "binary": True,
            "unit": "points",
            "scale": 100.0,
            "params_field": "rollout.margin (default: the budget's satisfaction line)",
        }
    ]
    for i, g in enumerate(rollout_params.guardrails):
        info = GUARDRAIL_COLUMNS[g.column]
        specs.append(
            {
                "metric": g.column,
                "label": info["label"],
                "margin": float(g.margin),
                "higher_is_better": bool(g.higher_is_better),
                "binary": info["binary"],
                "unit": info["unit"],
                "scale": 100.0 if info["binary"] else 1.0,
                "params_field": f"rollout.guardrails[{i}]",
            }
        )
    return specs


def planning_baseline_and_sd(rollout_params: RolloutSection, metric: str) -> tuple[float, float, str]:
    """Planning baseline, standard deviation and where they come from (params)."""
    p = {
        "satisfaction": rollout_params.baseline_satisfaction,
        "escalated": rollout_params.baseline_escalation,
        "resolved": rollout_params.baseline_resolved,
    }.get(metric)
    if p is not None:
        field = {
            "satisfaction": "baseline_satisfaction",
            "escalated": "baseline_escalation",
            "resolved": "baseline_resolved",
        }[metric]
        return float(p), math.sqrt(p * (1 - p)), f"sqrt(p(1-p)), p = rollout.{field}"
    return float(rollout_params.baseline_latency_s), float(rollout_params.latency_sd_s), "rollout.latency_sd_s"
