"""The per-look analysis and its decision rule: every look (day) gets the SRM check and each
metric's tests (:mod:`quantstudy.steps.rollout.stats`), then one of :data:`DECISIONS`.

Decision rule per look
----------------------
* **stop (SRM)**: the SRM check fails; do not trust this look.
* **roll back**: some metric is significantly worse than baseline and not non-inferior.
* **cut over**: every metric is non-inferior and the rollout has reached its final stage
  (by the schedule in params) or the planned sample size is complete.
* **hold**: the last planned look is reached without cut over or roll back.
* **continue** otherwise (including "non-inferior so far" in earlier stages).
Once a decision other than continue fires, the rollout stops there: later looks keep it.

If spotify-confidence's sequential machinery fails, :func:`sequential_analysis` falls back
to the same library's fixed-horizon z-test with its Bonferroni correction over looks
(``groupby="look"`` without a final sample size makes the library count every look as a
comparison), and says so in ``looks.attrs["method"]`` and a warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import pandas as pd

from quantstudy.config.params import RolloutSection
from quantstudy.rollout_logs import ARMS, require_columns
from quantstudy.steps.rollout.design import PRIMARY, metric_specs, schedule
from quantstudy.steps.rollout.stats import all_metric_tests, cumulative_looks, srm_check

DECISIONS = ("continue", "cut over", "hold", "roll back", "stop (SRM)")
_PER_METRIC_COLUMNS = (
    "mean_baseline",
    "mean_quantized",
    "difference",
    "ni_bound",
    "non_inferior",
    "ci_lower",
    "ci_upper",
    "significantly_worse",
    "margin",
)


def _tests_with_fallback(
    cums: dict[str, pd.DataFrame], specs: list[dict], alpha: float, method: str
) -> tuple[dict[str, pd.DataFrame], str, str]:
    """Every metric's tests, the method used and a note: Bonferroni over looks when the sequential test raises."""
    try:
        return all_metric_tests(cums, specs, alpha, sequential=(method == "sequential")), method, ""
    except Exception as exc:  # noqa: BLE001 - report and fall back to the fixed-horizon test
        if method != "sequential":
            raise
        note = f"sequential test failed ({type(exc).__name__}: {exc}); fell back to Bonferroni over looks"
        warnings.warn(note, RuntimeWarning, stacklevel=3)  # attributed to sequential_analysis's caller
        return all_metric_tests(cums, specs, alpha, sequential=False), "bonferroni", note


def _counts_and_srm(cum: pd.DataFrame, df: pd.DataFrame, rollout_params: RolloutSection) -> pd.DataFrame:
    """Per look (index): cumulative n per arm, the observed and planned quantized share, the SRM check."""
    looks = (
        cum.pivot(index="look", columns="arm", values="count")
        .reindex(columns=list(ARMS), fill_value=0)
        .rename(columns={"baseline": "n_baseline", "quantized": "n_quantized"})
    )
    looks["date"] = cum.groupby("look")["date"].first()
    looks["quantized_share_cum"] = looks["n_quantized"] / (looks["n_baseline"] + looks["n_quantized"])
    srm = srm_check(df, rollout_params).set_index("look")
    for col in ("planned_share_cum", "srm_chi2", "srm_p_value", "srm_ok"):
        looks[col] = srm[col]
    return looks


def _add_metric_columns(
    looks: pd.DataFrame, specs: list[dict], cums: dict[str, pd.DataFrame], tests: dict[str, pd.DataFrame]
) -> None:
    """``m_mean_baseline``, ``m_difference``, ``m_ni_bound``, ... for every metric ``m``."""
    for s in specs:
        m, c, t = s["metric"], cums[s["metric"]], tests[s["metric"]]
        means = c.assign(v=c["sum"] / c["count"].where(c["count"] > 0)).pivot(index="look", columns="arm", values="v")
        looks[f"{m}_mean_baseline"] = means.get("baseline")
        looks[f"{m}_mean_quantized"] = means.get("quantized")
        for col in ("difference", "ni_bound", "non_inferior", "ci_lower", "ci_upper", "significantly_worse"):
            looks[f"{m}_{col}"] = t[col]
        looks[f"{m}_margin"] = s["margin"]


def _add_primary_columns(looks: pd.DataFrame, sat: pd.DataFrame, margin: float) -> None:
    """Satisfaction's test under unprefixed names (``difference``, ``ni_lower``, ``ci_lower``, ...)."""
    looks["mean_baseline"] = looks[f"{PRIMARY}_mean_baseline"]
    looks["mean_quantized"] = looks[f"{PRIMARY}_mean_quantized"]
    looks["difference"] = sat["difference"]
    looks["std_err"] = sat["std_err"]
    looks["ni_lower"] = sat["ni_bound"]  # one-sided, sequential/Bonferroni adjusted
    looks["ni_alpha"] = sat["ni_alpha"]
    looks["non_inferior"] = sat["non_inferior"].astype("boolean")
    looks["ci_lower"] = sat["ci_lower"]  # two-sided, adjusted
    looks["ci_upper"] = sat["ci_upper"]
    looks["p_value"] = sat["p_value"]
    looks["significantly_worse"] = sat["significantly_worse"].astype("boolean")
    looks["margin"] = margin


def _add_stage_flags(looks: pd.DataFrame, plan: pd.DataFrame, final_n: int, names: list[str]) -> None:
    """Stage of each look, whether it is the final stage, and the all-metric verdicts the rule reads."""
    n_days = len(plan)
    last_stage_first_day = int(plan.loc[plan["stage"] == plan["stage"].max(), "day"].min())
    looks["stage"] = looks["look"].map(lambda k: int(plan["stage"].iloc[min(k, n_days) - 1]))
    complete = (looks["n_baseline"] + looks["n_quantized"]) >= final_n
    looks["final_stage"] = (looks["look"] >= last_stage_first_day) | complete
    looks["all_non_inferior"] = looks[[f"{m}_non_inferior" for m in names]].all(axis=1)
    looks["worse_metrics"] = [
        ", ".join(m for m in names if row[f"{m}_significantly_worse"] and not row[f"{m}_non_inferior"])
        for _, row in looks.iterrows()
    ]


def _decide_look(row: Any, names: list[str], n_days: int, srm_alpha: float) -> tuple[str, str]:
    """The decision at one look (a row of the looks table) and the reason for it (module docstring)."""
    pending = [m for m in names if not getattr(row, f"{m}_non_inferior")]
    if not row.srm_ok:
        return "stop (SRM)", (
            f"sample-ratio mismatch: quantized share {row.quantized_share_cum:.4f} vs planned "
            f"{row.planned_share_cum:.4f} (p = {row.srm_p_value:.2g} < {srm_alpha:g}); "
            "do not trust this look"
        )
    if pd.isna(row.difference):
        return ("hold" if row.look >= n_days else "continue"), "one arm has no data yet"
    if row.worse_metrics:
        return "roll back", f"significantly worse, non-inferiority not shown: {row.worse_metrics}"
    if row.all_non_inferior and row.final_stage:
        return "cut over", "every metric non-inferior at the final stage"
    if row.look >= n_days:
        return "hold", "schedule ended without a conclusion; not shown non-inferior: " + ", ".join(pending)
    if row.all_non_inferior:
        return "continue", "every metric non-inferior so far; keep ramping up"
    return "continue", "not yet conclusive; not yet non-inferior: " + ", ".join(pending)


def _sticky_decisions(looks: Iterable[int], at_look: Iterable[str]) -> tuple[list[str], tuple[int, str] | None]:
    """The first decision other than continue stops the rollout: later looks keep it."""
    final, stopped = [], None
    for k, d in zip(looks, at_look):
        if stopped is None and d != "continue":
            stopped = (k, d)
        final.append(stopped[1] if stopped else d)
    return final, stopped


def _look_columns(names: list[str]) -> list[str]:
    """The looks table's columns, in order: counts, SRM, satisfaction, each metric, the decision."""
    cols = [
        "look",
        "date",
        "stage",
        "final_stage",
        "n_baseline",
        "n_quantized",
        "quantized_share_cum",
        "planned_share_cum",
        "srm_chi2",
        "srm_p_value",
        "srm_ok",
        "mean_baseline",
        "mean_quantized",
        "difference",
        "std_err",
        "ni_lower",
        "ni_alpha",
        "non_inferior",
        "ci_lower",
        "ci_upper",
        "p_value",
        "significantly_worse",
        "margin",
    ]
    cols += [f"{m}_{c}" for m in names for c in _PER_METRIC_COLUMNS]
    return cols + ["all_non_inferior", "worse_metrics", "decision_at_look", "reason", "decision"]


def sequential_analysis(df: pd.DataFrame, rollout_params: RolloutSection, method: str = "sequential") -> pd.DataFrame:
    """Per look (day): cumulative n per arm, the SRM check, and per metric (satisfaction and
    each guardrail) the quantized - baseline difference with spotify-confidence's bounds, the
    non-inferiority and harm flags; then the decision (see the module docstring).

    Satisfaction keeps unprefixed columns (``difference``, ``ni_lower``, ``ci_lower``, ...);
    every metric ``m`` also has ``m_difference``, ``m_ni_bound``, ``m_non_inferior``,
    ``m_significantly_worse``, ... (:func:`~quantstudy.steps.rollout.views.metric_table` makes them tidy).

    ``method="sequential"`` (default) uses the library's group-sequential test; if that
    raises, or with ``method="bonferroni"``, the library's fixed-horizon z-test with
    Bonferroni over looks is used instead (``attrs["method"]`` says which).
    """
    if method not in ("sequential", "bonferroni"):
        raise ValueError(f"method must be 'sequential' or 'bonferroni'; found {method!r}")
    specs = metric_specs(rollout_params)
    require_columns(df, rollout_params)
    plan = schedule(rollout_params)
    final_n = int(len(plan) * rollout_params.daily_conversations)
    alpha = float(rollout_params.alpha)
    cums = {s["metric"]: cumulative_looks(df, final_n, s["metric"]) for s in specs}
    tests, used, note = _tests_with_fallback(cums, specs, alpha, method)

    looks = _counts_and_srm(cums[PRIMARY], df, rollout_params)
    _add_metric_columns(looks, specs, cums, tests)
    _add_primary_columns(looks, tests[PRIMARY], specs[0]["margin"])
    looks = looks.reset_index()
    looks.columns.name = None
    names = [s["metric"] for s in specs]
    _add_stage_flags(looks, plan, final_n, names)

    decided = [_decide_look(row, names, len(plan), rollout_params.srm_alpha) for row in looks.itertuples(index=False)]
    looks["decision_at_look"] = [d for d, _ in decided]
    looks["reason"] = [why for _, why in decided]
    final, stopped = _sticky_decisions(looks["look"], looks["decision_at_look"])
    looks["decision"] = final
    looks.attrs.update(
        {
            "method": used,
            "note": note,
            "margin": specs[0]["margin"],
            "alpha": alpha,
            "final_expected_n": final_n,
            "stopped_at_look": stopped[0] if stopped else None,
            "planned_looks": len(plan),
            "srm_alpha": rollout_params.srm_alpha,
            "metrics": specs,
            "simulated": bool(df.attrs.get("simulated", False)),
        }
    )
    out = looks[_look_columns(names)]
    out.attrs = looks.attrs
    return out
