"""Tables and figures of benchmark results, as the step-04 notebook, the report and
``quantstudy bench`` show them: speed, agreement, fleet; speed-ups, decode scaling, memory."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd


def speed_table(result: dict[str, Any], scope: str = "full_model"):
    """Speed-ups over the baseline (median and range) beside the tokens/s they come from, per shape."""
    sp = result["speedups"]
    cols = [
        "path",
        "batch",
        "context",
        "decode_speedup",
        "decode_speedup_low",
        "decode_speedup_high",
        "prefill_speedup",
        "prefill_speedup_low",
        "prefill_speedup_high",
    ]
    t = result["timings"]
    keys = ["path", *(["mode"] if "mode" in t.columns and "mode" in sp.columns else []), "batch", "context"]
    t = t[t["scope"] == scope][
        [*keys, "decode_tok_s_median", "decode_tok_s_min", "decode_tok_s_max", "prefill_tok_s_median"]
    ]
    cols = [*keys, *(c for c in cols if c not in keys)]
    return sp[sp["scope"] == scope][cols].merge(t, on=keys).round(3)


def plot_decode_scaling(result: dict[str, Any], title: str = ""):
    """Decode time per token (ms, median of repeats) against context (at the smallest batch) and
    against batch (at the smallest context), one line per path x mode; scope ``measured``."""
    t = result["timings"]
    t = t[t["scope"] == "measured"].assign(ms_per_step=lambda d: 1e3 * d["batch"] / d["decode_tok_s_median"])
    if "mode" not in t.columns:
        t = t.assign(mode="eager")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = (("context", "batch", "prompt context (tokens)"), ("batch", "context", "batch size (sequences)"))
    for ax, (x, fixed, xlabel) in zip(axes, panels):
        at = t[fixed].min()
        for (path, mode), g in t[t[fixed] == at].groupby(["path", "mode"], sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g["ms_per_step"], marker="o", ls="-" if mode == "eager" else "--", label=f"{path}, {mode}")
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel=xlabel,
            ylabel="decode ms per step (one token per sequence)",
            title=f"decode step time vs {x} ({fixed} {at})",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    env = result.get("env") or {}
    fig.suptitle(title or f"Decode scaling on {env.get('hardware_label', 'this hardware')}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_speedups(results: dict[str, dict[str, Any]], hardware: str):
    """Decode and prefill speed-up over the baseline per path, with the spread of repeats;
    anything left of 1.0 is the trap: a quantized path slower than the baseline."""
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(
            13,
            0.5
            + 0.45
            * sum(
                len(r["speedups"][(r["speedups"]["scope"] == "full_model") & (r["speedups"]["path"] != "baseline")])
                for r in results.values()
            )
            + 1.2,
        ),
        squeeze=False,
    )
    for ax, phase in zip(axes[0], ("decode", "prefill")):
        labels, i = [], 0
        for model_name, r in results.items():
            sp = r["speedups"]
            sp = sp[(sp["scope"] == "full_model") & (sp["path"] != "baseline")]
            for _, row in sp.iterrows():
                v, lo, hi = row[f"{phase}_speedup"], row[f"{phase}_speedup_low"], row[f"{phase}_speedup_high"]
                color = "#d62728" if hi < 1.0 else ("#ff7f0e" if v < 1.0 else "#2ca02c")
                ax.barh(i, v, color=color, alpha=0.85)
                ax.errorbar(v, i, xerr=[[v - lo], [hi - v]], fmt="none", color="black", capsize=3)
                labels.append(f"{model_name}: {row['path']} b{row['batch']} ctx{row['context']}")
                i += 1
        ax.axvline(1.0, color="black", ls="--", lw=1, label="baseline speed")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set(title=f"{phase} speed-up over the float baseline", xlabel="x baseline tokens/s (bars: range of repeats)")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Inference paths on {hardware}: red = slower than baseline (the trap), green = faster", fontsize=10)
    fig.tight_layout()
    return fig


def plot_memory(results: dict[str, dict[str, Any]]):
    """Weight memory of the whole model per path, one panel per model."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        mem = r["memory"]
        ax.bar(mem["path"], mem["weight_bytes_full_model"] / 1e6, color=["#7f7f7f", "#ff7f0e", "#2ca02c"][: len(mem)])
        for x, v in zip(mem["path"], mem["weight_bytes_full_model"] / 1e6):
            ax.text(x, v, f"{v:,.1f}", ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{name}: weight memory per path", ylabel="MB (10^6 bytes), whole model")
    fig.tight_layout()
    return fig


def agreement_table(results: dict[str, dict[str, Any]]):
    """Every path's logits against its baseline's, per model (see :func:`.probe.agreement`)."""
    frames = [r["agreement"].assign(model=name) for name, r in results.items() if "agreement" in r]
    if not frames:
        return pd.DataFrame()
    cols = ["model", "path", "rel_rms_diff", "max_abs_diff", "top1_agreement", "rel_rms_diff_vs_baseline", "loader"]
    table = pd.concat(frames, ignore_index=True)
    return table[[c for c in cols if c in table.columns]].round(5)


def fleet_table(result: dict[str, Any]):
    """Devices at peak and cost per 1000 conversations per path (see :func:`.fleet.fleet_cost`)."""
    cols = [
        "path",
        "hardware",
        "weight_gb",
        "decode_tokens_per_s_per_device",
        "conversations_per_device_by_memory",
        "devices_at_peak",
        "bound_by",
        "cost_per_1000_conversations",
    ]
    f = result["fleet"]
    return f[[c for c in cols if c in f.columns]].round(4)
