"""What the report reads out of a run in several places: the step list, metric labels and
directions, the main benchmark model and its rows, the calibration effects, stale steps and
steps computed at an older commit.

``M`` is the dict :func:`quantstudy.report.build.load_metrics` returns: {step name: metrics
dict, "manifest": manifest, "run_dir": str}.
"""

from __future__ import annotations

from typing import Any, Mapping

from quantstudy.metrics.registry import METRICS as METRIC_REGISTRY
from quantstudy.metrics.registry import label as metric_label
from quantstudy.pipeline.steps import STEPS
from quantstudy.report.formatting import num

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
METRICS = "metrics.json"

METRIC_LABELS = {name: m.label for name, m in METRIC_REGISTRY.items()}  # quantstudy.metrics.registry
SOURCE_LABELS = {"in_domain": "In-domain", "generic": "generic", "mixed": "Mixed", "RTN": "round-to-nearest (RTN)"}
SOURCE_LABELS.update({f"{k}/llmc": f"{v} (llm-compressor)" for k, v in list(SOURCE_LABELS.items()) if k != "RTN"})


def label(metric: str) -> str:
    """The metric's label in running text (from the metric registry)."""
    return metric_label(metric)


def ci_level(M: Mapping[str, Any]) -> str:
    """'95% CI' from the run's evaluate.confidence, else 'CI'."""
    conf = ((M.get("manifest") or {}).get("params") or {}).get("evaluate", {}).get("confidence")
    return f"{round(100 * conf):g}% CI" if num(conf) else "CI"


def lower_is_better(metric: str, unit: str = "") -> bool:
    """The registry's direction; an unregistered metric in % is a perplexity-like one."""
    return not METRIC_REGISTRY[metric].higher_is_better if metric in METRIC_REGISTRY else unit.startswith("%")


def calibration_effects(M: Mapping[str, Any], a: str = "in_domain", b: str = "generic") -> list[dict]:
    """Step 03's calibration-source effects of source ``a`` against source ``b``."""
    return [e for e in M["03_evaluate"].get("calibration_effects") or [] if e.get("a") == a and e.get("b") == b]


# --------------------------------------------------------------------------- step 04
def bench_models(M: Mapping[str, Any]) -> dict[str, dict]:
    """{model name: its step 04 results} for every benchmarked model."""
    return {k: v for k, v in M["04_benchmark"].items() if isinstance(v, dict) and "speedups" in v}


def main_bench(M: Mapping[str, Any]) -> tuple[str, dict]:
    """(name, results) of the model the report leads with: production, else the first."""
    models = bench_models(M)
    name = "production" if "production" in models else next(iter(models), "")
    return name, models.get(name, {})


def fleet_row(result: Mapping[str, Any], path: str) -> dict | None:
    """The fleet estimate of ``path`` at its smallest batch."""
    rows = [r for r in result.get("fleet") or [] if r.get("path") == path]
    return min(rows, key=lambda r: r.get("batch_size") or 0) if rows else None


def memory_row(result: Mapping[str, Any], path: str) -> dict | None:
    """The memory record of ``path``."""
    return next((r for r in result.get("memory") or [] if r.get("path") == path), None)


def speed_rows(result: Mapping[str, Any]) -> list[dict]:
    """Speed-ups of the quantized paths, whole-model ones when recorded, else the measured ones."""
    sp = result.get("speedups") or []
    scope = "full_model" if any(r.get("scope") == "full_model" for r in sp) else "measured"
    return [r for r in sp if r.get("scope", scope) == scope and r.get("path") != "baseline"]


# --------------------------------------------------------------------------- the manifest
def stale_steps(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Steps whose results no longer match their inputs (stale), or whose last re-run failed."""
    out = {}
    for name, rec in (manifest.get("steps") or {}).items():
        if rec.get("stale"):
            out[name] = str(rec.get("stale_reason") or "stale")
        elif rec.get("failed_attempt"):
            out[name] = "its last re-run failed; these are the results from before it"
    return out


def older_steps(man: Mapping[str, Any]) -> list[str]:
    """Steps whose recorded commit differs from the commit stamped on the run."""
    sha = (man.get("git") or {}).get("commit")
    steps = man.get("steps") or {}
    return [n for n in STEP_NAMES if sha and (steps.get(n) or {}).get("git_commit") not in (None, sha)]
