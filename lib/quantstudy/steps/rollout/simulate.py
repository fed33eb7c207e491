"""The rollout SIMULATOR: seeded, clearly marked *simulated* logs in the real-log schema
(:mod:`quantstudy.rollout_logs`), used when ``rollout.logs`` is not set, and the latency ratio
it applies to the quantized arm (from step 04's measured decode speeds).

Every frame it returns carries ``simulated=True`` (a column and ``attrs``), ``attrs["label"] =
"SIMULATED"``, the scenario, the seed and the true rates it drew from; the tables, figures and
metrics.json downstream carry that label on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quantstudy import contracts
from quantstudy.config.params import RolloutSection
from quantstudy.paths import resolve
from quantstudy.steps.rollout.design import schedule

SIM_START = pd.Timestamp("2024-01-01")
SCENARIOS = ("measured", "worse", "broken_assignment")


def _lognormal(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
    sigma2 = math.log(1.0 + (sd / mean) ** 2)
    return rng.lognormal(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2), n)


def _arm_rates(rp: RolloutSection, q: float, scenario: str) -> tuple[dict[str, float], dict[str, float]]:
    """True 0/1 rates per arm: the baseline from params, the quantized arm driven by ``q``."""
    base = {
        "satisfaction": rp.baseline_satisfaction,
        "escalated": rp.baseline_escalation,
        "resolved": rp.baseline_resolved,
    }
    quant = {
        "satisfaction": (
            rp.baseline_satisfaction - rp.worse_drop
            if scenario == "worse"
            else rp.baseline_satisfaction + rp.satisfaction_per_point * q
        ),
        "escalated": rp.baseline_escalation - rp.escalation_per_point * q,
        "resolved": rp.baseline_resolved + rp.resolution_per_point * q,
    }
    return base, {k: float(np.clip(v, 0.0, 1.0)) for k, v in quant.items()}


def _simulate_day(
    rng: np.random.Generator, day: Any, rp: RolloutSection, rates: tuple[dict, dict], ratio: float, scenario: str
) -> pd.DataFrame:
    """One schedule day of simulated conversations (the draws' order fixes the seeded numbers)."""
    base, quant = rates
    n_day = rp.daily_conversations
    shift = rng.uniform(-0.01, 0.01)
    lat_day = rng.uniform(0.98, 1.02)
    is_q = rng.random(n_day) < day.quantized_share

    def draw(metric: str, sign: float = 1.0) -> np.ndarray:
        rate = np.clip(np.where(is_q, quant[metric], base[metric]) + sign * shift, 0.0, 1.0)
        return rng.random(n_day) < rate

    sat = draw("satisfaction").astype(float)
    escalated = draw("escalated", -1.0)
    resolved = draw("resolved")
    latency = (
        np.where(
            is_q,
            _lognormal(rng, rp.baseline_latency_s * ratio, rp.latency_sd_s * ratio, n_day),
            _lognormal(rng, rp.baseline_latency_s, rp.latency_sd_s, n_day),
        )
        * lat_day
    )
    lost = is_q & (rng.random(n_day) < rp.srm_drop)
    seconds = np.sort(rng.uniform(0, 86400, n_day))
    ts = SIM_START + pd.Timedelta(days=int(day.day) - 1) + pd.to_timedelta(seconds, unit="s").floor("s")
    frame = pd.DataFrame(
        {
            "timestamp": ts,
            "arm": np.where(is_q, "quantized", "baseline"),
            "satisfaction": sat,
            "escalated": escalated,
            "resolved": resolved,
            "latency_s": np.round(latency, 3),
        }
    )
    return frame[~lost] if scenario == "broken_assignment" else frame


def simulate_logs(
    rollout_params: RolloutSection,
    quality_change_points: float,
    seed: int,
    scenario: str | None = None,
    latency_ratio: float = 1.0,
) -> pd.DataFrame:
    """Seeded SIMULATED logs in the :func:`~quantstudy.rollout_logs.read_logs` schema (plus ``simulated=True``).

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
    are assigned per conversation with the day's served quantized share (see
    :data:`~quantstudy.steps.rollout.design.HOLDBACK`).
    """
    scenario = scenario or rollout_params.scenario
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    rp = rollout_params
    base, quant = _arm_rates(rp, float(quality_change_points), scenario)
    ratio = float(latency_ratio)
    rng = np.random.default_rng(seed)
    frames = [
        _simulate_day(rng, day, rp, (base, quant), ratio, scenario) for day in schedule(rp).itertuples(index=False)
    ]
    df = pd.concat(frames, ignore_index=True)
    df.insert(2, "conversation_id", [f"sim-{i:07d}" for i in range(len(df))])
    df["simulated"] = True
    df.attrs.update(
        {
            "simulated": True,
            "label": "SIMULATED",
            "scenario": scenario,
            "seed": int(seed),
            "latency_ratio": ratio,
            "true_rates": {
                "baseline": {**base, "latency_s": rp.baseline_latency_s},
                "quantized": {**quant, "latency_s": rp.baseline_latency_s * ratio},
            },
        }
    )
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
        ckpt = (m[model].get("env") or {}).get("checkpoint") if model == "demo" else None
        timed = Path(ckpt).name if ckpt else None
        where = f"{model} model{f' ({timed})' if timed else ''}, batch 1, context {b.get('context')}, scope {scope}"
        return {
            "ratio": ratio,
            "source": f"04_benchmark/metrics.json: {where}",
            "model": model,
            "checkpoint": timed,
            "baseline_decode_tok_s": float(b_tok),
            "fast4_decode_tok_s": float(f_tok),
            "note": (
                f"quantized latency = baseline x {ratio:.3f} (decode {float(b_tok):.1f} tok/s baseline vs "
                f"{float(f_tok):.1f} tok/s fast4; {where})"
            ),
        }
    return fallback(f"{path} has no batch-1 decode speed for both baseline and fast4")
