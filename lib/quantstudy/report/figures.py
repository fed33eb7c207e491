"""The report's figures: one ``fig_*`` function per figure, redrawn from a run's metrics.

Each ``fig_*`` takes ``M`` (the dict :func:`quantstudy.report.build.load_metrics` returns)
and returns a matplotlib figure, or None when the run has nothing to draw; most call the
steps' own plot functions on rows rebuilt from ``metrics.json``. The report notebook imports
this module as ``R`` and draws each figure with ``R.show(R.fig_x(M), R.CAPTIONS["x"])``
(:func:`quantstudy.report.sections.figure_cell`), which numbers it ``figure-N`` and gives it a
one-sentence caption from :data:`CAPTIONS`.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, display

from quantstudy.report.formatting import escape_html, money, num
from quantstudy.report.lookups import bench_models, ci_level, fleet_row, label, lower_is_better, main_bench
from quantstudy.steps.rollout import plot_guardrails, plot_power, plot_sequential

CAPTIONS = {  # one sentence per figure: what to look at
    "calibration": "Look at whether the in-domain sets cover more domain terms than the generic ones, and at the "
    "overlap with the evaluation text, which should stay low (no leakage).",
    "search_settings": "Look at whether the extra AutoAWQ search settings buy a lower perplexity for their longer "
    "search time.",
    "budget": "Look at the worse end of each interval against the dashed budget line: a line passes only when the "
    "whole interval stays inside it.",
    "effects": "Look at whether each interval crosses the dashed zero line: grey points are within noise, blue ones "
    "are real differences between calibration sources.",
    "matrix": "Look along each row for the evaluation domain a calibration source hurts least and most.",
    "category_damage": "Look at which token categories lose the most under quantization, and whether in-domain "
    "calibration shrinks that loss.",
    "speedups": "Look for bars below 1x: those paths run slower than the float baseline (the trap).",
    "memory_cost": "Look at how far the 4-bit paths cut weight memory, and whether that buys fewer devices and a "
    "lower cost per 1,000 conversations.",
    "rollout": "Look at the one-sided lower bound against the dotted margin line: cut over needs it above the "
    "margin at the final stage.",
    "worse_scenario": "Look at where the 'worse' scenario stops: the rollback trigger must fire before the full "
    "cut-over.",
    "power_plan": "Look at the day each metric's power crosses the dotted per-metric target, against the dashed end "
    "of the schedule: a crossing after it means the rollout will likely end in hold.",
    "guardrails": "Look at each metric's one-sided bound against its dotted margin on the metric's bad side: cut over "
    "needs every bound on the good side at the final stage; shaded looks failed the SRM check.",
    "broken_assignment_scenario": "Look at the shaded looks: with a logging bug that loses part of the quantized arm, "
    "the SRM check must stop the rollout before any verdict.",
}
_figures = {"n": 0}


def start_figures() -> None:
    """Number the report's figures from 1 again (the report notebook's setup cell calls it)."""
    _figures["n"] = 0


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def show(fig, caption: str | None = None) -> None:
    """Display a figure in the executing notebook and release it: with a caption, as a numbered
    ``<figure>`` (embedded PNG, "Figure N." caption); without one, as a plain PNG output."""
    if fig is None:
        return
    if caption is None:
        display(fig)
    else:
        _figures["n"] += 1
        n = _figures["n"]
        display(
            HTML(
                f'<figure id="figure-{n}" class="report-figure"><img src="data:image/png;base64,'
                f'{_png_base64(fig)}" alt="Figure {n}: {escape_html(caption)}"><figcaption><strong>Figure {n}.</strong> '
                f"{escape_html(caption)}</figcaption></figure>"
            )
        )
    try:
        plt.close(fig)
    except Exception:  # noqa: BLE001 - a bare Figure is not managed by pyplot
        pass


def fig_calibration(M: Mapping[str, Any]):
    """Tokens drawn vs kept by AutoAWQ, domain-term coverage and 3-gram overlap per set."""
    m = M["01_calibration"]
    sets = m.get("sets") or []
    if not sets:
        return None
    names = [s["name"] for s in sets]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(names) + 2.4))
    y = range(len(names))
    ax = axes[0]
    ax.barh([i + 0.2 for i in y], [s.get("tokens") or 0 for s in sets], height=0.4, color="#9ecae1", label="drawn")
    ax.barh(
        [i - 0.2 for i in y],
        [s.get("kept_by_autoawq") or 0 for s in sets],
        height=0.4,
        color="#3182bd",
        label="kept by AutoAWQ",
    )
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Calibration tokens per set", xlabel="tokens")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    cov = m.get("coverage") or {}
    cats = sorted({c for n in names for c in (cov.get(n) or {})})
    if cats:
        h = 0.8 / len(cats)
        for k, c in enumerate(cats):
            ax.barh(
                [i - 0.4 + h * (k + 0.5) for i in y],
                [100 * ((cov.get(n) or {}).get(c, {}).get("share") or 0) for n in names],
                height=h,
                label=c,
            )
        ax.legend(title="term category", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no domain lexicon", ha="center", transform=ax.transAxes)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Domain-term coverage", xlabel="% of lexicon terms present")
    ax = axes[2]
    ov = m.get("overlap_3gram") or {}
    ax.barh(list(y), [100 * (ov.get(n) or 0) for n in names], color="#fdae6b")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(title="Overlap with in-domain evaluation text", xlabel="% of word 3-grams found in eval text")
    fig.tight_layout()
    return fig


def fig_search_settings(M: Mapping[str, Any]):
    """quantize.plot_search_settings, redrawn from step 02's checkpoint records and sanity rows."""
    q = M["02_quantize"]
    if not any(r.get("variant") for r in q.get("checkpoints") or []):
        return None
    from quantstudy.steps.quantize import plot_search_settings  # lazy: the step module imports torch

    return plot_search_settings(q["checkpoints"], q.get("sanity") or [])


def fig_budget(M: Mapping[str, Any]):
    rows = M["03_evaluate"].get("budget") or []
    if not rows:
        return None
    from quantstudy.steps.evaluate import plot_budget  # lazy: the step module imports torch

    fig = plot_budget(rows)
    for ax in fig.axes:  # keep the legend off the bottom row of points
        if ax.get_legend() is not None:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.set_size_inches(fig.get_size_inches()[0], fig.get_size_inches()[1] + 0.6)
    fig.tight_layout()
    return fig


def fig_effects(M: Mapping[str, Any]):
    """Forest plot of the calibration-source effects, one panel per unit."""
    effects = [
        e
        for e in M["03_evaluate"].get("calibration_effects") or []
        if e.get("kind", "calibration source") == "calibration source" and "/" not in e["a"]
    ]
    if not effects:
        return None
    units = list(dict.fromkeys(e.get("unit", "") for e in effects))
    n_max = max(sum(e.get("unit", "") == u for e in effects) for u in units)
    fig, axes = plt.subplots(1, len(units), figsize=(6.5 * len(units), 0.38 * n_max + 2.9), squeeze=False)
    ci = ci_level(M)
    for ax, unit in zip(axes[0], units):
        sub = [e for e in effects if e.get("unit", "") == unit]
        for i, e in enumerate(sub):
            color = "#7f7f7f" if e.get("within_noise") else "#1f77b4"
            ax.errorbar(
                e["point"], i, xerr=[[e["point"] - e["lo"]], [e["hi"] - e["point"]]], fmt="o", color=color, capsize=3
            )
        ax.axvline(0, color="black", lw=1, ls="--", label="no effect")
        ax.set_yticks(range(len(sub)), [f"{e['a']} vs {e['b']}: {label(e['metric'])}" for e in sub], fontsize=8)
        directions = {lower_is_better(e["metric"], unit) for e in sub}
        better = (
            "lower = better"
            if directions == {True}
            else "higher = better"
            if directions == {False}
            else "flip rate: lower = better; accuracy: higher = better"
        )
        ax.set(title=f"Calibration-source effect ({unit})", xlabel=f"difference a - b ({unit}, {ci}; {better})")
        ax.plot([], [], "o", color="#7f7f7f", label="within noise (CI includes 0)")
        ax.plot([], [], "o", color="#1f77b4", label="CI excludes 0")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def matrix_frame(M: Mapping[str, Any]):
    mat = M["03_evaluate"].get("cross_domain_matrix") or {}
    return pd.DataFrame.from_dict(mat, orient="index") if mat else None


def fig_matrix(M: Mapping[str, Any]):
    frame = matrix_frame(M)
    if frame is None or frame.empty:
        return None
    from quantstudy.steps.evaluate import plot_matrix  # lazy: the step module imports torch

    fig = plot_matrix(frame.astype(float))
    fig.set_size_inches(10, 4.4)
    ax = fig.axes[0]
    ax.tick_params(axis="y", labelrotation=0)
    ax.tick_params(axis="x", labelrotation=15)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def fig_category_damage(M: Mapping[str, Any]):
    rows = M["03_evaluate"].get("category_damage") or []
    if not rows:
        return None
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    sns.barplot(data=df, x="category", y="delta_nll_mnats", hue="calibration", ax=ax, errorbar=("pi", 100), capsize=0.1)
    ax.axhline(0, color="grey", lw=1)
    ax.set(
        title="Where quantization hurts: NLL increase per token category (in-domain text)",
        xlabel="token category (scored tokens)",
        ylabel="mean NLL change vs baseline\n(millinats/token; bars: range over draws)",
    )
    ax.legend(title="calibration source", fontsize=8)
    fig.tight_layout()
    return fig


def fig_speedups(M: Mapping[str, Any]):
    models = bench_models(M)
    results = {}
    for name, r in models.items():
        sp = pd.DataFrame(r.get("speedups") or [])
        if sp.empty:
            continue
        if "scope" not in sp.columns:
            sp["scope"] = "full_model"
        elif not (sp["scope"] == "full_model").any():
            sp = sp[sp["scope"] == "measured"].assign(scope="full_model")
        results[name] = {"speedups": sp}
    if not results:
        return None
    from quantstudy.steps.benchmark import plot_speedups  # lazy: the step module imports torch

    _, main = main_bench(M)
    return plot_speedups(results, (main.get("env") or {}).get("hardware_label") or "this hardware")


def fig_memory_cost(M: Mapping[str, Any]):
    """Whole-model weight memory and fleet cost per inference path (step 04's main model)."""
    name, r = main_bench(M)
    mem = r.get("memory") or []
    if not mem:
        return None
    colors = {"baseline": "#7f7f7f", "naive4": "#ff7f0e", "fast4": "#2ca02c"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    paths = [m["path"] for m in mem]
    gb = [(num(m.get("weight_bytes_full_model")) or 0) / 1e9 for m in mem]
    axes[0].bar(paths, gb, color=[colors.get(p, "#1f77b4") for p in paths])
    for x, v in zip(paths, gb):
        axes[0].text(x, v, f"{v:,.3f}", ha="center", va="bottom", fontsize=8)
    axes[0].set(title=f"{name}: weight memory per path", ylabel="GB (10^9 bytes), whole model")
    fleet = [f for p in paths if (f := fleet_row(r, p))]
    fp = [f["path"] for f in fleet]
    axes[1].bar(fp, [f.get("devices_at_peak") or 0 for f in fleet], color=[colors.get(p, "#1f77b4") for p in fp])
    for x, f in zip(fp, fleet):
        axes[1].text(
            x,
            f.get("devices_at_peak") or 0,
            f"{f.get('devices_at_peak')} ({f.get('bound_by')})",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[1].set(title="Devices needed at peak", ylabel="devices (label: what bounds the fleet)")
    axes[2].bar(
        fp, [f.get("cost_per_1000_conversations") or 0 for f in fleet], color=[colors.get(p, "#1f77b4") for p in fp]
    )
    for x, f in zip(fp, fleet):
        axes[2].text(
            x,
            f.get("cost_per_1000_conversations") or 0,
            money(f.get("cost_per_1000_conversations")),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes[2].set(title="Cost per 1,000 conversations", ylabel="$ per 1,000 conversations (fleet sized for peak)")
    hw = (r.get("env") or {}).get("hardware_label") or ""
    fig.suptitle(
        f"Memory, fleet and cost per inference path ({name} model on {hw}; batch "
        f"{fleet[0].get('batch_size') if fleet else 'n/a'})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def looks_frame(summary: Mapping[str, Any]):
    looks = pd.DataFrame(summary.get("looks") or [])
    looks.attrs.update(
        {
            "stopped_at_look": summary.get("stopped_at_look"),
            "method": summary.get("method"),
            "metrics": summary.get("guardrails") or [],
        }
    )
    return looks


def fig_rollout(M: Mapping[str, Any], scenario: str = "rollout"):
    """rollout.plot_sequential, redrawn from step 05's looks (``scenario``: rollout or worse_scenario)."""
    summary = M["05_rollout_analysis"].get(scenario)
    if not summary or not summary.get("looks"):
        return None
    looks = looks_frame(summary)
    fig = plot_sequential(looks, float(summary.get("margin") or 0.0), bool(summary.get("simulated")))
    which = (
        "Rollback-trigger check, 'worse' scenario"
        if scenario == "worse_scenario"
        else f"Rollout of the candidate, scenario '{summary.get('scenario') or 'real logs'}'"
    )
    for ax in fig.axes[:1]:
        ax.set_title(f"{which}\n{ax.get_title()}", fontsize=10)
    return fig


def fig_guardrails(M: Mapping[str, Any], scenario: str = "rollout"):
    """rollout.plot_guardrails redrawn from step 05's looks (``scenario``: rollout,
    worse_scenario or broken_assignment_scenario); None for a run recorded before guardrails."""
    summary = M["05_rollout_analysis"].get(scenario)
    if not summary or not summary.get("looks") or not summary.get("guardrails"):
        return None
    fig = plot_guardrails(looks_frame(summary), bool(summary.get("simulated")))
    which = (
        "SRM check, 'broken_assignment' scenario"
        if scenario == "broken_assignment_scenario"
        else "Rollback-trigger check, 'worse' scenario"
        if scenario == "worse_scenario"
        else f"Rollout of the candidate, scenario '{summary.get('scenario') or 'real logs'}'"
    )
    fig.suptitle(f"{which}\n{fig.get_suptitle()}", fontsize=10)
    return fig


def power_plan_frame(plan: Mapping[str, Any]):
    """The power plan as rollout.power_plan returns it, rebuilt from step 05's metrics.json."""
    out = pd.DataFrame(plan.get("metrics") or [])
    out.attrs.update({k: v for k, v in plan.items() if k != "metrics"})
    return out


def fig_power_plan(M: Mapping[str, Any]):
    """rollout.plot_power redrawn from step 05's power plan; None for a run recorded before it."""
    plan = M["05_rollout_analysis"].get("power_plan")
    if not plan or not plan.get("curve"):
        return None
    return plot_power(power_plan_frame(plan))
