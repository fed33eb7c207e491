"""What step 05 shows: its tables (per-metric tests, SRM line, decisions), the power verdict
sentence and its figures. Every figure drawn from simulated logs says SIMULATED in its title
and as a watermark."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from quantstudy.rollout_logs import ARMS


# --------------------------------------------------------------------------- tables
def _scaled(x: Any, k: float) -> float:
    try:
        return float(x) * k
    except (TypeError, ValueError):
        return float("nan")


def metric_table(looks: pd.DataFrame, specs: list[dict] | None = None) -> pd.DataFrame:
    """Tidy: one row per look and metric (satisfaction and each guardrail), differences and
    bounds in the metric's display unit (points for shares, seconds for latency)."""
    specs = specs or looks.attrs.get("metrics") or []
    rows = []
    for s in specs:
        m, k = s["metric"], float(s.get("scale", 1.0))
        for _, r in looks.iterrows():
            rows.append(
                {
                    "look": int(r["look"]),
                    "metric": m,
                    "direction": "higher is better" if s["higher_is_better"] else "lower is better",
                    "unit": s["unit"],
                    "margin": s["margin"] * k,
                    "mean_baseline": r.get(f"{m}_mean_baseline"),
                    "mean_quantized": r.get(f"{m}_mean_quantized"),
                    "difference": _scaled(r.get(f"{m}_difference"), k),
                    "ni_bound": _scaled(r.get(f"{m}_ni_bound"), k),
                    "ci_lower": _scaled(r.get(f"{m}_ci_lower"), k),
                    "ci_upper": _scaled(r.get(f"{m}_ci_upper"), k),
                    "non_inferior": bool(r.get(f"{m}_non_inferior")),
                    "significantly_worse": bool(r.get(f"{m}_significantly_worse")),
                    "decision": r.get("decision"),
                }
            )
    return pd.DataFrame(rows)


def srm_table(result: dict) -> pd.DataFrame:
    """The SRM line per look: observed vs planned quantized share, chi-square p, verdict."""
    looks = result["looks"]
    out = looks[
        [
            "look",
            "n_baseline",
            "n_quantized",
            "quantized_share_cum",
            "planned_share_cum",
            "srm_p_value",
            "srm_ok",
            "decision",
        ]
    ].rename(columns={"quantized_share_cum": "observed_share", "planned_share_cum": "planned_share"})
    out = out.assign(verdict=np.where(out["srm_ok"], "ok", "SRM: do not trust this look"))
    return out.round({"observed_share": 5, "planned_share": 5})


def decision_table(result: dict) -> pd.DataFrame:
    """Per look: counts, SRM p-value, satisfaction's test, whether every metric is
    non-inferior, which metric is significantly worse, and the decision."""
    cols = [
        "look",
        "stage",
        "n_baseline",
        "n_quantized",
        "srm_p_value",
        "difference",
        "ni_lower",
        "ci_lower",
        "ci_upper",
        "non_inferior",
        "significantly_worse",
        "all_non_inferior",
        "worse_metrics",
        "decision_at_look",
        "decision",
    ]
    looks = result["looks"]
    return looks[[c for c in cols if c in looks.columns]].round(4)


def power_verdict(plan: pd.DataFrame) -> str:
    """One sentence: days needed vs scheduled, with the warning when underpowered."""
    a = plan.attrs
    needed = a["days_needed"] if a["days_needed"] is not None else "more than the planning horizon's"
    text = (
        f"Power plan: {a['K']} metrics, each planned at {a['power_per_metric']:.1%} power "
        f"(whole rule {a['power']:.0%}, beta split over K={a['K']}), one-sided alpha {a['alpha_one_sided']}: "
        f"{needed} days needed, {a['days_scheduled']} scheduled; {a['note']}."
    )
    return (f"WARNING: {a['warning']} " + text) if a["warning"] else text


# --------------------------------------------------------------------------- figures
class NotebookFigure(Figure):
    """A pyplot-free matplotlib figure that a notebook displays as a PNG (``display(fig)`` or
    ``fig`` as a cell's last line), with no pyplot state to leak or close."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight", dpi=100)
        return buf.getvalue()


ARM_COLORS = {"baseline": "#1f77b4", "quantized": "#d62728"}
DECISION_COLORS = {
    "continue": "#555555",
    "cut over": "#2ca02c",
    "roll back": "#d62728",
    "hold": "#ff7f0e",
    "stop (SRM)": "#9467bd",
}


def _watermark_simulated(fig: Figure) -> None:
    fig.text(
        0.5,
        0.5,
        "SIMULATED",
        fontsize=64,
        color="grey",
        alpha=0.18,
        rotation=25,
        ha="center",
        va="center",
        weight="bold",
        zorder=0,
    )


def _mark_simulated(fig: Figure, ax, title: str, simulated: bool) -> None:
    if simulated:
        title = f"SIMULATED: {title}"
        _watermark_simulated(fig)
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
        ax.errorbar(
            x,
            g["mean"],
            yerr=[g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]],
            fmt="o-",
            capsize=3,
            color=ARM_COLORS[arm],
            label=f"{arm} (mean, 95% CI)",
        )
    ax.set_xlabel("rollout day")
    ax.set_ylabel("satisfaction (share satisfied, 0-1)")
    ax2 = ax.twinx()
    q = (
        daily_df[daily_df["arm"] == "quantized"]
        .set_index("day")["share"]
        .reindex(sorted(daily_df["day"].unique()), fill_value=0.0)
    )
    ax2.step(
        q.index,
        q.to_numpy() * 100,
        where="mid",
        color="grey",
        alpha=0.6,
        linestyle="--",
        label="quantized traffic share (%)",
    )
    ax2.fill_between(q.index, 0, q.to_numpy() * 100, step="mid", color="grey", alpha=0.08)
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("quantized traffic share (%)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=9)
    ax.set_xticks(sorted(daily_df["day"].unique()))
    _mark_simulated(fig, ax, "Daily satisfaction per arm during the staged rollout", simulated)
    return fig


def _annotate_decisions(ax, looks_df: pd.DataFrame, column: str, scale: float) -> None:
    prev = None
    for _, row in looks_df.iterrows():
        y = row.get(column)
        if row["decision"] != prev and not pd.isna(y):
            ax.annotate(
                row["decision"],
                (row["look"], float(y) * scale),
                xytext=(0, 14),
                textcoords="offset points",
                ha="center",
                fontsize=9,
                weight="bold",
                color=DECISION_COLORS.get(row["decision"], "black"),
                arrowprops={"arrowstyle": "-", "color": "grey"},
            )
        prev = row["decision"]
    stop = looks_df.attrs.get("stopped_at_look")
    if stop is not None:
        final = looks_df["decision"].iloc[-1]
        ax.axvline(
            stop,
            color=DECISION_COLORS.get(final, "grey"),
            linestyle="-.",
            linewidth=1,
            label=f"rollout stops: {final} (look {stop})",
        )


def plot_sequential(looks_df: pd.DataFrame, margin: float, simulated: bool) -> Figure:
    """Cumulative quantized - baseline satisfaction difference per look with the library's
    adjusted bounds, lines at 0 and -margin, and the decisions annotated."""
    fig = NotebookFigure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    d = looks_df.dropna(subset=["difference"])
    pts = 100.0
    ax.fill_between(
        d["look"],
        d["ci_lower"] * pts,
        d["ci_upper"] * pts,
        color="#1f77b4",
        alpha=0.15,
        label="two-sided adjusted CI (harm test)",
    )
    ax.plot(d["look"], d["difference"] * pts, "o-", color="#1f77b4", label="difference (quantized - baseline)")
    ax.plot(d["look"], d["ni_lower"] * pts, "^--", color="#ff7f0e", label="one-sided adjusted lower bound (NI test)")
    ax.axhline(0, color="black", linewidth=1, label="no difference")
    ax.axhline(
        -margin * pts,
        color="#d62728",
        linestyle=":",
        linewidth=1.5,
        label=f"non-inferiority margin (-{margin * pts:g} points)",
    )
    _annotate_decisions(ax, looks_df, "difference", pts)
    method = looks_df.attrs.get("method", "sequential")
    ax.set_xlabel("look (end of rollout day, cumulative data)")
    ax.set_ylabel("satisfaction difference (percentage points)")
    ax.set_xticks(sorted(looks_df["look"].unique()))
    ax.legend(loc="best", fontsize=9)
    final = looks_df["decision"].iloc[-1] if len(looks_df) else "n/a"
    how = "group-sequential" if method == "sequential" else "Bonferroni over looks"
    _mark_simulated(
        fig, ax, f"Satisfaction non-inferiority, {how} (spotify-confidence): final decision '{final}'", simulated
    )
    return fig


def _metric_panel(ax, looks_df: pd.DataFrame, s: dict, srm_bad: Any, shared: dict[str, Any]) -> None:
    """One metric's panel of :func:`plot_guardrails`; its common legend entries go into ``shared``."""
    m, k = s["metric"], float(s.get("scale", 1.0))
    d = looks_df.dropna(subset=[f"{m}_difference"])
    unit = "percentage points" if s["unit"] == "points" else "seconds"
    sign = -1.0 if s["higher_is_better"] else 1.0
    ax.fill_between(
        d["look"],
        d[f"{m}_ci_lower"] * k,
        d[f"{m}_ci_upper"] * k,
        color="#1f77b4",
        alpha=0.15,
        label="two-sided adjusted CI (harm test)",
    )
    ax.plot(d["look"], d[f"{m}_difference"] * k, "o-", color="#1f77b4", label="difference (quantized - baseline)")
    ax.plot(
        d["look"],
        d[f"{m}_ni_bound"] * k,
        "^--",
        color="#ff7f0e",
        label="one-sided adjusted bound (NI test; lower bound if higher is better, else upper)",
    )
    ax.axhline(0, color="black", linewidth=1)
    for look in srm_bad:
        ax.axvspan(
            look - 0.5, look + 0.5, color=DECISION_COLORS["stop (SRM)"], alpha=0.12, label="look failed the SRM check"
        )
    _annotate_decisions(ax, looks_df, f"{m}_difference", k)
    for h, lab in zip(*ax.get_legend_handles_labels()):
        shared.setdefault(lab, h)
    margin = ax.axhline(
        sign * s["margin"] * k,
        color="#d62728",
        linestyle=":",
        linewidth=1.5,
        label=f"margin ({sign * s['margin'] * k:+g} {'points' if s['unit'] == 'points' else 's'})",
    )
    ax.legend(handles=[margin], loc="best", fontsize=8)
    ax.set_title(f"{m}: {s['label']} ({'higher' if s['higher_is_better'] else 'lower'} is better)", fontsize=10)
    ax.set_xlabel("look (rollout day, cumulative)")
    ax.set_ylabel(f"quantized - baseline ({unit})")
    ax.set_xticks(sorted(looks_df["look"].unique()))


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
        _metric_panel(ax, looks_df, s, srm_bad, shared)
    if shared:
        fig.legend(list(shared.values()), list(shared.keys()), loc="outside lower center", ncol=3, fontsize=8)
    final = looks_df["decision"].iloc[-1] if len(looks_df) else "n/a"
    srm_note = (
        f"; SRM at look(s) {', '.join(map(str, srm_bad))}" if len(srm_bad) else "; SRM check passed at every look"
    )
    title = f"Satisfaction and guardrails per look: final decision '{final}'{srm_note}"
    if simulated:
        title = f"SIMULATED: {title}"
        _watermark_simulated(fig)
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
    ax.axhline(
        a["power_per_metric"] * 100,
        color="#d62728",
        linestyle=":",
        label=f"target per metric 1 - beta/K = {a['power_per_metric']:.1%} (K = {a['K']})",
    )
    ax.axvline(a["days_scheduled"], color="grey", linestyle="--", label=f"end of schedule (day {a['days_scheduled']})")
    if a.get("days_needed") is not None:
        ax.axvline(a["days_needed"], color="#2ca02c", linestyle="-.", label=f"days needed ({a['days_needed']})")
    ax.set_ylim(0, 102)
    ax.set_xlabel("rollout day (days after the schedule continue at its last served share)")
    ax.set_ylabel("power of the non-inferiority test (%)")
    ax.legend(loc="lower right", fontsize=8)
    verdict = "enough" if a["sufficient"] else "UNDERPOWERED"
    ax.set_title(
        f"Power plan before launch (fixed-horizon approximation, slightly optimistic): {verdict}, "
        f"{a['days_needed'] if a['days_needed'] is not None else '>' + str(int(curve['day'].max()))} days "
        f"needed, {a['days_scheduled']} scheduled",
        fontsize=10,
    )
    return fig
