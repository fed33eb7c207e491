"""Statistics on per-token and per-item score arrays (numpy only, no model): perplexity, the
paired bootstrap and the quality-budget verdict, flips, the calibration-source effect with a
CI that resamples draws, NLL change per token category, and the per-model summary.

Arrays come from :mod:`quantstudy.metrics.scoring`: a model's record is
``{"streams": {domain: {"nll", "kl", "agree"}}, "items": {task: {"acc", "margin", ...}}}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantstudy.metrics.registry import METRIC_TASK

# Token categories scoring.build_stream labels each scored token with (an index into this).
CATEGORIES = ("product", "figure", "jargon", "ordinary")


def perplexity(nll: np.ndarray) -> float:
    return float(math.exp(float(np.mean(nll))))


def _paired_value(stat: str, base_sum, cand_sum, count):
    """The statistic from summed baseline and candidate values over `count` units."""
    if stat == "mean_diff":
        return cand_sum / count - base_sum / count
    if stat == "ppl_pct":
        return 100.0 * (np.exp(cand_sum / count - base_sum / count) - 1.0)
    raise ValueError(stat)


def paired_bootstrap(
    base: np.ndarray,
    cand: np.ndarray,
    stat: str = "mean_diff",
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict:
    """Paired bootstrap CI of a candidate-vs-baseline statistic over items (or over `groups`,
    e.g. evaluation windows, when items are correlated tokens).

    stat 'mean_diff': mean(cand) - mean(base)            (accuracy points when x100)
    stat 'ppl_pct'  : 100 * (exp(mean cand) / exp(mean base) - 1)   for NLL arrays
    """
    base, cand = np.asarray(base, float), np.asarray(cand, float)
    if base.shape != cand.shape:
        raise ValueError("paired bootstrap needs arrays of equal shape")
    if groups is None:
        groups = np.arange(len(base))
    uniq, inv = np.unique(groups, return_inverse=True)
    g = len(uniq)
    sb = np.bincount(inv, weights=base, minlength=g)
    sc = np.bincount(inv, weights=cand, minlength=g)
    cnt = np.bincount(inv, minlength=g).astype(float)
    point = float(_paired_value(stat, sb.sum(), sc.sum(), cnt.sum()))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, g, size=(n, g))
    w = np.apply_along_axis(lambda r: np.bincount(r, minlength=g), 1, idx).astype(float)
    boots = _paired_value(stat, w @ sb, w @ sc, w @ cnt)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return {"point": point, "lo": float(lo), "hi": float(hi), "n_units": int(g)}


def budget_verdict(line: dict, ci: dict) -> dict:
    """Pass only when the worse end of the CI stays inside the declared budget.

    Accuracy metrics: degradation = -(cand - base) in points; perplexity: % increase.
    """
    metric, limit = line["metric"], float(line["max_drop"])
    if metric.endswith("_ppl"):
        worst = ci["hi"]  # % increase, larger is worse
        point = ci["point"]
    else:
        worst = -ci["lo"]  # drop in points, larger is worse
        point = -ci["point"]
    verdict = "pass" if worst <= limit else ("fail" if point > limit else "inconclusive")
    return {
        "metric": metric,
        "limit": limit,
        "unit": line.get("unit", "points"),
        "degradation": round(point, 4),
        "worst_case": round(worst, 4),
        "verdict": verdict,
    }


def category_damage(base_nll: np.ndarray, cand_nll: np.ndarray, category: np.ndarray) -> dict[str, dict]:
    """Mean NLL change (candidate - baseline, nats/token) per token category."""
    out = {}
    for i, cat in enumerate(CATEGORIES):
        sel = category == i
        if sel.any():
            d = cand_nll[sel] - base_nll[sel]
            out[cat] = {
                "delta_nll": float(d.mean()),
                "tokens": int(sel.sum()),
                "se": float(d.std(ddof=1) / math.sqrt(sel.sum())) if sel.sum() > 1 else float("nan"),
            }
    return out


def flips(base_acc: np.ndarray, cand_acc: np.ndarray) -> dict:
    """Items whose correctness differs from the baseline's: right->wrong and wrong->right.
    Equal accuracy can hide many flips (Dutta et al., NeurIPS 2024)."""
    b, c = np.asarray(base_acc) > 0.5, np.asarray(cand_acc) > 0.5
    return {
        "right_to_wrong": int((b & ~c).sum()),
        "wrong_to_right": int((~b & c).sum()),
        "n_items": int(len(b)),
        "flip_rate": float((b != c).mean()) if len(b) else float("nan"),
    }


def summarize(arrays: dict) -> dict:
    """One model's headline numbers: perplexity (and KL, top-1 agreement) per domain, accuracy per task."""
    s = {}
    for dom, rec in arrays["streams"].items():
        s[f"ppl_{dom}"] = perplexity(rec["nll"])
        if "kl" in rec:
            s[f"kl_{dom}"] = float(rec["kl"].mean())
            s[f"top1_{dom}"] = float(rec["agree"].mean())
    for task, rec in arrays["items"].items():
        s[f"{task}_acc"] = float(rec["acc"].mean())
    return s


def metric_pair(
    metric: str, base: dict, cand: dict, streams: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """(baseline array, candidate array, bootstrap statistic, groups) for a metric; `streams`
    are the scored ``Stream``s by domain (their windows group the tokens).

    ``<task>_flip_rate``: the candidate array is 100 where an item's correctness differs from
    the baseline's and 0 elsewhere, against a baseline of zeros, so the mean difference is the
    flip rate in points with a paired CI over items.
    """
    if metric in METRIC_TASK:
        t = METRIC_TASK[metric]
        return base["items"][t]["acc"] * 100, cand["items"][t]["acc"] * 100, "mean_diff", None
    if metric.endswith("_flip_rate"):
        t = metric.removesuffix("_flip_rate")
        flipped = (base["items"][t]["acc"] > 0.5) != (cand["items"][t]["acc"] > 0.5)
        return np.zeros(len(flipped)), flipped * 100.0, "mean_diff", None
    if metric in ("indomain_ppl", "generic_ppl"):
        dom = "in_domain" if metric == "indomain_ppl" else "generic"
        return base["streams"][dom]["nll"], cand["streams"][dom]["nll"], "ppl_pct", streams[dom].window_of_token
    if metric == "indomain_top1_agreement":
        a = cand["streams"]["in_domain"]["agree"] * 100
        return np.full_like(a, 100.0), a, "mean_diff", streams["in_domain"].window_of_token
    raise ValueError(f"unknown metric {metric!r}")


def source_effect(
    per_source: dict[str, list[np.ndarray]],
    a: str,
    b: str,
    stat: str = "mean_diff",
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
    paired_draws: bool = False,
) -> dict:
    """Effect of calibration source a vs b (mean over draws), with a CI that resamples both the
    evaluation units (paired) and the draws, so draw-to-draw noise widens it. ``paired_draws``:
    draw i of a and of b share a calibration set (two implementations on the same sets), so
    the draws are resampled together."""
    A, B = np.array(per_source[a]), np.array(per_source[b])  # [draws, units]
    if groups is None:
        groups = np.arange(A.shape[1])
    uniq, inv = np.unique(groups, return_inverse=True)
    g = len(uniq)
    cnt = np.bincount(inv, minlength=g).astype(float)
    SA = np.stack([np.bincount(inv, weights=r, minlength=g) for r in A])
    SB = np.stack([np.bincount(inv, weights=r, minlength=g) for r in B])

    def val(sa, sb, c):
        if stat == "mean_diff":
            return sa / c - sb / c
        return 100.0 * (np.exp(sa / c - sb / c) - 1.0)

    point = float(val(SA.mean(0).sum(), SB.mean(0).sum(), cnt.sum()))
    rng = np.random.default_rng(seed)
    boots = np.empty(n)
    for k in range(n):
        w = np.bincount(rng.integers(0, g, g), minlength=g).astype(float)
        da = rng.integers(0, len(A), len(A))
        db = da if paired_draws else rng.integers(0, len(B), len(B))
        boots[k] = val(SA[da].mean(0) @ w, SB[db].mean(0) @ w, cnt @ w)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    per_draw_a = [float(val(s.sum(), 0 * s.sum(), cnt.sum())) if stat == "mean_diff" else None for s in SA]
    return {
        "a": a,
        "b": b,
        "point": point,
        "lo": float(lo),
        "hi": float(hi),
        "draws": [len(A), len(B)],
        "paired_draws": paired_draws,
        "within_noise": bool(lo <= 0 <= hi),
        "per_draw_a": per_draw_a,
    }
