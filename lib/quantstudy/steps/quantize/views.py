"""Step 02's tables and figures: the plan, the checkpoints, the sanity check, and the AutoAWQ
search settings compared.

pandas and matplotlib are imported where a table or figure is drawn: the benchmark imports
this package for PeakRSS only.
"""

from __future__ import annotations


def plan_table(plan: list[dict]):
    """One row per planned checkpoint."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    return pd.DataFrame(plan).set_index("name")


def records_table(records: list[dict]):
    """One row per checkpoint written: its settings, search time, peak memory and size."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    cols = [
        "method",
        "bits",
        "calibration_source",
        "draw",
        "n_samples",
        "duo_scaling",
        "apply_clip",
        "simulated",
        "search_wall_s",
        "peak_rss_mb",
        "checkpoint_bytes",
        "effective_bits_per_weight",
    ]
    return pd.DataFrame([{"name": r["name"], **{c: r.get(c) for c in cols}} for r in records]).set_index("name")


def sanity_table(rows: list[dict]):
    """Perplexities per domain, and each AWQ checkpoint against RTN with its 95% CI."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    out = []
    for r in rows:
        row = {
            "name": r["name"],
            "method": r["method"],
            "bits": r["bits"],
            "ppl generic": round(r.get("ppl_generic", float("nan")), 3),
            "ppl in-domain": round(r.get("ppl_in_domain", float("nan")), 4),
        }
        for d in ("generic", "in_domain"):
            ci = r.get(f"vs_rtn_pct_{d}")
            row[f"vs RTN, {d} (%)"] = f"{ci['point']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" if ci else ""
        row["worse than RTN on own domain"] = r.get("worse_than_rtn_on_own_domain", "")
        out.append(row)
    return pd.DataFrame(out).set_index("name")


def plot_search_settings(records: list[dict], sanity: list[dict]):
    """AutoAWQ search settings on the same calibration set: quality (in-domain perplexity vs RTN)
    against search wall time."""
    import matplotlib.pyplot as plt  # table and plot libraries load only when a view is drawn

    by = {r["name"]: r for r in sanity}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ref = next((r for r in records if r.get("variant")), None)
    chosen = [r for r in records if r["method"] == "awq" and ref and r["set"] == ref["set"] and r["bits"] == 4]
    for r in chosen:
        s = by[r["name"]]
        ci = s.get("vs_rtn_pct_in_domain") or {"point": float("nan"), "lo": float("nan"), "hi": float("nan")}
        label = f"duo_scaling={r['duo_scaling']}, apply_clip={r['apply_clip']}"
        ax.errorbar(
            r["search_wall_s"],
            ci["point"],
            yerr=[[ci["point"] - ci["lo"]], [ci["hi"] - ci["point"]]],
            fmt="o",
            capsize=4,
            label=label,
        )
    ax.axhline(0, color="grey", lw=1, ls="--", label="round-to-nearest")
    ax.set(
        title="AutoAWQ search settings (same in-domain calibration set)",
        xlabel="search wall time (s)",
        ylabel="in-domain perplexity vs RTN (%, 95% CI)\nbelow 0 = better than RTN",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
