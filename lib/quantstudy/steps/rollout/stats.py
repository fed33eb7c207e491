"""The rollout's statistics: descriptive daily summaries, the cumulative per-look data, the
non-inferiority and harm tests per metric (spotify-confidence, group-sequential), the
sample-ratio-mismatch check and the pre-launch power plan.

Metrics and the ship rule
-------------------------
The primary metric (satisfaction, margin from the quality budget) and each guardrail of
``rollout.guardrails`` (escalated, resolved, latency_s, each with its own absolute margin) are
tested for non-inferiority. The ship rule is intersection-union: cut over only when *every*
metric is non-inferior. Following Schultzberg, Ankargren and Frånberg (2024), "Risk-aware
product decisions in A/B tests with multiple metrics", such a rule needs no alpha correction
across the non-inferiority tests (each is run at ``alpha``), but the type-II error must be split:
each test is planned at power ``1 - beta/K`` (``beta = 1 - rollout.power``, ``K`` = number of
metrics tested), so that all K pass with probability >= ``1 - beta`` when nothing changed.

Statistics (all computed by spotify-confidence, nothing hand-written)
---------------------------------------------------------------------
Looks are days. For look *k* the data are cumulative over days 1..k, per arm and metric: sum,
sum of squares, count. Two analyses are run per metric with
``spotify_confidence.ZTest(..., ordinal_group_column="look", interval_size=1 - alpha)``:

1. **Non-inferiority** (one-sided; preferred direction "increase" for higher-is-better metrics,
   "decrease" for lower-is-better ones):
   ``ztest.difference(level_1="baseline", level_2="quantized", groupby="look",
   non_inferiority_margins=True, final_expected_sample_size_column="final_expected_n")``.
   spotify-confidence takes the margin *relative to the level_1 (baseline) mean*: with
   ``(nim, "increase")`` the null hypothesis is ``diff <= -nim * mean_baseline``, with
   ``(nim, "decrease")`` it is ``diff >= +nim * mean_baseline``. Our margins are absolute, so
   each look's row carries ``non_inferiority_margin = margin / cumulative baseline mean``, which
   makes the library's null exactly ``diff <= -margin`` (or ``>= +margin``); its
   ``null_hypothesis`` column is checked against that at run time. Non-inferiority is
   established when the library flags the comparison significant: the sequential (alpha-
   spending) adjusted one-sided bound of ``quantized - baseline`` lies on the good side of the
   margin (``ni_bound``: lower bound above ``-margin``, or upper bound below ``+margin``).
2. **Harm test** (two-sided, no margin), same call without margins. A metric is *significantly
   worse* when the library flags it significant with a difference in the bad direction. These
   rollback tests are not corrected across metrics: a false rollback is the safe error.

The sequential boundaries are spotify-confidence's Lan-DeMets alpha spending
(``alpha * t**2``), with information fraction ``t`` = cumulative conversations (both arms)
/ ``final_expected_n`` (the planned total: stages x days x daily conversations).

Sample-ratio mismatch (SRM)
---------------------------
At every look the cumulative counts per arm are compared with the counts expected from the
schedule's served shares (``sum over days of n_day * share_day``) by a chi-square goodness-of-fit
test (scipy). ``p < rollout.srm_alpha`` (default 0.001) means the assignment or the logging is
broken: the look is not trusted and the rollout stops there with "stop (SRM)", whatever the
metrics say (a lossy logger that drops one arm's conversations biases every metric).

Power plan
----------
:func:`power_plan` uses each metric's margin, its baseline and variance (``p(1-p)`` for 0/1
metrics, ``rollout.latency_sd_s**2`` for latency; for a CSAT scaled to [0, 1] ``p(1-p)`` is an
upper bound), the one-sided ``alpha``, the schedule's served shares per day and
``daily_conversations``, and assumes no true difference. Per day it computes the power of each
metric's test with the cumulative counts per arm (statsmodels ``normal_power``, as in ``NormalIndPower``) and reports
the first day at which every metric reaches ``1 - beta/K``. It is a fixed-horizon
approximation: the group-sequential test spends some alpha at earlier looks, so its real power
at the same day is slightly lower (the plan is slightly optimistic).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import chisquare, norm
from statsmodels.stats.power import normal_power
from statsmodels.stats.proportion import proportion_confint

from quantstudy.config.params import RolloutSection
from quantstudy.rollout_logs import ARMS
from quantstudy.steps.rollout.design import PRIMARY, metric_specs, planning_baseline_and_sd, schedule, served_shares


# --------------------------------------------------------------------------- daily summary
def _is_binary(x: pd.Series) -> bool:
    return bool(np.isin(x.to_numpy(), (0.0, 1.0)).all())


def daily_summary(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per day and arm: n, mean satisfaction, CI (Wilson for 0/1 data, normal approx otherwise)
    and the arm's share of that day's traffic. Descriptive only (no multiplicity control)."""
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize())
    z = norm.ppf(0.5 + confidence / 2)
    rows = []
    for (date, arm), g in d.groupby(["date", "arm"], sort=True):
        x = g["satisfaction"].astype(float)
        n, mean = len(x), float(x.mean())
        if _is_binary(x):
            lo, hi = proportion_confint(int(x.sum()), n, alpha=1 - confidence, method="wilson")
            method = "wilson"
        else:
            half = z * float(x.std(ddof=1)) / np.sqrt(n) if n > 1 else np.nan
            lo, hi = max(0.0, mean - half), min(1.0, mean + half)
            method = "normal"
        rows.append(
            {
                "date": date,
                "arm": arm,
                "n": n,
                "mean": mean,
                "ci_low": float(lo),
                "ci_high": float(hi),
                "ci_method": method,
            }
        )
    out = pd.DataFrame(rows)
    totals = out.groupby("date")["n"].transform("sum")
    out["share"] = out["n"] / totals
    days = {dt: i for i, dt in enumerate(sorted(out["date"].unique()), start=1)}
    out.insert(1, "day", out["date"].map(days))
    out.attrs["simulated"] = bool(df.attrs.get("simulated", False))
    out.attrs["confidence"] = confidence
    return out


# --------------------------------------------------------------------------- power plan
def power_curve(rollout_params: RolloutSection, days: int | None = None) -> pd.DataFrame:
    """Per day and metric: cumulative planned conversations per arm and the fixed-horizon power
    of the one-sided non-inferiority test at ``alpha`` when nothing changed (statsmodels)."""
    n_sched = len(schedule(rollout_params))
    days = int(days or n_sched)
    shares = served_shares(rollout_params, days)
    n_day = rollout_params.daily_conversations
    n_q = np.cumsum(n_day * shares)
    n_b = np.cumsum(n_day * (1.0 - shares))
    n_eff = 1.0 / (1.0 / n_q + 1.0 / n_b)  # two samples -> one: what NormalIndPower does with ratio n_b / n_q
    rows = []
    for spec in metric_specs(rollout_params):
        baseline, sd, _ = planning_baseline_and_sd(rollout_params, spec["metric"])
        pw = normal_power(spec["margin"] / sd, n_eff, rollout_params.alpha, alternative="larger")
        for d in range(days):
            rows.append(
                {
                    "day": d + 1,
                    "metric": spec["metric"],
                    "n_quantized": float(n_q[d]),
                    "n_baseline": float(n_b[d]),
                    "power": float(pw[d]),
                    "scheduled": d < n_sched,
                }
            )
    return pd.DataFrame(rows)


def _power_row(rollout_params: RolloutSection, spec: dict, curve: pd.DataFrame, target: float, n_sched: int) -> dict:
    """One metric's line of the power plan: days needed to reach ``target`` and power at the schedule's end."""
    c = curve[curve["metric"] == spec["metric"]].reset_index(drop=True)
    reached = c.index[c["power"] >= target]
    needed = int(c.loc[reached[0], "day"]) if len(reached) else None
    baseline, sd, sd_from = planning_baseline_and_sd(rollout_params, spec["metric"])
    at_end = c.iloc[n_sched - 1]
    return {
        "metric": spec["metric"],
        "direction": "higher is better" if spec["higher_is_better"] else "lower is better",
        "margin": spec["margin"],
        "unit": spec["unit"],
        "baseline": baseline,
        "sd": sd,
        "sd_from": sd_from,
        "alpha_one_sided": rollout_params.alpha,
        "power_target": target,
        "days_needed": needed,
        "days_scheduled": n_sched,
        "power_at_schedule_end": float(at_end["power"]),
        "n_quantized_at_end": int(round(at_end["n_quantized"])),
        "n_baseline_at_end": int(round(at_end["n_baseline"])),
        "enough": needed is not None and needed <= n_sched,
    }


def power_plan(rollout_params: RolloutSection, max_days: int = 365) -> pd.DataFrame:
    """Before launch: per metric, the days needed for its test to reach power ``1 - beta/K``
    (Schultzberg et al. 2024, see the module docstring), and whether the schedule gets there.

    ``attrs``: ``K``, ``power`` (whole rule), ``power_per_metric``, ``days_needed`` (every metric;
    None when not within ``max_days``), ``days_scheduled``, ``sufficient``, ``warning`` (a
    sentence, or None) and ``note`` (the fixed-horizon caveat)."""
    specs = metric_specs(rollout_params)
    K = len(specs)
    beta = 1.0 - rollout_params.power
    target = 1.0 - beta / K
    n_sched = len(schedule(rollout_params))
    curve = power_curve(rollout_params, max(max_days, n_sched))
    rows = [_power_row(rollout_params, spec, curve, target, n_sched) for spec in specs]
    out = pd.DataFrame(rows)
    needed = None if out["days_needed"].isna().any() else int(out["days_needed"].max())
    sufficient = bool(out["enough"].all())
    short = [r["metric"] for r in rows if not r["enough"]]
    warning = (
        None
        if sufficient
        else (
            f"UNDERPOWERED: the schedule ({n_sched} days at {rollout_params.daily_conversations} conversations/day) gives "
            f"{', '.join(short)} less than {target:.1%} power each; "
            + (f"{needed} days are needed" if needed else f"more than {max(max_days, n_sched)} days are needed")
            + "; expect 'hold' rather than a cut over. Lengthen the stages, add traffic or widen the margins."
        )
    )
    out.attrs.update(
        {
            "K": K,
            "power": rollout_params.power,
            "power_per_metric": target,
            "beta_per_metric": beta / K,
            "alpha_one_sided": rollout_params.alpha,
            "days_needed": needed,
            "days_scheduled": n_sched,
            "daily_conversations": rollout_params.daily_conversations,
            "sufficient": sufficient,
            "warning": warning,
            "note": (
                "fixed-horizon approximation, assuming no true difference: the group-sequential test spends alpha "
                "at earlier looks, so its power on the same day is slightly lower (the plan is slightly optimistic)"
            ),
            "curve": curve[curve["day"] <= max(n_sched, needed or 0)].to_dict(orient="records"),
        }
    )
    return out


# --------------------------------------------------------------------------- SRM check
def srm_check(df: pd.DataFrame, rollout_params: RolloutSection) -> pd.DataFrame:
    """Per look: cumulative counts per arm against the counts expected from the schedule's
    served shares, chi-square goodness of fit (scipy), ``srm_ok`` = p >= rollout.srm_alpha."""
    plan = schedule(rollout_params)
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize())
    counts = d.groupby(["date", "arm"]).size().unstack("arm", fill_value=0).reindex(columns=list(ARMS), fill_value=0)
    counts = counts.sort_index()
    total = counts.sum(axis=1).to_numpy(dtype=float)
    share = served_shares(rollout_params, max(len(counts), len(plan)))[: len(counts)]
    exp_q = np.cumsum(total * share)
    exp_b = np.cumsum(total * (1.0 - share))
    obs_b = np.cumsum(counts["baseline"].to_numpy(dtype=float))
    obs_q = np.cumsum(counts["quantized"].to_numpy(dtype=float))
    rows = []
    for k in range(len(counts)):
        chi2, p = chisquare([obs_b[k], obs_q[k]], [exp_b[k], exp_q[k]])
        rows.append(
            {
                "look": k + 1,
                "date": counts.index[k],
                "n_baseline": int(obs_b[k]),
                "n_quantized": int(obs_q[k]),
                "expected_quantized": float(exp_q[k]),
                "planned_share_cum": float(exp_q[k] / (exp_q[k] + exp_b[k])),
                "observed_share_cum": float(obs_q[k] / (obs_q[k] + obs_b[k])),
                "srm_chi2": float(chi2),
                "srm_p_value": float(p),
                "srm_ok": bool(p >= rollout_params.srm_alpha),
            }
        )
    out = pd.DataFrame(rows)
    out.attrs["srm_alpha"] = rollout_params.srm_alpha
    return out


# --------------------------------------------------------------------------- per-look tests
def cumulative_looks(df: pd.DataFrame, final_expected_n: int, column: str = PRIMARY) -> pd.DataFrame:
    """Cumulative per-look (= per-day) sufficient statistics per arm of ``column``, the ZTest input."""
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize(), sat=df[column].astype(float))
    daily = (
        d.groupby(["date", "arm"])
        .agg(sum=("sat", "sum"), sum_sq=("sat", lambda s: float((s**2).sum())), count=("sat", "size"))
        .unstack("arm", fill_value=0)
        .stack("arm", future_stack=True)
        .fillna(0)
        .reset_index()
    )
    daily = daily.sort_values(["arm", "date"])
    for col in ("sum", "sum_sq", "count"):
        daily[col] = daily.groupby("arm")[col].cumsum()
    dates = sorted(daily["date"].unique())
    daily["look"] = daily["date"].map({dt: i for i, dt in enumerate(dates, start=1)})
    daily["final_expected_n"] = int(max(final_expected_n, len(df)))
    daily["count"] = daily["count"].astype(int)
    return daily.sort_values(["look", "arm"]).reset_index(drop=True)[
        ["look", "date", "arm", "sum", "sum_sq", "count", "final_expected_n"]
    ]


def _ztest_difference(data: pd.DataFrame, alpha: float, sequential: bool, nim: bool) -> pd.DataFrame:
    # lazy: spotify-confidence takes about 2 s to import (chartify, bokeh, ipywidgets) and only the tests need it
    import spotify_confidence as sc

    ztest = sc.ZTest(
        data,
        numerator_column="sum",
        numerator_sum_squares_column="sum_sq",
        denominator_column="count",
        categorical_group_columns="arm",
        ordinal_group_column="look",
        interval_size=1 - alpha,
        correction_method="bonferroni",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ztest.difference(
            level_1="baseline",
            level_2="quantized",
            groupby="look",
            non_inferiority_margins=True if nim else None,
            final_expected_sample_size_column="final_expected_n" if sequential else None,
            verbose=True,
        )


def _no_tests(index: pd.Index) -> pd.DataFrame:
    """The tests' columns when no look has data in both arms yet: no bounds, no flags."""
    out = pd.DataFrame(index=index)
    for col in ("difference", "std_err", "ni_bound", "ni_alpha", "ci_lower", "ci_upper", "p_value"):
        out[col] = np.nan
    out["non_inferior"] = False
    out["significantly_worse"] = False
    return out


def _metric_tests(cum: pd.DataFrame, spec: dict, alpha: float, sequential: bool) -> pd.DataFrame:
    """NI and harm tests of one metric; per look: difference, bounds and flags."""
    wide = cum.pivot(index="look", columns="arm", values="count")
    sums = cum.pivot(index="look", columns="arm", values="sum")
    base_mean = sums["baseline"] / wide["baseline"].where(wide["baseline"] > 0)
    usable = wide.index[(wide["baseline"] > 0) & (wide["quantized"] > 0) & (base_mean > 0)]
    data = cum[cum["look"].isin(usable)].copy()
    if data.empty:
        return _no_tests(wide.index)
    out = pd.DataFrame(index=wide.index)
    margin, higher = spec["margin"], spec["higher_is_better"]
    harm = _ztest_difference(data, alpha, sequential=sequential, nim=False).set_index("look")
    data["non_inferiority_margin"] = margin / data["look"].map(base_mean)  # relative NIM, see module docstring
    data["preferred_direction"] = "increase" if higher else "decrease"
    ni = _ztest_difference(data, alpha, sequential=sequential, nim=True).set_index("look")
    expected_null = -margin if higher else margin
    if not np.allclose(ni["null_hypothesis"].astype(float), expected_null, atol=1e-9):
        raise RuntimeError(
            f"spotify-confidence did not test diff {'<=' if higher else '>='} {expected_null:+g} for "
            f"{spec['metric']}; the NIM convention changed"
        )
    out["difference"] = ni["difference"]
    out["std_err"] = ni["std_err"]
    out["ni_bound"] = ni["adjusted ci_lower" if higher else "adjusted ci_upper"]  # one-sided, adjusted
    out["ni_alpha"] = ni["adjusted_alpha"]
    out["non_inferior"] = ni["is_significant"].reindex(out.index).fillna(False).astype(bool)
    out["ci_lower"] = harm["adjusted ci_lower"]  # two-sided, adjusted
    out["ci_upper"] = harm["adjusted ci_upper"]
    out["p_value"] = pd.to_numeric(harm["p-value"], errors="coerce")  # None in sequential mode
    bad_side = harm["difference"] < 0 if higher else harm["difference"] > 0
    out["significantly_worse"] = (
        (harm["is_significant"].astype(bool) & bad_side).reindex(out.index).fillna(False).astype(bool)
    )
    return out


def all_metric_tests(
    cums: dict[str, pd.DataFrame], specs: list[dict], alpha: float, sequential: bool
) -> dict[str, pd.DataFrame]:
    """:func:`_metric_tests` of every metric in ``specs``, keyed by metric name."""
    return {s["metric"]: _metric_tests(cums[s["metric"]], s, alpha, sequential) for s in specs}
