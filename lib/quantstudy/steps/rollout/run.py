"""Step 05 end to end: :func:`analyse` (logs, real or SIMULATED, to decision), :func:`run_step`
(the candidate from step 03, the latency ratio from step 04, and with the simulator the
'worse' and 'broken_assignment' scenarios) and :func:`write_metrics` (metrics.json and the logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from quantstudy import contracts
from quantstudy.config.params import RolloutSection, rollout_margin
from quantstudy.rollout_logs import ARMS, read_logs, require_columns
from quantstudy.steps.rollout.candidate import candidate_from_evaluation
from quantstudy.steps.rollout.decide import sequential_analysis
from quantstudy.steps.rollout.design import schedule
from quantstudy.steps.rollout.simulate import latency_from_benchmark, simulate_logs
from quantstudy.steps.rollout.stats import daily_summary, power_plan
from quantstudy.steps.rollout.views import metric_table


def analyse(
    rollout_params: RolloutSection, quality_change_points: float, seed: int, latency: dict[str, Any] | None = None
) -> dict[str, Any]:
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
        logs = simulate_logs(
            rollout_params, quality_change_points, seed, rollout_params.scenario, latency_ratio=latency["ratio"]
        )
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


def run_step(P, evaluate_dir: str | Path, benchmark_dir: str | Path | None = None) -> dict[str, Any]:
    """Step 05: the rollout for the candidate from step 03 (satisfaction margin from the quality
    budget, latency ratio from step 04's ``benchmark_dir``). With the simulator, also the 'worse'
    scenario (the rollback trigger must fire) and the 'broken_assignment' scenario (the SRM check
    must stop it). Every analysis carries the same pre-launch power plan."""
    cand = candidate_from_evaluation(evaluate_dir, P.rollout.candidate_rule)
    rp = P.rollout.model_copy(update={"margin": rollout_margin(P)})
    latency = latency_from_benchmark(benchmark_dir)
    if latency.get("checkpoint") and latency["checkpoint"] != cand["checkpoint"]:
        # Step 04 times the checkpoint a server would run (AutoAWQ's packed layout); the candidate
        # may be another (another calibration draw, or llm-compressor's): say so where the ratio is used.
        latency = {
            **latency,
            "note": f"{latency['note']}; timed on {latency['checkpoint']}, not on the candidate "
            f"{cand['checkpoint']}: the same shapes and group size, and a 4-bit kernel's speed does not "
            "depend on the weights' values",
        }
    main = analyse(rp, cand["quality_change_points"], P.study.seed, latency)
    out = {"candidate": cand, "main": main, "rollout_params": rp, "power_plan": main["power_plan"], "latency": latency}
    if main["simulated"]:
        for offset, scenario in enumerate(("worse", "broken_assignment"), start=1):
            if rp.scenario != scenario:
                out[scenario] = analyse(
                    rp.model_copy(update={"scenario": scenario}),
                    cand["quality_change_points"],
                    P.study.seed + offset,
                    latency,
                )
    return out


# --------------------------------------------------------------------------- metrics.json
def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records", default_handler=str, date_format="iso"))


def power_summary(plan: pd.DataFrame) -> dict[str, Any]:
    """The power plan as JSON-ready numbers (metrics.json, the report)."""
    a = {k: v for k, v in plan.attrs.items() if k != "curve"}
    return {**a, "metrics": _records(plan), "curve": plan.attrs.get("curve", [])}


def _guardrail_summaries(looks: pd.DataFrame, deciding: int) -> list[dict]:
    """Each metric's verdict at the deciding look (the stop, else the last look)."""
    at = looks.set_index("look").loc[deciding]
    out = []
    for s in looks.attrs.get("metrics") or []:
        m = s["metric"]
        out.append(
            {
                **s,
                "deciding_look": int(deciding),
                "final_difference": float(at.get(f"{m}_difference", float("nan"))),
                "final_ni_bound": float(at.get(f"{m}_ni_bound", float("nan"))),
                "final_non_inferior": bool(at.get(f"{m}_non_inferior")),
                "final_significantly_worse": bool(at.get(f"{m}_significantly_worse")),
                "significantly_worse_at_any_look": bool(
                    looks.loc[looks["look"] <= deciding, f"{m}_significantly_worse"].any()
                ),
                "final_mean_baseline": float(at.get(f"{m}_mean_baseline", float("nan"))),
                "final_mean_quantized": float(at.get(f"{m}_mean_quantized", float("nan"))),
            }
        )
    return out


def _scenario_summary(res: dict) -> dict:
    """One analysis (the rollout or a simulated scenario) as metrics.json records it."""
    looks = res["looks"]
    last = looks.iloc[-1]
    deciding = res["stopped_at_look"] if res["stopped_at_look"] is not None else int(last["look"])
    srm = [
        {
            "look": int(r["look"]),
            "p_value": float(r["srm_p_value"]),
            "ok": bool(r["srm_ok"]),
            "observed_share": float(r["quantized_share_cum"]),
            "planned_share": float(r["planned_share_cum"]),
        }
        for _, r in looks.iterrows()
    ]
    return {
        "decision": res["decision"],
        "stopped_at_look": res["stopped_at_look"],
        "simulated": res["simulated"],
        "scenario": res["scenario"],
        "method": res["method"],
        "note": res["note"],
        "margin": res["margin"],
        "alpha": res["alpha"],
        "n_looks": int(len(looks)),
        "planned_looks": looks.attrs.get("planned_looks"),
        "final_difference": float(last.get("difference", float("nan"))),
        "final_ni_lower": float(last.get("ni_lower", float("nan"))),
        "conversations": {arm: int((res["logs"]["arm"] == arm).sum()) for arm in ARMS},
        "guardrails": _guardrail_summaries(looks, deciding),
        "srm_alpha": looks.attrs.get("srm_alpha"),
        "srm": srm,
        "srm_stopped": res["decision"] == "stop (SRM)",
        "latency": res.get("latency"),
        "power_plan": {k: v for k, v in power_summary(res["power_plan"]).items() if k != "curve"},
        "looks": _records(looks),
    }


def write_metrics(output_dir: str | Path, step: dict, wall_s: float) -> dict:
    """Write step 05's metrics.json (checked against its contract) and the main analysis's logs as CSV."""
    metrics = {
        "candidate": step["candidate"],
        "rollout": _scenario_summary(step["main"]),
        "power_plan": power_summary(step["main"]["power_plan"]),
        "latency": step.get("latency"),
        "stages": list(step["rollout_params"].stages),
        "wall_s": round(wall_s, 1),
    }
    for scenario in ("worse", "broken_assignment"):
        if scenario in step:
            metrics[f"{scenario}_scenario"] = _scenario_summary(step[scenario])
    contracts.write("05_rollout_analysis", output_dir, metrics, default=str)
    step["main"]["logs"].to_csv(Path(output_dir) / "rollout_logs.csv", index=False)
    return metrics
