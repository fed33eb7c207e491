"""Step 05, rollout analysis: a staged rollout of the 4-bit model behind a feature flag.

Pieces
------
* :func:`read_logs` reads real rollout logs (CSV or Parquet) and validates their schema.
* :func:`simulate_logs` produces seeded, clearly marked *simulated* logs in the same schema.
* :func:`daily_summary` gives descriptive per-day, per-arm satisfaction with 95% CIs.
* :func:`sequential_analysis` runs the group-sequential non-inferiority analysis with
  spotify-confidence and turns every look into continue / cut over / roll back.
* :func:`plot_daily` and :func:`plot_sequential` draw the two figures of the step.
* :func:`analyse` strings it all together from a :class:`~quantstudy.params.RolloutSection`.

Log schema
----------
``timestamp``        parseable date-time (one look per calendar day of the timestamps)
``arm``              exactly ``"baseline"`` or ``"quantized"``
``conversation_id``  string
``satisfaction``     number in [0, 1] (a 0/1 thumbs-up or a CSAT scaled to [0, 1])
``resolved``         optional, 0/1 or true/false

Row numbers in error messages are *data rows counted from 1, header not counted* (the
first row under the header is data row 1; in a CSV file that row is on line 2).

Holdback
--------
A stage at 100% leaves no concurrent baseline to compare against. The schedule therefore
keeps a :data:`HOLDBACK` (5%) baseline holdback in any stage above 95%: the quantized share
actually served is ``min(stage, 1 - HOLDBACK)``. The simulator follows this schedule, and
real logs are expected to do the same (the analysis only uses looks where both arms have data).

Statistics (all computed by spotify-confidence, nothing hand-written)
---------------------------------------------------------------------
Looks are days. For look *k* the data are cumulative over days 1..k, per arm: sum of
satisfaction, sum of squares, count. Two analyses are run on that table with
``spotify_confidence.ZTest(..., ordinal_group_column="look", interval_size=1 - alpha)``:

1. **Non-inferiority** (one-sided, preferred direction "increase"):
   ``ztest.difference(level_1="baseline", level_2="quantized", groupby="look",
   non_inferiority_margins=True, final_expected_sample_size_column="final_expected_n")``.
   spotify-confidence takes the margin *relative to the level_1 (baseline) mean*: with
   ``(nim, "increase")`` the null hypothesis is ``diff <= -nim * mean_baseline``. Our margin
   is absolute (``rollout.margin`` satisfaction points), so each look's row carries
   ``non_inferiority_margin = margin / cumulative baseline mean at that look``, which makes
   the library's null exactly ``diff <= -margin`` (its ``null_hypothesis`` column shows
   ``-margin``; this is checked at run time). Non-inferiority is established at a look when
   the library flags the comparison significant, i.e. the sequential (alpha-spending)
   adjusted one-sided lower bound of ``quantized - baseline`` lies above ``-margin``.
2. **Harm guardrail** (two-sided, no margin), same call without margins. The quantized arm
   is *significantly worse* when the library flags it significant with a negative
   difference, i.e. the adjusted two-sided upper bound is below 0.

The sequential boundaries are spotify-confidence's Lan-DeMets alpha spending
(``alpha * t**2``), with information fraction ``t`` = cumulative conversations (both arms)
/ ``final_expected_n`` (the planned total: stages x days x daily conversations).

Decision rule per look
----------------------
* **roll back**: the quantized arm is significantly worse than baseline (harm guardrail)
  and non-inferiority is not established at that look. This covers "worse by more than the
  margin" (an upper bound below ``-margin`` implies both).
* **cut over**: non-inferiority is established and the rollout has reached its final stage
  (by the schedule in params) or the planned sample size is complete.
* **continue** otherwise (including "non-inferior so far" in earlier stages).
Once cut over or roll back fires, the rollout stops there: later looks keep that decision.

If spotify-confidence's sequential machinery fails, :func:`sequential_analysis` falls back
to the same library's fixed-horizon z-test with its Bonferroni correction over looks
(``groupby="look"`` without a final sample size makes the library count every look as a
comparison), and says so in ``looks.attrs["method"]`` and a warning.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from quantstudy.params import RolloutSection
from quantstudy.paths import resolve

ARMS = ("baseline", "quantized")
REQUIRED_COLUMNS = ("timestamp", "arm", "conversation_id", "satisfaction")
OPTIONAL_COLUMNS = ("resolved",)
HOLDBACK = 0.05  # baseline share kept during a 100% stage, so every look has both arms
SIM_START = pd.Timestamp("2024-01-01")
DECISIONS = ("continue", "cut over", "roll back")
ROW_CONVENTION = "data rows counted from 1, header not counted"


class RolloutError(ValueError):
    """Bad rollout logs. ``str(err)`` names the file, the column and the first bad row."""


# --------------------------------------------------------------------------- reading logs
def _bad(source: str, column: str, row: int | None, expected: str, found: Any) -> RolloutError:
    where = "header" if row is None else f"data row {row} ({ROW_CONVENTION})"
    return RolloutError(f"{source}: column '{column}', {where}: expected {expected}; found {found!r}")


def _first_bad(mask: pd.Series) -> int:
    """1-based data row of the first True in a boolean mask over a RangeIndex frame."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _parse_timestamps(values: pd.Series) -> pd.Series:
    try:
        parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    except (TypeError, ValueError):  # e.g. mixed time zones: parse one by one
        parsed = pd.Series([pd.to_datetime(v, errors="coerce") for v in values], index=values.index)
        parsed = parsed.map(lambda t: t.tz_convert(None) if getattr(t, "tzinfo", None) else t)
        parsed = pd.to_datetime(parsed)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert(None)
    return parsed


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        return {"1": True, "0": False, "true": True, "false": False}.get(v.strip().lower())
    if isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1):
        return bool(v)
    return None


def validate_logs(df: pd.DataFrame, source: str = "<logs>") -> pd.DataFrame:
    """Check and normalise a log frame; return a clean copy (see module docstring)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RolloutError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)} in the header; "
            f"required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(map(str, df.columns)) or 'no columns'}")
    out = df.reset_index(drop=True).copy()

    raw = out["timestamp"]
    parsed = _parse_timestamps(raw)
    bad = parsed.isna()
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "timestamp", r, "a date-time such as 2024-01-31 14:05:00", raw.iloc[r - 1])
    out["timestamp"] = parsed

    bad = ~out["arm"].isin(ARMS)
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "arm", r, f"one of {', '.join(repr(a) for a in ARMS)}", out["arm"].iloc[r - 1])

    bad = out["conversation_id"].isna()
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "conversation_id", r, "a non-empty id", out["conversation_id"].iloc[r - 1])
    out["conversation_id"] = out["conversation_id"].astype(str)

    raw = out["satisfaction"]
    values = pd.to_numeric(raw.map(lambda v: int(v) if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
    bad = values.isna()
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "satisfaction", r, "a number in [0, 1]", raw.iloc[r - 1])
    bad = (values < 0) | (values > 1)
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "satisfaction", r, "a number in [0, 1] (scale CSAT to [0, 1])", raw.iloc[r - 1])
    out["satisfaction"] = values.astype(float)

    if "resolved" in out.columns:
        raw = out["resolved"]
        conv = raw.map(_to_bool)
        bad = conv.isna()
        if bad.any():
            r = _first_bad(bad)
            raise _bad(source, "resolved", r, "0/1 or true/false", raw.iloc[r - 1])
        out["resolved"] = conv.astype(bool)

    counts = out["arm"].value_counts()
    for arm in ARMS:
        if counts.get(arm, 0) == 0:
            raise RolloutError(
                f"{source}: column 'arm': no rows for arm {arm!r} in any of the {len(out)} data rows "
                f"(empty arm); the analysis needs both {', '.join(repr(a) for a in ARMS)}")
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def read_logs(path: str | Path) -> pd.DataFrame:
    """Read rollout logs from CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``).

    Relative paths are taken from the project root. Raises :class:`RolloutError` naming
    the file, the column and the first bad data row (1-based, header not counted).
    """
    p = resolve(path)
    source = str(path)
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        kind = "csv"
    elif name.endswith((".parquet", ".pq")):
        kind = "parquet"
    else:
        raise RolloutError(f"{source}: unsupported file type {''.join(p.suffixes) or '(none)'!r}; "
                           "expected .csv, .csv.gz, .parquet or .pq")
    if not p.is_file():
        raise RolloutError(f"{source}: rollout log file not found ({p})")
    try:
        if kind == "csv":
            df = pd.read_csv(p, dtype={"conversation_id": str, "arm": str}, keep_default_na=True)
        else:
            df = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise RolloutError(f"{source}: the file is empty; expected a header with "
                           f"{', '.join(REQUIRED_COLUMNS)} and data rows") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise RolloutError(f"{source}: cannot read as {kind}: {type(exc).__name__}: {exc}") from None
    out = validate_logs(df, source)
    out.attrs["source"] = source
    out.attrs["simulated"] = bool(out["simulated"].all()) if "simulated" in out.columns else False
    return out


# --------------------------------------------------------------------------- simulator
def schedule(rollout_params: RolloutSection) -> pd.DataFrame:
    """One row per day: day (1-based), stage (1-based), planned stage share, served quantized share."""
    rows = []
    for s, share in enumerate(rollout_params.stages, start=1):
        for d in range(rollout_params.days_per_stage):
            rows.append({"stage": s, "stage_share": share, "quantized_share": min(share, 1.0 - HOLDBACK)})
    out = pd.DataFrame(rows)
    out.insert(0, "day", np.arange(1, len(out) + 1))
    return out


def simulate_logs(rollout_params: RolloutSection, quality_change_points: float, seed: int,
                  scenario: str | None = None) -> pd.DataFrame:
    """Seeded SIMULATED logs in the :func:`read_logs` schema (plus ``simulated=True``).

    Scenario "measured": quantized rate = baseline + satisfaction_per_point * quality_change_points
    (the task-accuracy change from step 03, negative = worse). Scenario "worse": quantized
    rate = baseline - worse_drop. Satisfaction is Bernoulli per conversation; both arms
    share a day-level fluctuation uniform in [-1%, +1%]. Arms are assigned per conversation
    with the day's served quantized share (see :data:`HOLDBACK`).
    """
    scenario = scenario or rollout_params.scenario
    base = rollout_params.baseline_satisfaction
    if scenario == "measured":
        quant = base + rollout_params.satisfaction_per_point * float(quality_change_points)
    elif scenario == "worse":
        quant = base - rollout_params.worse_drop
    else:
        raise ValueError(f"unknown scenario {scenario!r}; expected 'measured' or 'worse'")
    rng = np.random.default_rng(seed)
    plan = schedule(rollout_params)
    n_day = rollout_params.daily_conversations
    frames = []
    for day in plan.itertuples(index=False):
        shift = rng.uniform(-0.01, 0.01)
        is_q = rng.random(n_day) < day.quantized_share
        rate = np.clip(np.where(is_q, quant, base) + shift, 0.0, 1.0)
        sat = (rng.random(n_day) < rate).astype(float)
        resolved = np.where(sat > 0, rng.random(n_day) < 0.9, rng.random(n_day) < 0.4)
        seconds = np.sort(rng.uniform(0, 86400, n_day))
        ts = SIM_START + pd.Timedelta(days=int(day.day) - 1) + pd.to_timedelta(seconds, unit="s").floor("s")
        frames.append(pd.DataFrame({
            "timestamp": ts,
            "arm": np.where(is_q, "quantized", "baseline"),
            "satisfaction": sat,
            "resolved": resolved,
        }))
    df = pd.concat(frames, ignore_index=True)
    df.insert(2, "conversation_id", [f"sim-{i:07d}" for i in range(len(df))])
    df["simulated"] = True
    df.attrs.update({"simulated": True, "label": "SIMULATED", "scenario": scenario, "seed": int(seed),
                     "true_rates": {"baseline": base, "quantized": quant}})
    return df


# --------------------------------------------------------------------------- daily summary
def _is_binary(x: pd.Series) -> bool:
    return bool(np.isin(x.to_numpy(), (0.0, 1.0)).all())


def daily_summary(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per day and arm: n, mean satisfaction, CI (Wilson for 0/1 data, normal approx otherwise)
    and the arm's share of that day's traffic. Descriptive only (no multiplicity control)."""
    from statsmodels.stats.proportion import proportion_confint

    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize())
    z = stats.norm.ppf(0.5 + confidence / 2)
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
        rows.append({"date": date, "arm": arm, "n": n, "mean": mean, "ci_low": float(lo),
                     "ci_high": float(hi), "ci_method": method})
    out = pd.DataFrame(rows)
    totals = out.groupby("date")["n"].transform("sum")
    out["share"] = out["n"] / totals
    days = {dt: i for i, dt in enumerate(sorted(out["date"].unique()), start=1)}
    out.insert(1, "day", out["date"].map(days))
    out.attrs["simulated"] = bool(df.attrs.get("simulated", False))
    out.attrs["confidence"] = confidence
    return out


# --------------------------------------------------------------------------- sequential analysis
def cumulative_looks(df: pd.DataFrame, final_expected_n: int) -> pd.DataFrame:
    """Cumulative per-look (= per-day) sufficient statistics per arm, the ZTest input."""
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize(),
                  sat=df["satisfaction"].astype(float))
    daily = (d.groupby(["date", "arm"]).agg(sum=("sat", "sum"), sum_sq=("sat", lambda s: float((s ** 2).sum())),
                                            count=("sat", "size"))
             .unstack("arm", fill_value=0).stack("arm", future_stack=True).fillna(0).reset_index())
    daily = daily.sort_values(["arm", "date"])
    for col in ("sum", "sum_sq", "count"):
        daily[col] = daily.groupby("arm")[col].cumsum()
    dates = sorted(daily["date"].unique())
    daily["look"] = daily["date"].map({dt: i for i, dt in enumerate(dates, start=1)})
    daily["final_expected_n"] = int(max(final_expected_n, len(df)))
    daily["count"] = daily["count"].astype(int)
    return daily.sort_values(["look", "arm"]).reset_index(drop=True)[
        ["look", "date", "arm", "sum", "sum_sq", "count", "final_expected_n"]]


def _ztest_difference(data: pd.DataFrame, alpha: float, sequential: bool, nim: bool) -> pd.DataFrame:
    import spotify_confidence as sc

    ztest = sc.ZTest(data, numerator_column="sum", numerator_sum_squares_column="sum_sq",
                     denominator_column="count", categorical_group_columns="arm",
                     ordinal_group_column="look", interval_size=1 - alpha, correction_method="bonferroni")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ztest.difference(
            level_1="baseline", level_2="quantized", groupby="look",
            non_inferiority_margins=True if nim else None,
            final_expected_sample_size_column="final_expected_n" if sequential else None,
            verbose=True)


def sequential_analysis(df: pd.DataFrame, rollout_params: RolloutSection, method: str = "sequential") -> pd.DataFrame:
    """Per look (day): cumulative n per arm, quantized - baseline difference with
    spotify-confidence's bounds, the non-inferiority and harm flags and the decision.

    ``method="sequential"`` (default) uses the library's group-sequential test; if that
    raises, or with ``method="bonferroni"``, the library's fixed-horizon z-test with
    Bonferroni over looks is used instead (``attrs["method"]`` says which).
    """
    if method not in ("sequential", "bonferroni"):
        raise ValueError(f"method must be 'sequential' or 'bonferroni'; found {method!r}")
    plan = schedule(rollout_params)
    final_n = int(len(plan) * rollout_params.daily_conversations)
    cum = cumulative_looks(df, final_n)
    wide = cum.pivot(index="look", columns="arm", values="count")
    usable = wide.index[(wide["baseline"] > 0) & (wide["quantized"] > 0)]
    data = cum[cum["look"].isin(usable)].copy()
    if rollout_params.margin is None:
        raise RolloutError("rollout.margin is not set: take it from the quality budget with "
                           "quantstudy.params.rollout_margin(params) (rollout.run_step does)")
    margin, alpha = float(rollout_params.margin), float(rollout_params.alpha)
    base_mean = (data[data["arm"] == "baseline"].set_index("look").eval("sum / count"))
    data["non_inferiority_margin"] = margin / data["look"].map(base_mean)  # relative NIM, see docstring
    data["preferred_direction"] = "increase"

    used = method
    note = ""
    try:
        ni = _ztest_difference(data, alpha, sequential=(method == "sequential"), nim=True)
        harm = _ztest_difference(data, alpha, sequential=(method == "sequential"), nim=False)
    except Exception as exc:  # noqa: BLE001 - report and fall back to the fixed-horizon test
        if method != "sequential":
            raise
        note = f"sequential test failed ({type(exc).__name__}: {exc}); fell back to Bonferroni over looks"
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        used = "bonferroni"
        ni = _ztest_difference(data, alpha, sequential=False, nim=True)
        harm = _ztest_difference(data, alpha, sequential=False, nim=False)

    ni = ni.set_index("look")
    harm = harm.set_index("look")
    if not np.allclose(ni["null_hypothesis"].astype(float), -margin, atol=1e-9):
        raise RuntimeError("spotify-confidence did not test diff <= -margin; the NIM convention changed")

    looks = cum.pivot(index="look", columns="arm", values="count").rename(
        columns={"baseline": "n_baseline", "quantized": "n_quantized"})
    looks["date"] = cum.groupby("look")["date"].first()
    means = cum.assign(m=cum["sum"] / cum["count"].where(cum["count"] > 0)).pivot(index="look", columns="arm", values="m")
    looks["mean_baseline"] = means["baseline"]
    looks["mean_quantized"] = means["quantized"]
    looks["quantized_share_cum"] = looks["n_quantized"] / (looks["n_baseline"] + looks["n_quantized"])
    looks["difference"] = ni["difference"]
    looks["std_err"] = ni["std_err"]
    looks["ni_lower"] = ni["adjusted ci_lower"]  # one-sided, sequential/Bonferroni adjusted
    looks["ni_alpha"] = ni["adjusted_alpha"]
    looks["non_inferior"] = ni["is_significant"].astype("boolean")
    looks["ci_lower"] = harm["adjusted ci_lower"]  # two-sided, adjusted
    looks["ci_upper"] = harm["adjusted ci_upper"]
    looks["p_value"] = pd.to_numeric(harm["p-value"], errors="coerce")  # None in sequential mode
    looks["significantly_worse"] = (harm["is_significant"].astype(bool) & (harm["difference"] < 0)).reindex(
        looks.index).astype("boolean")
    looks["margin"] = margin
    looks = looks.reset_index()
    looks.columns.name = None

    n_days = len(plan)
    last_stage_first_day = int(plan.loc[plan["stage"] == plan["stage"].max(), "day"].min())
    looks["stage"] = looks["look"].map(lambda k: int(plan["stage"].iloc[min(k, n_days) - 1]))
    complete = (looks["n_baseline"] + looks["n_quantized"]) >= final_n
    looks["final_stage"] = (looks["look"] >= last_stage_first_day) | complete

    raw, reasons = [], []
    for row in looks.itertuples(index=False):
        if pd.isna(row.difference):
            raw.append("continue"); reasons.append("one arm has no data yet")
        elif bool(row.significantly_worse) and not bool(row.non_inferior):
            raw.append("roll back"); reasons.append("quantized significantly worse; non-inferiority not shown")
        elif bool(row.non_inferior) and bool(row.final_stage):
            raw.append("cut over"); reasons.append("non-inferior at the final stage")
        elif bool(row.non_inferior):
            raw.append("continue"); reasons.append("non-inferior so far; keep ramping up")
        else:
            raw.append("continue"); reasons.append("not yet conclusive")
    looks["decision_at_look"] = raw
    looks["reason"] = reasons
    final, stopped = [], None
    for k, d in zip(looks["look"], raw):
        if stopped is None and d != "continue":
            stopped = (k, d)
        final.append(stopped[1] if stopped else d)
    looks["decision"] = final
    looks.attrs.update({"method": used, "note": note, "margin": margin, "alpha": alpha,
                        "final_expected_n": final_n, "stopped_at_look": stopped[0] if stopped else None,
                        "simulated": bool(df.attrs.get("simulated", False))})
    cols = ["look", "date", "stage", "final_stage", "n_baseline", "n_quantized", "quantized_share_cum",
            "mean_baseline", "mean_quantized", "difference", "std_err", "ni_lower", "ni_alpha", "non_inferior",
            "ci_lower", "ci_upper", "p_value", "significantly_worse", "margin", "decision_at_look", "reason",
            "decision"]
    out = looks[cols]
    out.attrs = looks.attrs
    return out


# --------------------------------------------------------------------------- figures
ARM_COLORS = {"baseline": "#1f77b4", "quantized": "#d62728"}
DECISION_COLORS = {"continue": "#555555", "cut over": "#2ca02c", "roll back": "#d62728"}


def _mark_simulated(fig: Figure, ax, title: str, simulated: bool) -> None:
    if simulated:
        title = f"SIMULATED: {title}"
        fig.text(0.5, 0.5, "SIMULATED", fontsize=64, color="grey", alpha=0.18, rotation=25,
                 ha="center", va="center", weight="bold", zorder=0)
    ax.set_title(title)


def plot_daily(daily_df: pd.DataFrame, simulated: bool) -> Figure:
    """Daily satisfaction (mean and CI per arm) with the quantized traffic share on a second axis."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, arm in enumerate(ARMS):
        g = daily_df[daily_df["arm"] == arm].sort_values("day")
        if g.empty:
            continue
        x = g["day"] + (i - 0.5) * 0.12
        ax.errorbar(x, g["mean"], yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]], fmt="o-",
                    capsize=3, color=ARM_COLORS[arm], label=f"{arm} (mean, 95% CI)")
    ax.set_xlabel("rollout day")
    ax.set_ylabel("satisfaction (share satisfied, 0-1)")
    ax2 = ax.twinx()
    q = daily_df[daily_df["arm"] == "quantized"].set_index("day")["share"].reindex(
        sorted(daily_df["day"].unique()), fill_value=0.0)
    ax2.step(q.index, q.to_numpy() * 100, where="mid", color="grey", alpha=0.6, linestyle="--",
             label="quantized traffic share (%)")
    ax2.fill_between(q.index, 0, q.to_numpy() * 100, step="mid", color="grey", alpha=0.08)
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("quantized traffic share (%)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=9)
    ax.set_xticks(sorted(daily_df["day"].unique()))
    _mark_simulated(fig, ax, "Daily satisfaction per arm during the staged rollout", simulated)
    return fig


def plot_sequential(looks_df: pd.DataFrame, margin: float, simulated: bool) -> Figure:
    """Cumulative quantized - baseline difference per look with the library's adjusted bounds,
    lines at 0 and -margin, and the decisions annotated."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    d = looks_df.dropna(subset=["difference"])
    pts = 100.0
    ax.fill_between(d["look"], d["ci_lower"] * pts, d["ci_upper"] * pts, color="#1f77b4", alpha=0.15,
                    label="two-sided adjusted CI (harm guardrail)")
    ax.plot(d["look"], d["difference"] * pts, "o-", color="#1f77b4", label="difference (quantized - baseline)")
    ax.plot(d["look"], d["ni_lower"] * pts, "^--", color="#ff7f0e", label="one-sided adjusted lower bound (NI test)")
    ax.axhline(0, color="black", linewidth=1, label="no difference")
    ax.axhline(-margin * pts, color="#d62728", linestyle=":", linewidth=1.5,
               label=f"non-inferiority margin (-{margin * pts:g} points)")
    prev = None
    for row in looks_df.itertuples(index=False):
        if row.decision != prev and not pd.isna(row.difference):
            ax.annotate(row.decision, (row.look, row.difference * pts), xytext=(0, 14),
                        textcoords="offset points", ha="center", fontsize=9, weight="bold",
                        color=DECISION_COLORS.get(row.decision, "black"),
                        arrowprops={"arrowstyle": "-", "color": "grey"})
        prev = row.decision
    stop = looks_df.attrs.get("stopped_at_look")
    if stop is not None:
        ax.axvline(stop, color="grey", linestyle="-.", linewidth=1, label=f"rollout stops (look {stop})")
    method = looks_df.attrs.get("method", "sequential")
    ax.set_xlabel("look (end of rollout day, cumulative data)")
    ax.set_ylabel("satisfaction difference (percentage points)")
    ax.set_xticks(sorted(looks_df["look"].unique()))
    ax.legend(loc="best", fontsize=9)
    final = looks_df["decision"].iloc[-1] if len(looks_df) else "n/a"
    _mark_simulated(fig, ax, f"Non-inferiority, {'group-sequential' if method == 'sequential' else 'Bonferroni over looks'}"
                    f" (spotify-confidence): final decision '{final}'", simulated)
    return fig


# --------------------------------------------------------------------------- convenience
def analyse(rollout_params: RolloutSection, quality_change_points: float, seed: int) -> dict[str, Any]:
    """Load ``rollout_params.logs`` if set, else simulate (scenario from params); analyse it.

    Returns ``{"logs", "daily", "looks", "decision", "stopped_at_look", "simulated",
    "method", "note", "margin", "alpha", "schedule", "scenario"}``.
    """
    if rollout_params.logs:
        logs = read_logs(rollout_params.logs)
        scenario = None
    else:
        logs = simulate_logs(rollout_params, quality_change_points, seed, rollout_params.scenario)
        scenario = rollout_params.scenario
    simulated = bool(logs.attrs.get("simulated", False))
    daily = daily_summary(logs)
    looks = sequential_analysis(logs, rollout_params)
    return {
        "logs": logs,
        "daily": daily,
        "looks": looks,
        "decision": looks["decision"].iloc[-1],
        "stopped_at_look": looks.attrs["stopped_at_look"],
        "simulated": simulated,
        "method": looks.attrs["method"],
        "note": looks.attrs["note"],
        "margin": rollout_params.margin,
        "alpha": rollout_params.alpha,
        "schedule": schedule(rollout_params),
        "scenario": scenario,
    }


# --------------------------------------------------------------------------- the step
CALIBRATION_COST = {"generic": 0, "mixed": 1, "in_domain": 2}  # cheaper calibration data first
_RULE = ("among the 4-bit AWQ checkpoints that pass every offline budget line, the best {what} on the budget's first "
         "line, {{metric}}; ties go to the cheaper calibration (generic < mixed < in_domain, then fewer samples), "
         "then draw 0; if none passes, the best {short} overall, flagged as failing the budget")
CANDIDATE_RULES = {  # rollout.candidate_rule -> how step 05 picks the checkpoint to ship
    "best_worst_case": _RULE.format(what="worst case (the worse end of its CI)", short="worst case"),
    "best_point": _RULE.format(what="point estimate", short="point estimate"),
}


def _first_budget_line(m: dict) -> dict:
    """The budget's first line that step 03 judged (the satisfaction line is left to the rollout)."""
    judged = {r["metric"] for r in m.get("budget") or []}
    line = next((b for b in m.get("budget_declared") or [] if b["metric"] in judged), None)
    if line is None:
        raise RolloutError("03_evaluate/metrics.json: no offline budget line was judged; "
                           "nothing to rank checkpoints by")
    return line


def _samples(name: str, default: int | None) -> int | None:
    """Calibration samples of a checkpoint: sweep checkpoints carry -n<count> in their name."""
    m = re.search(r"-n(\d+)(?:-|$)", name)
    return int(m.group(1)) if m else default


def _ranked(rows: list[dict], m: dict, rule: str, default_samples: int | None) -> list[dict]:
    """Candidates ranked by the rule: passing first, then score, cheaper calibration, draw 0."""
    line = _first_budget_line(m)
    verdicts = m.get("verdict_by_checkpoint", {})
    lines = {r["checkpoint"]: r for r in m.get("budget") or [] if r["metric"] == line["metric"]}
    out = []
    for r in rows:
        b = lines.get(r["name"]) or {}
        draw = r.get("draw")
        out.append({"checkpoint": r["name"], "passed_offline_budget": verdicts.get(r["name"]) == "pass",
                    "metric": line["metric"], "unit": b.get("unit", line.get("unit")), "limit": b.get("limit"),
                    "worst_case": b.get("worst_case"), "point": b.get("degradation"), "line_verdict": b.get("verdict"),
                    "calibration": r.get("source") or None, "n_samples": _samples(r["name"], default_samples),
                    "draw": None if draw is None else int(draw)})
    score = "worst_case" if rule == "best_worst_case" else "point"

    def key(c: dict) -> tuple:
        inf = float("inf")
        return (not c["passed_offline_budget"], inf if c[score] is None else c[score],
                CALIBRATION_COST.get(c["calibration"], 3), inf if c["n_samples"] is None else c["n_samples"],
                c["draw"] != 0, c["draw"] or 0, c["checkpoint"])

    return sorted(out, key=key)


def candidate_from_evaluation(evaluate_dir: str | Path, rule: str = "best_worst_case",
                              default_samples: int | None = None) -> dict[str, Any]:
    """The checkpoint to roll out, chosen by ``rule`` (see :data:`CANDIDATE_RULES`), its runner-up,
    and its measured task-quality change (from step 03).

    The pool: the 4-bit AWQ checkpoints step 03 evaluated (AutoAWQ search-setting variants left
    out). ``default_samples``: the calibration sample count of checkpoints without ``-n<count>``
    in their name (unknown: ranked after known counts). Quality change = mean change, in accuracy
    points, of the closed-book policy and retention tasks against the baseline (it drives the
    rollout simulator).
    """
    import json

    from quantstudy.paths import resolve

    if rule not in CANDIDATE_RULES:
        raise RolloutError(f"rollout.candidate_rule: unknown rule {rule!r}; "
                           f"expected one of {', '.join(CANDIDATE_RULES)}")
    metrics_path = resolve(evaluate_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise RolloutError(f"{metrics_path} not found: run step 03_evaluate first (input_dirs['03_evaluate'])")
    m = json.loads(metrics_path.read_text())
    rows = {r["name"]: r for r in m["summary"]}
    base = rows["baseline"]
    tasks = [t for t in ("policy_closed_book_acc", "retention_acc") if t in base]

    def change(r: dict) -> float:
        return float(np.mean([100 * (r[t] - base[t]) for t in tasks])) if tasks else 0.0

    awq = [r for n, r in rows.items() if r.get("method") == "awq" and r.get("bits") == 4 and "duo" not in n]
    if not awq:
        raise RolloutError(f"{metrics_path}: no 4-bit AWQ checkpoint was evaluated; nothing to roll out")
    ranked = _ranked(awq, m, rule, default_samples)
    best = ranked[0]
    return {**best, "quality_change_points": round(change(rows[best["checkpoint"]]), 3), "tasks": tasks,
            "rule": rule, "rule_text": CANDIDATE_RULES[rule].format(metric=best["metric"]),
            "runner_up": ranked[1] if len(ranked) > 1 else None, "pool": [c["checkpoint"] for c in ranked]}


def run_step(P, evaluate_dir: str | Path) -> dict[str, Any]:
    """Step 05: the rollout for the candidate from step 03 (margin from the quality budget);
    with the simulator, also the 'worse' scenario, to show that the rollback trigger fires."""
    from quantstudy.params import rollout_margin

    cand = candidate_from_evaluation(evaluate_dir, P.rollout.candidate_rule)
    rp = P.rollout.model_copy(update={"margin": rollout_margin(P)})
    main = analyse(rp, cand["quality_change_points"], P.study.seed)
    out = {"candidate": cand, "main": main, "rollout_params": rp}
    if main["simulated"] and rp.scenario != "worse":
        out["worse"] = analyse(rp.model_copy(update={"scenario": "worse"}), cand["quality_change_points"], P.study.seed + 1)
    return out


def decision_table(result: dict) -> pd.DataFrame:
    cols = ["look", "stage", "n_baseline", "n_quantized", "difference", "ni_lower", "ci_lower", "ci_upper",
            "non_inferior", "significantly_worse", "decision_at_look", "decision"]
    looks = result["looks"]
    return looks[[c for c in cols if c in looks.columns]].round(4)


def write_metrics(output_dir: str | Path, step: dict, wall_s: float) -> dict:
    import json

    def summary(res: dict) -> dict:
        looks = res["looks"]
        last = looks.iloc[-1]
        return {"decision": res["decision"], "stopped_at_look": res["stopped_at_look"], "simulated": res["simulated"],
                "scenario": res["scenario"], "method": res["method"], "note": res["note"], "margin": res["margin"],
                "alpha": res["alpha"], "n_looks": int(len(looks)),
                "final_difference": float(last.get("difference", float("nan"))),
                "final_ni_lower": float(last.get("ni_lower", float("nan"))),
                "conversations": {arm: int((res["logs"]["arm"] == arm).sum()) for arm in ARMS},
                "looks": json.loads(looks.to_json(orient="records", default_handler=str))}

    metrics = {"candidate": step["candidate"], "rollout": summary(step["main"]),
               "stages": list(step["rollout_params"].stages), "wall_s": round(wall_s, 1)}
    if "worse" in step:
        metrics["worse_scenario"] = summary(step["worse"])
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    step["main"]["logs"].to_csv(Path(output_dir) / "rollout_logs.csv", index=False)
    return metrics
