"""Step 05, rollout analysis: a staged rollout of the 4-bit model behind a feature flag,
analysed the way a trusted experimentation platform would.

Pieces
------
* :func:`read_logs` reads real rollout logs (CSV or Parquet) and validates their schema.
* :func:`simulate_logs` produces seeded, clearly marked *simulated* logs in the same schema.
* :func:`power_plan` says, before launch, how many days the schedule needs for 80% power.
* :func:`srm_check` is the sample-ratio-mismatch check run at every look.
* :func:`daily_summary` gives descriptive per-day, per-arm satisfaction with 95% CIs.
* :func:`sequential_analysis` runs the group-sequential non-inferiority analysis of
  satisfaction and every guardrail with spotify-confidence and turns every look into
  continue / cut over / roll back / hold / stop (SRM).
* :func:`plot_daily`, :func:`plot_sequential`, :func:`plot_guardrails` and :func:`plot_power`
  draw the figures of the step.
* :func:`analyse` strings it all together from a :class:`~quantstudy.config.params.RolloutSection`.

Log schema
----------
``timestamp``        parseable date-time; ISO 8601 with a time zone (``2024-03-04T09:15:00+01:00``)
                     is converted to UTC, a naive one is taken as UTC. One look per UTC calendar day.
``arm``              exactly ``"baseline"`` or ``"quantized"``
``conversation_id``  string
``satisfaction``     number in [0, 1] (a 0/1 thumbs-up or a CSAT scaled to [0, 1]); higher is better
``escalated``        0/1 or true/false: handed over to a human agent; lower is better
``resolved``         0/1 or true/false: resolved without a follow-up contact; higher is better
``latency_s``        number >= 0: the conversation's mean reply latency in seconds; lower is better

The last three are guardrails: optional in the schema (checked when present), required when
``rollout.guardrails`` names them (:func:`require_columns`). Row numbers in error messages are
*data rows counted from 1, header not counted* (the first row under the header is data row 1;
in a CSV file that row is on line 2).

Holdback and schedule
---------------------
A stage at 100% leaves no concurrent baseline to compare against. The schedule therefore
keeps a :data:`HOLDBACK` (5%) baseline holdback in any stage above 95%: the quantized share
actually served is ``min(stage, 1 - HOLDBACK)``. Day *k* of the logs (the *k*-th calendar day
present) is day *k* of the schedule; the simulator follows it, and real logs are expected to.

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

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from quantstudy import contracts
from quantstudy.config.params import RolloutSection
from quantstudy.paths import resolve

ARMS = ("baseline", "quantized")
REQUIRED_COLUMNS = ("timestamp", "arm", "conversation_id", "satisfaction")
PRIMARY = "satisfaction"
GUARDRAIL_COLUMNS: dict[str, dict[str, Any]] = {  # the guardrail columns rollout.guardrails may name
    "escalated": {"higher_is_better": False, "binary": True, "label": "escalation to a human", "unit": "points"},
    "resolved": {"higher_is_better": True, "binary": True, "label": "resolved without a follow-up contact",
                 "unit": "points"},
    "latency_s": {"higher_is_better": False, "binary": False, "label": "reply latency", "unit": "s"},
}
OPTIONAL_COLUMNS = tuple(GUARDRAIL_COLUMNS)
HOLDBACK = 0.05  # baseline share kept during a 100% stage, so every look has both arms
SIM_START = pd.Timestamp("2024-01-01")
SCENARIOS = ("measured", "worse", "broken_assignment")
DECISIONS = ("continue", "cut over", "hold", "roll back", "stop (SRM)")
ROW_CONVENTION = "data rows counted from 1, header not counted"


class RolloutError(ValueError):
    """Bad rollout logs. ``str(err)`` names the file, the column and the first bad row."""


# --------------------------------------------------------------------------- reading logs
def _bad(source: str, column: str, row: int | None, expected: str, found: Any) -> RolloutError:
    where = "header" if row is None else f"data row {row} ({ROW_CONVENTION})"
    if isinstance(found, np.generic):
        found = found.item()  # -0.1, not np.float64(-0.1)
    return RolloutError(f"{source}: column '{column}', {where}: expected {expected}; found {found!r}")


def _first_bad(mask: pd.Series) -> int:
    """1-based data row of the first True in a boolean mask over a RangeIndex frame."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """Naive UTC date-times: aware values (any mix of offsets) are converted, naive ones kept."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
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


def _check_binary(out: pd.DataFrame, source: str, column: str) -> None:
    raw = out[column]
    conv = raw.map(_to_bool)
    bad = conv.isna()
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, column, r, "0/1 or true/false", raw.iloc[r - 1])
    out[column] = conv.astype(bool)


def validate_logs(df: pd.DataFrame, source: str = "<logs>") -> pd.DataFrame:
    """Check and normalise a log frame; return a clean copy (see module docstring)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = (" (not a table with a header row? a CSV needs comma-separated columns)"
                if len(df.columns) <= 1 else "")
        raise RolloutError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)} in the header; "
            f"required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(map(str, df.columns)) or 'no columns'}{hint}")
    out = df.reset_index(drop=True).copy()

    raw = out["timestamp"]
    parsed = _parse_timestamps(raw)
    bad = parsed.isna()
    if bad.any():
        r = _first_bad(bad)
        raise _bad(source, "timestamp", r, "a date-time such as 2024-01-31T14:05:00+01:00", raw.iloc[r - 1])
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

    for column in ("escalated", "resolved"):
        if column in out.columns:
            _check_binary(out, source, column)

    if "latency_s" in out.columns:
        raw = out["latency_s"]
        values = pd.to_numeric(raw.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0.0))
        if bad.any():
            r = _first_bad(bad)
            raise _bad(source, "latency_s", r, "a number of seconds >= 0", raw.iloc[r - 1])
        bad = values < 0
        if bad.any():
            r = _first_bad(bad)
            raise _bad(source, "latency_s", r, "a number of seconds >= 0 (a latency cannot be negative)",
                       raw.iloc[r - 1])
        out["latency_s"] = values.astype(float)

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
        detail = " ".join(str(exc).split())[:160]
        raise RolloutError(f"{source}: not a table: cannot read it as {kind} ({type(exc).__name__}: {detail}); "
                           f"expected a {kind} table with columns {', '.join(REQUIRED_COLUMNS)}") from None
    out = validate_logs(df, source)
    out.attrs["source"] = source
    out.attrs["simulated"] = bool(out["simulated"].all()) if "simulated" in out.columns else False
    return out


def require_columns(logs: pd.DataFrame, rollout_params: RolloutSection) -> None:
    """Every guardrail configured in ``rollout.guardrails`` needs its column in the logs."""
    for i, g in enumerate(rollout_params.guardrails):
        if g.column not in logs.columns:
            source = logs.attrs.get("source", "<logs>")
            raise RolloutError(
                f"{source}: column '{g.column}' is missing from the logs, but params field rollout.guardrails[{i}] "
                f"(column: {g.column}, margin: {g.margin:g}) names it; add the column to the logs or remove the "
                f"guardrail from rollout.guardrails")


# --------------------------------------------------------------------------- metrics
def metric_specs(rollout_params: RolloutSection) -> list[dict[str, Any]]:
    """Satisfaction (the primary metric) and each configured guardrail: what is tested, how.

    ``scale`` turns a difference into its display unit (x100 = points for shares)."""
    if rollout_params.margin is None:
        raise RolloutError("rollout.margin is not set: take it from the quality budget with "
                           "quantstudy.config.params.rollout_margin(params) (rollout.run_step does)")
    specs = [{"metric": PRIMARY, "label": "primary metric", "margin": float(rollout_params.margin),
              "higher_is_better": True, "binary": True, "unit": "points", "scale": 100.0,
              "params_field": "rollout.margin (default: the budget's satisfaction line)"}]
    for i, g in enumerate(rollout_params.guardrails):
        info = GUARDRAIL_COLUMNS[g.column]
        specs.append({"metric": g.column, "label": info["label"], "margin": float(g.margin),
                      "higher_is_better": bool(g.higher_is_better), "binary": info["binary"], "unit": info["unit"],
                      "scale": 100.0 if info["binary"] else 1.0, "params_field": f"rollout.guardrails[{i}]"})
    return specs


def _baseline_and_sd(rollout_params: RolloutSection, metric: str) -> tuple[float, float, str]:
    """Planning baseline, standard deviation and where they come from (params)."""
    p = {"satisfaction": rollout_params.baseline_satisfaction, "escalated": rollout_params.baseline_escalation,
         "resolved": rollout_params.baseline_resolved}.get(metric)
    if p is not None:
        field = {"satisfaction": "baseline_satisfaction", "escalated": "baseline_escalation",
                 "resolved": "baseline_resolved"}[metric]
        return float(p), math.sqrt(p * (1 - p)), f"sqrt(p(1-p)), p = rollout.{field}"
    return float(rollout_params.baseline_latency_s), float(rollout_params.latency_sd_s), "rollout.latency_sd_s"


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


def _lognormal(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
    sigma2 = math.log(1.0 + (sd / mean) ** 2)
    return rng.lognormal(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2), n)


def simulate_logs(rollout_params: RolloutSection, quality_change_points: float, seed: int,
                  scenario: str | None = None, latency_ratio: float = 1.0) -> pd.DataFrame:
    """Seeded SIMULATED logs in the :func:`read_logs` schema (plus ``simulated=True``).

    The quantized arm is driven by step 03's task-accuracy change ``q`` (points, negative =
    worse) and step 04's speed:

    * satisfaction rate = baseline_satisfaction + satisfaction_per_point * q;
    * escalation rate = baseline_escalation - escalation_per_point * q;
    * resolved rate = baseline_resolved + resolution_per_point * q;
    * latency: lognormal with mean baseline_latency_s and sd latency_sd_s, both times
      ``latency_ratio`` (baseline decode tokens/s / quantized decode tokens/s, see
      :func:`latency_from_benchmark`) in the quantized arm.

    Scenarios: "measured" as above; "worse": the quantized satisfaction rate is
    baseline - worse_drop (guardrails as measured); "broken_assignment": as measured, but a
    logging bug loses ``srm_drop`` of the quantized arm's conversations (the SRM check must stop
    it). The 0/1 metrics are Bernoulli per conversation, with a day-level fluctuation uniform in
    [-1%, +1%] shared by both arms; latency has a shared day-level factor in [0.98, 1.02]. Arms
    are assigned per conversation with the day's served quantized share (see :data:`HOLDBACK`).
    """
    scenario = scenario or rollout_params.scenario
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    rp, q = rollout_params, float(quality_change_points)
    base = {"satisfaction": rp.baseline_satisfaction, "escalated": rp.baseline_escalation,
            "resolved": rp.baseline_resolved}
    quant = {"satisfaction": (rp.baseline_satisfaction - rp.worse_drop if scenario == "worse"
                              else rp.baseline_satisfaction + rp.satisfaction_per_point * q),
             "escalated": rp.baseline_escalation - rp.escalation_per_point * q,
             "resolved": rp.baseline_resolved + rp.resolution_per_point * q}
    quant = {k: float(np.clip(v, 0.0, 1.0)) for k, v in quant.items()}
    ratio = float(latency_ratio)
    rng = np.random.default_rng(seed)
    plan = schedule(rp)
    n_day = rp.daily_conversations
    frames = []
    for day in plan.itertuples(index=False):
        shift = rng.uniform(-0.01, 0.01)
        lat_day = rng.uniform(0.98, 1.02)
        is_q = rng.random(n_day) < day.quantized_share

        def draw(metric: str, sign: float = 1.0) -> np.ndarray:
            rate = np.clip(np.where(is_q, quant[metric], base[metric]) + sign * shift, 0.0, 1.0)
            return rng.random(n_day) < rate

        sat = draw("satisfaction").astype(float)
        escalated = draw("escalated", -1.0)
        resolved = draw("resolved")
        latency = np.where(is_q, _lognormal(rng, rp.baseline_latency_s * ratio, rp.latency_sd_s * ratio, n_day),
                           _lognormal(rng, rp.baseline_latency_s, rp.latency_sd_s, n_day)) * lat_day
        lost = is_q & (rng.random(n_day) < rp.srm_drop)
        seconds = np.sort(rng.uniform(0, 86400, n_day))
        ts = SIM_START + pd.Timedelta(days=int(day.day) - 1) + pd.to_timedelta(seconds, unit="s").floor("s")
        frame = pd.DataFrame({
            "timestamp": ts,
            "arm": np.where(is_q, "quantized", "baseline"),
            "satisfaction": sat,
            "escalated": escalated,
            "resolved": resolved,
            "latency_s": np.round(latency, 3),
        })
        frames.append(frame[~lost] if scenario == "broken_assignment" else frame)
    df = pd.concat(frames, ignore_index=True)
    df.insert(2, "conversation_id", [f"sim-{i:07d}" for i in range(len(df))])
    df["simulated"] = True
    df.attrs.update({"simulated": True, "label": "SIMULATED", "scenario": scenario, "seed": int(seed),
                     "latency_ratio": ratio,
                     "true_rates": {"baseline": {**base, "latency_s": rp.baseline_latency_s},
                                    "quantized": {**quant, "latency_s": rp.baseline_latency_s * ratio}}})
    return df


def latency_from_benchmark(benchmark_dir: str | Path | None) -> dict[str, Any]:
    """Quantized / baseline reply-latency ratio from step 04's metrics.json: baseline decode
    tokens/s over the ``fast4`` path's, at batch 1 and the smallest context, ``full_model`` scope
    when present. The study's own checkpoint (``demo``) is used when it has both paths, else the
    production-shaped model. Without the numbers the ratio is 1.0 and ``note`` says why; a
    metrics.json that breaks step 04's contract is an error (:class:`contracts.ContractError`)."""

    def fallback(why: str) -> dict[str, Any]:
        return {"ratio": 1.0, "source": None, "note": f"latency ratio 1.0 (no speed measurement: {why})"}

    if benchmark_dir is None:
        return fallback("no step-04 folder given")
    path = resolve(benchmark_dir) / contracts.FILENAME
    if not path.is_file():
        return fallback(f"{path} not found")
    m = contracts.read("04_benchmark", benchmark_dir)
    for model in ("demo", "production"):
        rows = [r for r in (m.get(model) or {}).get("timings") or [] if r.get("batch") == 1]
        scopes = {r.get("scope") for r in rows}
        scope = "full_model" if "full_model" in scopes else "measured" if "measured" in scopes else None
        rows = [r for r in rows if r.get("scope") == scope] if scope else rows
        by_path = {}
        for r in sorted(rows, key=lambda r: r.get("context") or 0):
            by_path.setdefault(r.get("path"), r)
        b, f = by_path.get("baseline"), by_path.get("fast4")
        if not b or not f or b.get("context") != f.get("context"):
            continue
        b_tok, f_tok = b.get("decode_tok_s_median"), f.get("decode_tok_s_median")
        if not b_tok or not f_tok or b_tok <= 0 or f_tok <= 0:
            continue
        ratio = float(b_tok) / float(f_tok)
        where = f"{model} model, batch 1, context {b.get('context')}, scope {scope}"
        return {"ratio": ratio, "source": f"04_benchmark/metrics.json: {where}", "model": model,
                "baseline_decode_tok_s": float(b_tok), "fast4_decode_tok_s": float(f_tok),
                "note": (f"quantized latency = baseline x {ratio:.3f} (decode {float(b_tok):.1f} tok/s baseline vs "
                         f"{float(f_tok):.1f} tok/s fast4; {where})")}
    return fallback(f"{path} has no batch-1 decode speed for both baseline and fast4")


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


# --------------------------------------------------------------------------- power plan
def _served_shares(rollout_params: RolloutSection, days: int) -> np.ndarray:
    """Served quantized share per day for ``days`` days: the schedule, then its last share."""
    shares = schedule(rollout_params)["quantized_share"].to_numpy(dtype=float)
    if days > len(shares):
        shares = np.concatenate([shares, np.full(days - len(shares), shares[-1])])
    return shares[:days]


def power_curve(rollout_params: RolloutSection, days: int | None = None) -> pd.DataFrame:
    """Per day and metric: cumulative planned conversations per arm and the fixed-horizon power
    of the one-sided non-inferiority test at ``alpha`` when nothing changed (statsmodels)."""
    from statsmodels.stats.power import normal_power

    n_sched = len(schedule(rollout_params))
    days = int(days or n_sched)
    shares = _served_shares(rollout_params, days)
    n_day = rollout_params.daily_conversations
    n_q = np.cumsum(n_day * shares)
    n_b = np.cumsum(n_day * (1.0 - shares))
    n_eff = 1.0 / (1.0 / n_q + 1.0 / n_b)  # two samples -> one: what NormalIndPower does with ratio n_b / n_q
    rows = []
    for spec in metric_specs(rollout_params):
        baseline, sd, _ = _baseline_and_sd(rollout_params, spec["metric"])
        pw = normal_power(spec["margin"] / sd, n_eff, rollout_params.alpha, alternative="larger")
        for d in range(days):
            rows.append({"day": d + 1, "metric": spec["metric"], "n_quantized": float(n_q[d]),
                         "n_baseline": float(n_b[d]), "power": float(pw[d]), "scheduled": d < n_sched})
    return pd.DataFrame(rows)


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
    rows = []
    for spec in specs:
        c = curve[curve["metric"] == spec["metric"]].reset_index(drop=True)
        reached = c.index[c["power"] >= target]
        needed = int(c.loc[reached[0], "day"]) if len(reached) else None
        baseline, sd, sd_from = _baseline_and_sd(rollout_params, spec["metric"])
        at_end = c.iloc[n_sched - 1]
        rows.append({
            "metric": spec["metric"], "direction": "higher is better" if spec["higher_is_better"] else "lower is better",
            "margin": spec["margin"], "unit": spec["unit"], "baseline": baseline, "sd": sd, "sd_from": sd_from,
            "alpha_one_sided": rollout_params.alpha, "power_target": target, "days_needed": needed,
            "days_scheduled": n_sched, "power_at_schedule_end": float(at_end["power"]),
            "n_quantized_at_end": int(round(at_end["n_quantized"])), "n_baseline_at_end": int(round(at_end["n_baseline"])),
            "enough": needed is not None and needed <= n_sched,
        })
    out = pd.DataFrame(rows)
    needed = None if out["days_needed"].isna().any() else int(out["days_needed"].max())
    sufficient = bool(out["enough"].all())
    short = [r["metric"] for r in rows if not r["enough"]]
    warning = None if sufficient else (
        f"UNDERPOWERED: the schedule ({n_sched} days at {rollout_params.daily_conversations} conversations/day) gives "
        f"{', '.join(short)} less than {target:.1%} power each; "
        + (f"{needed} days are needed" if needed else f"more than {max(max_days, n_sched)} days are needed")
        + "; expect 'hold' rather than a cut over. Lengthen the stages, add traffic or widen the margins.")
    out.attrs.update({
        "K": K, "power": rollout_params.power, "power_per_metric": target, "beta_per_metric": beta / K,
        "alpha_one_sided": rollout_params.alpha, "days_needed": needed, "days_scheduled": n_sched,
        "daily_conversations": rollout_params.daily_conversations, "sufficient": sufficient, "warning": warning,
        "note": ("fixed-horizon approximation, assuming no true difference: the group-sequential test spends alpha "
                 "at earlier looks, so its power on the same day is slightly lower (the plan is slightly optimistic)"),
        "curve": curve[curve["day"] <= max(n_sched, needed or 0)].to_dict(orient="records"),
    })
    return out


def power_verdict(plan: pd.DataFrame) -> str:
    """One sentence: days needed vs scheduled, with the warning when underpowered."""
    a = plan.attrs
    needed = a["days_needed"] if a["days_needed"] is not None else "more than the planning horizon's"
    text = (f"Power plan: {a['K']} metrics, each planned at {a['power_per_metric']:.1%} power "
            f"(whole rule {a['power']:.0%}, beta split over K={a['K']}), one-sided alpha {a['alpha_one_sided']}: "
            f"{needed} days needed, {a['days_scheduled']} scheduled; {a['note']}.")
    return (f"WARNING: {a['warning']} " + text) if a["warning"] else text


# --------------------------------------------------------------------------- SRM check
def srm_check(df: pd.DataFrame, rollout_params: RolloutSection) -> pd.DataFrame:
    """Per look: cumulative counts per arm against the counts expected from the schedule's
    served shares, chi-square goodness of fit (scipy), ``srm_ok`` = p >= rollout.srm_alpha."""
    plan = schedule(rollout_params)
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize())
    counts = d.groupby(["date", "arm"]).size().unstack("arm", fill_value=0).reindex(columns=list(ARMS), fill_value=0)
    counts = counts.sort_index()
    total = counts.sum(axis=1).to_numpy(dtype=float)
    share = _served_shares(rollout_params, max(len(counts), len(plan)))[:len(counts)]
    exp_q = np.cumsum(total * share)
    exp_b = np.cumsum(total * (1.0 - share))
    obs_b = np.cumsum(counts["baseline"].to_numpy(dtype=float))
    obs_q = np.cumsum(counts["quantized"].to_numpy(dtype=float))
    rows = []
    for k in range(len(counts)):
        chi2, p = stats.chisquare([obs_b[k], obs_q[k]], [exp_b[k], exp_q[k]])
        rows.append({"look": k + 1, "date": counts.index[k], "n_baseline": int(obs_b[k]), "n_quantized": int(obs_q[k]),
                     "expected_quantized": float(exp_q[k]), "planned_share_cum": float(exp_q[k] / (exp_q[k] + exp_b[k])),
                     "observed_share_cum": float(obs_q[k] / (obs_q[k] + obs_b[k])), "srm_chi2": float(chi2),
                     "srm_p_value": float(p), "srm_ok": bool(p >= rollout_params.srm_alpha)})
    out = pd.DataFrame(rows)
    out.attrs["srm_alpha"] = rollout_params.srm_alpha
    return out


# --------------------------------------------------------------------------- sequential analysis
def cumulative_looks(df: pd.DataFrame, final_expected_n: int, column: str = PRIMARY) -> pd.DataFrame:
    """Cumulative per-look (= per-day) sufficient statistics per arm of ``column``, the ZTest input."""
    d = df.assign(date=pd.to_datetime(df["timestamp"]).dt.normalize(),
                  sat=df[column].astype(float))
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


def _metric_tests(cum: pd.DataFrame, spec: dict, alpha: float, sequential: bool) -> pd.DataFrame:
    """NI and harm tests of one metric; per look: difference, bounds and flags."""
    wide = cum.pivot(index="look", columns="arm", values="count")
    sums = cum.pivot(index="look", columns="arm", values="sum")
    base_mean = sums["baseline"] / wide["baseline"].where(wide["baseline"] > 0)
    usable = wide.index[(wide["baseline"] > 0) & (wide["quantized"] > 0) & (base_mean > 0)]
    data = cum[cum["look"].isin(usable)].copy()
    out = pd.DataFrame(index=wide.index)
    if data.empty:
        for col in ("difference", "std_err", "ni_bound", "ni_alpha", "ci_lower", "ci_upper", "p_value"):
            out[col] = np.nan
        out["non_inferior"] = False
        out["significantly_worse"] = False
        return out
    margin, higher = spec["margin"], spec["higher_is_better"]
    harm = _ztest_difference(data, alpha, sequential=sequential, nim=False).set_index("look")
    data["non_inferiority_margin"] = margin / data["look"].map(base_mean)  # relative NIM, see docstring
    data["preferred_direction"] = "increase" if higher else "decrease"
    ni = _ztest_difference(data, alpha, sequential=sequential, nim=True).set_index("look")
    expected_null = -margin if higher else margin
    if not np.allclose(ni["null_hypothesis"].astype(float), expected_null, atol=1e-9):
        raise RuntimeError(f"spotify-confidence did not test diff {'<=' if higher else '>='} {expected_null:+g} for "
                           f"{spec['metric']}; the NIM convention changed")
    out["difference"] = ni["difference"]
    out["std_err"] = ni["std_err"]
    out["ni_bound"] = ni["adjusted ci_lower" if higher else "adjusted ci_upper"]  # one-sided, adjusted
    out["ni_alpha"] = ni["adjusted_alpha"]
    out["non_inferior"] = ni["is_significant"].reindex(out.index).fillna(False).astype(bool)
    out["ci_lower"] = harm["adjusted ci_lower"]  # two-sided, adjusted
    out["ci_upper"] = harm["adjusted ci_upper"]
    out["p_value"] = pd.to_numeric(harm["p-value"], errors="coerce")  # None in sequential mode
    bad_side = harm["difference"] < 0 if higher else harm["difference"] > 0
    out["significantly_worse"] = (harm["is_significant"].astype(bool) & bad_side).reindex(out.index).fillna(
        False).astype(bool)
    return out


def _all_metric_tests(cums: dict[str, pd.DataFrame], specs: list[dict], alpha: float,
                      sequential: bool) -> dict[str, pd.DataFrame]:
    return {s["metric"]: _metric_tests(cums[s["metric"]], s, alpha, sequential) for s in specs}


def sequential_analysis(df: pd.DataFrame, rollout_params: RolloutSection, method: str = "sequential") -> pd.DataFrame:
    """Per look (day): cumulative n per arm, the SRM check, and per metric (satisfaction and
    each guardrail) the quantized - baseline difference with spotify-confidence's bounds, the
    non-inferiority and harm flags; then the decision (see the module docstring).

    Satisfaction keeps unprefixed columns (``difference``, ``ni_lower``, ``ci_lower``, ...);
    every metric ``m`` also has ``m_difference``, ``m_ni_bound``, ``m_non_inferior``,
    ``m_significantly_worse``, ... (:func:`metric_table` makes them tidy).

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
    cum = cums[PRIMARY]

    used = method
    note = ""
    try:
        tests = _all_metric_tests(cums, specs, alpha, sequential=(method == "sequential"))
    except Exception as exc:  # noqa: BLE001 - report and fall back to the fixed-horizon test
        if method != "sequential":
            raise
        note = f"sequential test failed ({type(exc).__name__}: {exc}); fell back to Bonferroni over looks"
        warnings.warn(note, RuntimeWarning, stacklevel=2)
        used = "bonferroni"
        tests = _all_metric_tests(cums, specs, alpha, sequential=False)

    looks = cum.pivot(index="look", columns="arm", values="count").reindex(columns=list(ARMS), fill_value=0).rename(
        columns={"baseline": "n_baseline", "quantized": "n_quantized"})
    looks["date"] = cum.groupby("look")["date"].first()
    looks["quantized_share_cum"] = looks["n_quantized"] / (looks["n_baseline"] + looks["n_quantized"])
    srm = srm_check(df, rollout_params).set_index("look")
    looks["planned_share_cum"] = srm["planned_share_cum"]
    looks["srm_chi2"] = srm["srm_chi2"]
    looks["srm_p_value"] = srm["srm_p_value"]
    looks["srm_ok"] = srm["srm_ok"]
    for s in specs:
        m, c, t = s["metric"], cums[s["metric"]], tests[s["metric"]]
        means = c.assign(v=c["sum"] / c["count"].where(c["count"] > 0)).pivot(index="look", columns="arm", values="v")
        looks[f"{m}_mean_baseline"] = means.get("baseline")
        looks[f"{m}_mean_quantized"] = means.get("quantized")
        for col in ("difference", "ni_bound", "non_inferior", "ci_lower", "ci_upper", "significantly_worse"):
            looks[f"{m}_{col}"] = t[col]
        looks[f"{m}_margin"] = s["margin"]
    sat = tests[PRIMARY]
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
    looks["margin"] = specs[0]["margin"]
    looks = looks.reset_index()
    looks.columns.name = None

    n_days = len(plan)
    last_stage_first_day = int(plan.loc[plan["stage"] == plan["stage"].max(), "day"].min())
    looks["stage"] = looks["look"].map(lambda k: int(plan["stage"].iloc[min(k, n_days) - 1]))
    complete = (looks["n_baseline"] + looks["n_quantized"]) >= final_n
    looks["final_stage"] = (looks["look"] >= last_stage_first_day) | complete
    names = [s["metric"] for s in specs]
    looks["all_non_inferior"] = looks[[f"{m}_non_inferior" for m in names]].all(axis=1)
    looks["worse_metrics"] = [", ".join(m for m in names if row[f"{m}_significantly_worse"] and not row[f"{m}_non_inferior"])
                              for _, row in looks.iterrows()]

    raw, reasons = [], []
    for row in looks.itertuples(index=False):
        pending = [m for m in names if not getattr(row, f"{m}_non_inferior")]
        if not row.srm_ok:
            raw.append("stop (SRM)")
            reasons.append(f"sample-ratio mismatch: quantized share {row.quantized_share_cum:.4f} vs planned "
                           f"{row.planned_share_cum:.4f} (p = {row.srm_p_value:.2g} < {rollout_params.srm_alpha:g}); "
                           "do not trust this look")
        elif pd.isna(row.difference):
            raw.append("hold" if row.look >= n_days else "continue")
            reasons.append("one arm has no data yet")
        elif row.worse_metrics:
            raw.append("roll back"); reasons.append(f"significantly worse, non-inferiority not shown: {row.worse_metrics}")
        elif row.all_non_inferior and row.final_stage:
            raw.append("cut over"); reasons.append("every metric non-inferior at the final stage")
        elif row.look >= n_days:
            raw.append("hold"); reasons.append("schedule ended without a conclusion; not shown non-inferior: "
                                               + ", ".join(pending))
        elif row.all_non_inferior:
            raw.append("continue"); reasons.append("every metric non-inferior so far; keep ramping up")
        else:
            raw.append("continue"); reasons.append("not yet conclusive; not yet non-inferior: " + ", ".join(pending))
    looks["decision_at_look"] = raw
    looks["reason"] = reasons
    final, stopped = [], None
    for k, d in zip(looks["look"], raw):
        if stopped is None and d != "continue":
            stopped = (k, d)
        final.append(stopped[1] if stopped else d)
    looks["decision"] = final
    looks.attrs.update({"method": used, "note": note, "margin": specs[0]["margin"], "alpha": alpha,
                        "final_expected_n": final_n, "stopped_at_look": stopped[0] if stopped else None,
                        "planned_looks": n_days, "srm_alpha": rollout_params.srm_alpha,
                        "metrics": specs, "simulated": bool(df.attrs.get("simulated", False))})
    cols = ["look", "date", "stage", "final_stage", "n_baseline", "n_quantized", "quantized_share_cum",
            "planned_share_cum", "srm_chi2", "srm_p_value", "srm_ok",
            "mean_baseline", "mean_quantized", "difference", "std_err", "ni_lower", "ni_alpha", "non_inferior",
            "ci_lower", "ci_upper", "p_value", "significantly_worse", "margin"]
    cols += [f"{m}_{c}" for m in names for c in ("mean_baseline", "mean_quantized", "difference", "ni_bound",
                                                  "non_inferior", "ci_lower", "ci_upper", "significantly_worse",
                                                  "margin")]
    cols += ["all_non_inferior", "worse_metrics", "decision_at_look", "reason", "decision"]
    out = looks[cols]
    out.attrs = looks.attrs
    return out


def metric_table(looks: pd.DataFrame, specs: list[dict] | None = None) -> pd.DataFrame:
    """Tidy: one row per look and metric (satisfaction and each guardrail), differences and
    bounds in the metric's display unit (points for shares, seconds for latency)."""
    specs = specs or looks.attrs.get("metrics") or []
    rows = []
    for s in specs:
        m, k = s["metric"], float(s.get("scale", 1.0))
        for _, r in looks.iterrows():
            rows.append({"look": int(r["look"]), "metric": m,
                         "direction": "higher is better" if s["higher_is_better"] else "lower is better",
                         "unit": s["unit"], "margin": s["margin"] * k,
                         "mean_baseline": r.get(f"{m}_mean_baseline"), "mean_quantized": r.get(f"{m}_mean_quantized"),
                         "difference": _scaled(r.get(f"{m}_difference"), k), "ni_bound": _scaled(r.get(f"{m}_ni_bound"), k),
                         "ci_lower": _scaled(r.get(f"{m}_ci_lower"), k), "ci_upper": _scaled(r.get(f"{m}_ci_upper"), k),
                         "non_inferior": bool(r.get(f"{m}_non_inferior")),
                         "significantly_worse": bool(r.get(f"{m}_significantly_worse")), "decision": r.get("decision")})
    return pd.DataFrame(rows)


def _scaled(x: Any, k: float) -> float:
    try:
        return float(x) * k
    except (TypeError, ValueError):
        return float("nan")


def srm_table(result: dict) -> pd.DataFrame:
    """The SRM line per look: observed vs planned quantized share, chi-square p, verdict."""
    looks = result["looks"]
    out = looks[["look", "n_baseline", "n_quantized", "quantized_share_cum", "planned_share_cum", "srm_p_value",
                 "srm_ok", "decision"]].rename(columns={"quantized_share_cum": "observed_share",
                                                         "planned_share_cum": "planned_share"})
    out = out.assign(verdict=np.where(out["srm_ok"], "ok", "SRM: do not trust this look"))
    return out.round({"observed_share": 5, "planned_share": 5})


# --------------------------------------------------------------------------- figures
class NotebookFigure(Figure):
    """A pyplot-free matplotlib figure that a notebook displays as a PNG (``display(fig)`` or
    ``fig`` as a cell's last line), with no pyplot state to leak or close."""

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight", dpi=100)
        return buf.getvalue()


ARM_COLORS = {"baseline": "#1f77b4", "quantized": "#d62728"}
DECISION_COLORS = {"continue": "#555555", "cut over": "#2ca02c", "roll back": "#d62728", "hold": "#ff7f0e",
                   "stop (SRM)": "#9467bd"}


def _mark_simulated(fig: Figure, ax, title: str, simulated: bool) -> None:
    if simulated:
        title = f"SIMULATED: {title}"
        fig.text(0.5, 0.5, "SIMULATED", fontsize=64, color="grey", alpha=0.18, rotation=25,
                 ha="center", va="center", weight="bold", zorder=0)
    ax.set_title(title)


def plot_daily(daily_df: pd.DataFrame, simulated: bool) -> Figure:
    """Daily satisfaction (mean and CI per arm) with the quantized traffic share on a second axis."""
    fig = NotebookFigure(figsize=(10, 5), layout="constrained")
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
    """Cumulative quantized - baseline satisfaction difference per look with the library's
    adjusted bounds, lines at 0 and -margin, and the decisions annotated."""
    fig = NotebookFigure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    d = looks_df.dropna(subset=["difference"])
    pts = 100.0
    ax.fill_between(d["look"], d["ci_lower"] * pts, d["ci_upper"] * pts, color="#1f77b4", alpha=0.15,
                    label="two-sided adjusted CI (harm test)")
    ax.plot(d["look"], d["difference"] * pts, "o-", color="#1f77b4", label="difference (quantized - baseline)")
    ax.plot(d["look"], d["ni_lower"] * pts, "^--", color="#ff7f0e", label="one-sided adjusted lower bound (NI test)")
    ax.axhline(0, color="black", linewidth=1, label="no difference")
    ax.axhline(-margin * pts, color="#d62728", linestyle=":", linewidth=1.5,
               label=f"non-inferiority margin (-{margin * pts:g} points)")
    _annotate_decisions(ax, looks_df, "difference", pts)
    method = looks_df.attrs.get("method", "sequential")
    ax.set_xlabel("look (end of rollout day, cumulative data)")
    ax.set_ylabel("satisfaction difference (percentage points)")
    ax.set_xticks(sorted(looks_df["look"].unique()))
    ax.legend(loc="best", fontsize=9)
    final = looks_df["decision"].iloc[-1] if len(looks_df) else "n/a"
    how = "group-sequential" if method == "sequential" else "Bonferroni over looks"
    _mark_simulated(fig, ax, f"Satisfaction non-inferiority, {how} (spotify-confidence): final decision '{final}'",
                    simulated)
    return fig


def _annotate_decisions(ax, looks_df: pd.DataFrame, column: str, scale: float) -> None:
    prev = None
    for _, row in looks_df.iterrows():
        y = row.get(column)
        if row["decision"] != prev and not pd.isna(y):
            ax.annotate(row["decision"], (row["look"], float(y) * scale), xytext=(0, 14),
                        textcoords="offset points", ha="center", fontsize=9, weight="bold",
                        color=DECISION_COLORS.get(row["decision"], "black"),
                        arrowprops={"arrowstyle": "-", "color": "grey"})
        prev = row["decision"]
    stop = looks_df.attrs.get("stopped_at_look")
    if stop is not None:
        final = looks_df["decision"].iloc[-1]
        ax.axvline(stop, color=DECISION_COLORS.get(final, "grey"), linestyle="-.", linewidth=1,
                   label=f"rollout stops: {final} (look {stop})")


def plot_guardrails(looks_df: pd.DataFrame, simulated: bool) -> Figure:
    """One panel per metric (satisfaction and each guardrail): the quantized - baseline
    difference per look, the two-sided adjusted CI, the one-sided NI bound and the margin on
    the bad side, in the metric's unit; the SRM verdict per look marked along the x axis."""
    specs = looks_df.attrs.get("metrics") or []
    n = max(1, len(specs))
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig = NotebookFigure(figsize=(6.2 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    srm_bad = looks_df.loc[~looks_df["srm_ok"].astype(bool), "look"] if "srm_ok" in looks_df.columns else []
    shared: dict[str, Any] = {}
    for ax, s in zip(axes, specs):
        m, k = s["metric"], float(s.get("scale", 1.0))
        d = looks_df.dropna(subset=[f"{m}_difference"])
        unit = "percentage points" if s["unit"] == "points" else "seconds"
        sign = -1.0 if s["higher_is_better"] else 1.0
        ax.fill_between(d["look"], d[f"{m}_ci_lower"] * k, d[f"{m}_ci_upper"] * k, color="#1f77b4", alpha=0.15,
                        label="two-sided adjusted CI (harm test)")
        ax.plot(d["look"], d[f"{m}_difference"] * k, "o-", color="#1f77b4", label="difference (quantized - baseline)")
        ax.plot(d["look"], d[f"{m}_ni_bound"] * k, "^--", color="#ff7f0e",
                label="one-sided adjusted bound (NI test; lower bound if higher is better, else upper)")
        ax.axhline(0, color="black", linewidth=1)
        for look in srm_bad:
            ax.axvspan(look - 0.5, look + 0.5, color=DECISION_COLORS["stop (SRM)"], alpha=0.12,
                       label="look failed the SRM check")
        _annotate_decisions(ax, looks_df, f"{m}_difference", k)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            shared.setdefault(lab, h)
        margin = ax.axhline(sign * s["margin"] * k, color="#d62728", linestyle=":", linewidth=1.5,
                            label=f"margin ({sign * s['margin'] * k:+g} {'points' if s['unit'] == 'points' else 's'})")
        ax.legend(handles=[margin], loc="best", fontsize=8)
        ax.set_title(f"{m}: {s['label']} ({'higher' if s['higher_is_better'] else 'lower'} is better)", fontsize=10)
        ax.set_xlabel("look (rollout day, cumulative)")
        ax.set_ylabel(f"quantized - baseline ({unit})")
        ax.set_xticks(sorted(looks_df["look"].unique()))
    if shared:
        fig.legend(list(shared.values()), list(shared.keys()), loc="outside lower center", ncol=3, fontsize=8)
    final = looks_df["decision"].iloc[-1] if len(looks_df) else "n/a"
    srm_note = f"; SRM at look(s) {', '.join(map(str, srm_bad))}" if len(srm_bad) else "; SRM check passed at every look"
    title = f"Satisfaction and guardrails per look: final decision '{final}'{srm_note}"
    if simulated:
        title = f"SIMULATED: {title}"
        fig.text(0.5, 0.5, "SIMULATED", fontsize=64, color="grey", alpha=0.18, rotation=25,
                 ha="center", va="center", weight="bold", zorder=0)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_power(plan: pd.DataFrame) -> Figure:
    """The power plan: fixed-horizon power of each metric's NI test by day (no true difference),
    the per-metric target 1 - beta/K and the scheduled length."""
    a = plan.attrs
    curve = pd.DataFrame(a.get("curve") or [])
    fig = NotebookFigure(figsize=(10, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for m, g in curve.groupby("metric", sort=False):
        row = plan.set_index("metric").loc[m]
        margin = f"{row['margin'] * 100:g} points" if row.get("unit") == "points" else f"{row['margin']:g} s"
        ax.plot(g["day"], g["power"] * 100, "o-", markersize=3, label=f"{m} (margin {margin})")
    ax.axhline(a["power_per_metric"] * 100, color="#d62728", linestyle=":",
               label=f"target per metric 1 - beta/K = {a['power_per_metric']:.1%} (K = {a['K']})")
    ax.axvline(a["days_scheduled"], color="grey", linestyle="--", label=f"end of schedule (day {a['days_scheduled']})")
    if a.get("days_needed") is not None:
        ax.axvline(a["days_needed"], color="#2ca02c", linestyle="-.", label=f"days needed ({a['days_needed']})")
    ax.set_ylim(0, 102)
    ax.set_xlabel("rollout day (days after the schedule continue at its last served share)")
    ax.set_ylabel("power of the non-inferiority test (%)")
    ax.legend(loc="lower right", fontsize=8)
    verdict = "enough" if a["sufficient"] else "UNDERPOWERED"
    ax.set_title(f"Power plan before launch (fixed-horizon approximation, slightly optimistic): {verdict}, "
                 f"{a['days_needed'] if a['days_needed'] is not None else '>' + str(int(curve['day'].max()))} days "
                 f"needed, {a['days_scheduled']} scheduled", fontsize=10)
    return fig


# --------------------------------------------------------------------------- convenience
def analyse(rollout_params: RolloutSection, quality_change_points: float, seed: int,
            latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``rollout_params.logs`` if set, else simulate (scenario from params, latency ratio
    from ``latency``, see :func:`latency_from_benchmark`); analyse it.

    Returns ``{"logs", "daily", "looks", "metrics_table", "srm", "power_plan", "decision",
    "stopped_at_look", "simulated", "method", "note", "margin", "alpha", "schedule", "scenario",
    "latency"}``.
    """
    latency = latency or {"ratio": 1.0, "source": None, "note": "latency ratio 1.0 (not given)"}
    if rollout_params.logs:
        logs = read_logs(rollout_params.logs)
        require_columns(logs, rollout_params)
        scenario = None
    else:
        logs = simulate_logs(rollout_params, quality_change_points, seed, rollout_params.scenario,
                             latency_ratio=latency["ratio"])
        scenario = rollout_params.scenario
    simulated = bool(logs.attrs.get("simulated", False))
    daily = daily_summary(logs)
    looks = sequential_analysis(logs, rollout_params)
    return {
        "logs": logs,
        "daily": daily,
        "looks": looks,
        "metrics_table": metric_table(looks),
        "power_plan": power_plan(rollout_params),
        "decision": looks["decision"].iloc[-1],
        "stopped_at_look": looks.attrs["stopped_at_look"],
        "simulated": simulated,
        "method": looks.attrs["method"],
        "note": looks.attrs["note"],
        "margin": rollout_params.margin,
        "alpha": rollout_params.alpha,
        "schedule": schedule(rollout_params),
        "scenario": scenario,
        "latency": latency if simulated else {"ratio": None, "source": "real logs", "note": "measured in the logs"},
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
    if rule not in CANDIDATE_RULES:
        raise RolloutError(f"rollout.candidate_rule: unknown rule {rule!r}; "
                           f"expected one of {', '.join(CANDIDATE_RULES)}")
    metrics_path = resolve(evaluate_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise RolloutError(f"{metrics_path} not found: run step 03_evaluate first (input_dirs['03_evaluate'])")
    m = contracts.read("03_evaluate", evaluate_dir)
    rows = {r["name"]: r for r in m["summary"]}
    base = rows["baseline"]
    tasks = [t for t in ("policy_closed_book_acc", "retention_acc") if t in base]

    def change(r: dict) -> float:
        return float(np.mean([100 * (r[t] - base[t]) for t in tasks])) if tasks else 0.0

    # a served-head row (serve.lm_head) is a serving check of one checkpoint, not a candidate of its own
    awq = [r for n, r in rows.items() if r.get("method") == "awq" and r.get("bits") == 4 and "duo" not in n
           and r.get("lm_head") in (None, "float")]
    if not awq:
        raise RolloutError(f"{metrics_path}: no 4-bit AWQ checkpoint was evaluated; nothing to roll out")
    ranked = _ranked(awq, m, rule, default_samples)
    best = ranked[0]
    return {**best, "quality_change_points": round(change(rows[best["checkpoint"]]), 3), "tasks": tasks,
            "rule": rule, "rule_text": CANDIDATE_RULES[rule].format(metric=best["metric"]),
            "runner_up": ranked[1] if len(ranked) > 1 else None, "pool": [c["checkpoint"] for c in ranked]}



def run_step(P, evaluate_dir: str | Path, benchmark_dir: str | Path | None = None) -> dict[str, Any]:
    """Step 05: the rollout for the candidate from step 03 (satisfaction margin from the quality
    budget, latency ratio from step 04's ``benchmark_dir``). With the simulator, also the 'worse'
    scenario (the rollback trigger must fire) and the 'broken_assignment' scenario (the SRM check
    must stop it). Every analysis carries the same pre-launch power plan."""
    from quantstudy.config.params import rollout_margin

    cand = candidate_from_evaluation(evaluate_dir, P.rollout.candidate_rule)
    rp = P.rollout.model_copy(update={"margin": rollout_margin(P)})
    latency = latency_from_benchmark(benchmark_dir)
    main = analyse(rp, cand["quality_change_points"], P.study.seed, latency)
    out = {"candidate": cand, "main": main, "rollout_params": rp, "power_plan": main["power_plan"], "latency": latency}
    if main["simulated"]:
        for offset, scenario in enumerate(("worse", "broken_assignment"), start=1):
            if rp.scenario != scenario:
                out[scenario] = analyse(rp.model_copy(update={"scenario": scenario}), cand["quality_change_points"],
                                        P.study.seed + offset, latency)
    return out


def decision_table(result: dict) -> pd.DataFrame:
    """Per look: counts, SRM p-value, satisfaction's test, whether every metric is
    non-inferior, which metric is significantly worse, and the decision."""
    cols = ["look", "stage", "n_baseline", "n_quantized", "srm_p_value", "difference", "ni_lower", "ci_lower",
            "ci_upper", "non_inferior", "significantly_worse", "all_non_inferior", "worse_metrics",
            "decision_at_look", "decision"]
    looks = result["looks"]
    return looks[[c for c in cols if c in looks.columns]].round(4)


def _records(df: pd.DataFrame) -> list[dict]:
    import json

    return json.loads(df.to_json(orient="records", default_handler=str, date_format="iso"))


def power_summary(plan: pd.DataFrame) -> dict[str, Any]:
    """The power plan as JSON-ready numbers (metrics.json, the report)."""
    a = {k: v for k, v in plan.attrs.items() if k != "curve"}
    return {**a, "metrics": _records(plan), "curve": plan.attrs.get("curve", [])}


def write_metrics(output_dir: str | Path, step: dict, wall_s: float) -> dict:
    def summary(res: dict) -> dict:
        looks = res["looks"]
        last = looks.iloc[-1]
        specs = looks.attrs.get("metrics") or []
        deciding = res["stopped_at_look"] if res["stopped_at_look"] is not None else int(last["look"])
        at = looks.set_index("look").loc[deciding]  # "final": at the deciding look (the stop, else the last look)
        guardrails = []
        for s in specs:
            m = s["metric"]
            guardrails.append({**s, "deciding_look": int(deciding),
                               "final_difference": float(at.get(f"{m}_difference", float("nan"))),
                               "final_ni_bound": float(at.get(f"{m}_ni_bound", float("nan"))),
                               "final_non_inferior": bool(at.get(f"{m}_non_inferior")),
                               "final_significantly_worse": bool(at.get(f"{m}_significantly_worse")),
                               "significantly_worse_at_any_look": bool(looks.loc[looks["look"] <= deciding,
                                                                                 f"{m}_significantly_worse"].any()),
                               "final_mean_baseline": float(at.get(f"{m}_mean_baseline", float("nan"))),
                               "final_mean_quantized": float(at.get(f"{m}_mean_quantized", float("nan")))})
        srm = [{"look": int(r["look"]), "p_value": float(r["srm_p_value"]), "ok": bool(r["srm_ok"]),
                "observed_share": float(r["quantized_share_cum"]), "planned_share": float(r["planned_share_cum"])}
               for _, r in looks.iterrows()]
        return {"decision": res["decision"], "stopped_at_look": res["stopped_at_look"], "simulated": res["simulated"],
                "scenario": res["scenario"], "method": res["method"], "note": res["note"], "margin": res["margin"],
                "alpha": res["alpha"], "n_looks": int(len(looks)), "planned_looks": looks.attrs.get("planned_looks"),
                "final_difference": float(last.get("difference", float("nan"))),
                "final_ni_lower": float(last.get("ni_lower", float("nan"))),
                "conversations": {arm: int((res["logs"]["arm"] == arm).sum()) for arm in ARMS},
                "guardrails": guardrails, "srm_alpha": looks.attrs.get("srm_alpha"), "srm": srm,
                "srm_stopped": res["decision"] == "stop (SRM)", "latency": res.get("latency"),
                "power_plan": {k: v for k, v in power_summary(res["power_plan"]).items() if k != "curve"},
                "looks": _records(looks)}

    metrics = {"candidate": step["candidate"], "rollout": summary(step["main"]),
               "power_plan": power_summary(step["main"]["power_plan"]), "latency": step.get("latency"),
               "stages": list(step["rollout_params"].stages), "wall_s": round(wall_s, 1)}
    for scenario in ("worse", "broken_assignment"):
        if scenario in step:
            metrics[f"{scenario}_scenario"] = summary(step[scenario])
    contracts.write("05_rollout_analysis", output_dir, metrics, default=str)
    step["main"]["logs"].to_csv(Path(output_dir) / "rollout_logs.csv", index=False)
    return metrics
