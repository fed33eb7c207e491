"""Step 03's tables and plots, built from ``run_evaluation``'s result and the rows the driver
computes: the summary, flip, calibration-effect and reference-task tables; the cross-domain
matrix, the quality budget and the per-category damage plots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from quantstudy.metrics.stats import category_damage, flips, metric_pair, paired_bootstrap, summarize
from quantstudy.steps.evaluate.models import source_groups


# --------------------------------------------------------------------------- tables
def summary_table(result: dict):
    rows = [
        {
            "name": "baseline",
            "method": "baseline",
            "source": "",
            "draw": None,
            "bits": 16,
            "lm_head": "float",
            **summarize(result["base"]),
        }
    ]
    for rec in result["records"]:
        rows.append(
            {
                "name": rec["name"],
                "method": rec["method"],
                "source": rec.get("calibration_source") or "",
                "draw": rec.get("draw"),
                "bits": rec["bits"],
                "lm_head": rec.get("served_head", "float"),
                **summarize(result["cands"][rec["name"]]),
            }
        )
    return pd.DataFrame(rows).set_index("name")


def reference_table(result: dict):
    """Reference tasks: the baseline's accuracy against chance, with a 95% bootstrap CI."""
    rows = []
    for task, rec in result.get("reference", {}).items():
        items = result["reference_items"][task]
        chance = float(np.mean([1 / len(i["choices"]) for i in items]))
        ci = paired_bootstrap(np.full(len(rec["acc"]), chance * 100), rec["acc"] * 100, "mean_diff", n=1000, seed=0)
        rows.append(
            {
                "task": task,
                "items": len(items),
                "baseline accuracy (%)": round(100 * rec["acc"].mean(), 1),
                "chance (%)": round(100 * chance, 1),
                "above chance (pts, 95% CI)": f"{ci['point']:+.1f} [{ci['lo']:+.1f}, {ci['hi']:+.1f}]",
                "above_chance_ci": ci,
            }
        )
    return pd.DataFrame(rows).set_index("task") if rows else pd.DataFrame()


def flip_table(P, result: dict):
    """Per checkpoint and task: accuracy change, flip rate with a paired 95% CI over items, and
    the flips in each direction."""
    rows = []
    for name, cand in result["cands"].items():
        for task in cand["items"]:
            b, c = result["base"]["items"][task]["acc"], cand["items"][task]["acc"]
            f = flips(b, c)
            _, arr, _, _ = metric_pair(f"{task}_flip_rate", result["base"], cand, result["streams"])
            ci = paired_bootstrap(
                np.zeros(len(arr)),
                arr,
                "mean_diff",
                n=P.evaluate.bootstrap_samples,
                seed=P.study.seed,
                confidence=P.evaluate.confidence,
            )
            rows.append(
                {
                    "checkpoint": name,
                    "task": task,
                    "accuracy change (pts)": round(100 * (c.mean() - b.mean()), 1),
                    "flip rate (%)": round(ci["point"], 1),
                    "CI low": round(ci["lo"], 1),
                    "CI high": round(ci["hi"], 1),
                    "right->wrong": f["right_to_wrong"],
                    "wrong->right": f["wrong_to_right"],
                    "items": f["n_items"],
                }
            )
    return pd.DataFrame(rows).set_index(["checkpoint", "task"]) if rows else pd.DataFrame()


def effects_table(effects: list[dict]):
    rows = [
        {
            "comparison": f"{e['a']} vs {e['b']}",
            "kind": e.get("kind", "calibration source"),
            "metric": e["metric"],
            "unit": e["unit"],
            "effect": round(e["point"], 3),
            "CI low": round(e["lo"], 3),
            "CI high": round(e["hi"], 3),
            "draws": f"{e['draws'][0]} vs {e['draws'][1]}" + (" (paired)" if e.get("paired_draws") else ""),
            "within noise": e["within_noise"],
        }
        for e in effects
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots
def plot_matrix(matrix):
    fig, ax = plt.subplots(figsize=(9, 3.6))
    # Colour by harm: perplexity up and accuracy down are both bad (red).
    harm = matrix.copy()
    for c in harm.columns:
        if "pts" in c:
            harm[c] = -harm[c]
    sns.heatmap(
        harm,
        annot=matrix.round(2),
        fmt="",
        cmap="RdBu_r",
        center=0,
        ax=ax,
        cbar_kws={"label": "harm (ppl % up / accuracy pts down)"},
    )
    ax.set(
        title="Cross-domain matrix: change vs baseline by calibration source (mean over draws)",
        xlabel="evaluation",
        ylabel="calibration source",
    )
    fig.tight_layout()
    return fig


def category_damage_rows(result: dict, bits: int = 4) -> list[dict]:
    """Per calibration source, checkpoint and token category: mean NLL change on in-domain text
    (millinats/token)."""
    stream = result["streams"]["in_domain"]
    rows = []
    for src, names in source_groups(result["records"], bits).items():
        for n in names:
            dmg = category_damage(
                result["base"]["streams"]["in_domain"]["nll"],
                result["cands"][n]["streams"]["in_domain"]["nll"],
                stream.category,
            )
            for cat, v in dmg.items():
                rows.append(
                    {
                        "calibration": src,
                        "checkpoint": n,
                        "category": f"{cat} ({v['tokens']} tok)",
                        "delta_nll_mnats": 1000 * v["delta_nll"],
                    }
                )
    return rows


def plot_category_damage(result: dict, bits: int = 4):
    """Mean NLL increase per token category on in-domain text, per calibration source."""
    df = pd.DataFrame(category_damage_rows(result, bits))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=df, x="category", y="delta_nll_mnats", hue="calibration", ax=ax, errorbar=("pi", 100), capsize=0.1)
    ax.axhline(0, color="grey", lw=1)
    ax.set(
        title=f"Where {bits}-bit quantization hurts: NLL increase per token category (in-domain text)",
        xlabel="token category",
        ylabel="mean NLL change vs baseline\n(millinats/token; bars: range over draws)",
    )
    ax.legend(title="calibration source")
    fig.tight_layout()
    return fig, df


_VERDICT_COLOURS = {"pass": "#2ca02c", "fail": "#d62728", "inconclusive": "#ff7f0e"}


def _plot_budget_metric(ax, metric: str, sub: list[dict]) -> None:
    """One metric's panel: each checkpoint's degradation with its CI, and the budget line."""
    for i, r in enumerate(sub):
        ci = r["ci"]
        if metric.endswith("_ppl"):
            point, lo, hi = ci["point"], ci["lo"], ci["hi"]
        else:
            point, lo, hi = -ci["point"], -ci["hi"], -ci["lo"]
        ax.errorbar(
            point, i, xerr=[[point - lo], [hi - point]], fmt="o", color=_VERDICT_COLOURS[r["verdict"]], capsize=3
        )
    ax.axvline(sub[0]["limit"], color="#d62728", ls="--", label=f"budget ({sub[0]['limit']} {sub[0]['unit']})")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(sub)), [r["checkpoint"] for r in sub], fontsize=8)
    ax.set(title=metric, xlabel=f"degradation ({sub[0]['unit']}), 95% CI")
    ax.legend(fontsize=8, loc="lower right")


def plot_budget(rows: list[dict]):
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.2 * len(metrics), 0.42 * len(rows) / max(1, len(metrics)) + 2.2), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics):
        _plot_budget_metric(ax, metric, [r for r in rows if r["metric"] == metric])
    fig.suptitle(
        "Quality budget: pass only when the worse end of the CI is inside the budget (green pass, red fail, orange inconclusive)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
