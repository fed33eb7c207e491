"""Which checkpoint step 05 rolls out: the candidate rule (``rollout.candidate_rule``) applied
to step 03's verdicts, with the runner-up and the candidate's measured task-quality change
(which drives the rollout simulator)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from quantstudy import contracts
from quantstudy.paths import resolve
from quantstudy.rollout_logs import RolloutError

CALIBRATION_COST = {"generic": 0, "mixed": 1, "in_domain": 2}  # cheaper calibration data first
_RULE = (
    "among the 4-bit AWQ checkpoints that pass every offline budget line, the best {what} on the budget's first "
    "line, {{metric}}; ties go to the cheaper calibration (generic < mixed < in_domain, then fewer samples), "
    "then draw 0; if none passes, the best {short} overall, flagged as failing the budget"
)
CANDIDATE_RULES = {  # rollout.candidate_rule -> how step 05 picks the checkpoint to ship
    "best_worst_case": _RULE.format(what="worst case (the worse end of its CI)", short="worst case"),
    "best_point": _RULE.format(what="point estimate", short="point estimate"),
}


def _first_budget_line(m: dict) -> dict:
    """The budget's first line that step 03 judged (the satisfaction line is left to the rollout)."""
    judged = {r["metric"] for r in m.get("budget") or []}
    line = next((b for b in m.get("budget_declared") or [] if b["metric"] in judged), None)
    if line is None:
        raise RolloutError(
            "03_evaluate/metrics.json: no offline budget line was judged; nothing to rank checkpoints by"
        )
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
        out.append(
            {
                "checkpoint": r["name"],
                "passed_offline_budget": verdicts.get(r["name"]) == "pass",
                "metric": line["metric"],
                "unit": b.get("unit", line.get("unit")),
                "limit": b.get("limit"),
                "worst_case": b.get("worst_case"),
                "point": b.get("degradation"),
                "line_verdict": b.get("verdict"),
                "calibration": r.get("source") or None,
                "n_samples": _samples(r["name"], default_samples),
                "draw": None if draw is None else int(draw),
            }
        )
    score = "worst_case" if rule == "best_worst_case" else "point"

    def key(c: dict) -> tuple:
        inf = float("inf")
        return (
            not c["passed_offline_budget"],
            inf if c[score] is None else c[score],
            CALIBRATION_COST.get(c["calibration"], 3),
            inf if c["n_samples"] is None else c["n_samples"],
            c["draw"] != 0,
            c["draw"] or 0,
            c["checkpoint"],
        )

    return sorted(out, key=key)


def candidate_from_evaluation(
    evaluate_dir: str | Path, rule: str = "best_worst_case", default_samples: int | None = None
) -> dict[str, Any]:
    """The checkpoint to roll out, chosen by ``rule`` (see :data:`CANDIDATE_RULES`), its runner-up,
    and its measured task-quality change (from step 03).

    The pool: the 4-bit AWQ checkpoints step 03 evaluated (AutoAWQ search-setting variants left
    out). ``default_samples``: the calibration sample count of checkpoints without ``-n<count>``
    in their name (unknown: ranked after known counts). Quality change = mean change, in accuracy
    points, of the closed-book policy and retention tasks against the baseline (it drives the
    rollout simulator).
    """
    if rule not in CANDIDATE_RULES:
        raise RolloutError(
            f"rollout.candidate_rule: unknown rule {rule!r}; expected one of {', '.join(CANDIDATE_RULES)}"
        )
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
    awq = [
        r
        for n, r in rows.items()
        if r.get("method") == "awq" and r.get("bits") == 4 and "duo" not in n and r.get("lm_head") in (None, "float")
    ]
    if not awq:
        raise RolloutError(f"{metrics_path}: no 4-bit AWQ checkpoint was evaluated; nothing to roll out")
    ranked = _ranked(awq, m, rule, default_samples)
    best = ranked[0]
    return {
        **best,
        "quality_change_points": round(change(rows[best["checkpoint"]]), 3),
        "tasks": tasks,
        "rule": rule,
        "rule_text": CANDIDATE_RULES[rule].format(metric=best["metric"]),
        "runner_up": ranked[1] if len(ranked) > 1 else None,
        "pool": [c["checkpoint"] for c in ranked],
    }
