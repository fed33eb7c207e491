"""Step 01's tables and figures: the scrubber's counts and its recall on the independent PII
sets, the calibration sets, and their statistics.

pandas, matplotlib and seaborn (about 4 s together) are imported where a table or figure is
drawn: steps 02 and 03 import this package for other things.
"""

from __future__ import annotations

from quantstudy.steps.calibration.pii_eval import PII_TYPES


def pii_table(independent: dict | None):
    """Recall per type on the independent PII sets, with survivors counted (masked in metrics)."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    if not independent:
        return pd.DataFrame()
    rows = []
    for t in PII_TYPES:
        row = {"type": t}
        for name, res in independent.items():
            r = res["by_type"].get(t) or {}
            row[f"{name}: instances"] = r.get("instances")
            row[f"{name}: recall"] = None if r.get("recall") is None else round(r["recall"], 3)
        rows.append(row)
    return pd.DataFrame(rows).set_index("type")


def scrub_table(report: dict):
    """PII replaced per type, and the planted count and recall where the data records planted PII."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    types = sorted(set(report.get("replaced_by_type", {})) | set(report.get("planted_by_type", {})))
    return pd.DataFrame(
        [
            {
                "type": t,
                "replaced": report["replaced_by_type"].get(t, 0),
                "planted (demo record)": report.get("planted_by_type", {}).get(t, None),
                "recall": report.get("recall_by_type", {}).get(t, None),
            }
            for t in types
        ]
    ).set_index("type")


def sets_table(records: list[dict]):
    """One row per calibration set: its source, draw, size and what AutoAWQ will keep of it."""
    import pandas as pd  # table and plot libraries load only when a view is drawn

    cols = ["name", "source", "draw", "n_samples", "n_texts", "texts_split", "tokens", "kept_by_autoawq", "max_seq_len"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in records]).set_index("name")


def plot_statistics(stats: dict, records: list[dict]):
    """Three panels: token lengths per set, domain-term coverage, 3-gram overlap with in-domain eval."""
    import matplotlib.pyplot as plt  # table and plot libraries load only when a view is drawn
    import pandas as pd  # table and plot libraries load only when a view is drawn
    import seaborn as sns  # table and plot libraries load only when a view is drawn

    main = [r["name"] for r in records if not r.get("sweep")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    lengths = pd.DataFrame([{"set": n, "tokens": v} for n in main for v in stats["lengths"][n]])
    sns.boxplot(data=lengths, y="set", x="tokens", ax=axes[0], color="#9ecae1", fliersize=2)
    axes[0].set(
        title="Sample length per calibration set", xlabel="tokens per source text (before splitting)", ylabel=""
    )
    cov = pd.DataFrame(
        [
            {"set": n, "category": cat, "share": v["share"] * 100}
            for n in main
            for cat, v in stats["coverage"].get(n, {}).items()
        ]
    )
    if not cov.empty:
        sns.barplot(data=cov, y="set", x="share", hue="category", ax=axes[1])
        axes[1].set(title="Domain-term coverage", xlabel="% of lexicon terms present in the set", ylabel="")
        axes[1].legend(title="term category", loc="lower right")
    else:
        axes[1].text(0.5, 0.5, "no domain lexicon (data.domain_lexicon)", ha="center")
        axes[1].set_title("Domain-term coverage")
    ov = pd.DataFrame([{"set": n, "overlap": stats["overlap_3gram"][n] * 100} for n in main])
    sns.barplot(data=ov, y="set", x="overlap", ax=axes[2], color="#fdae6b")
    axes[2].set(
        title="Overlap with in-domain evaluation text",
        xlabel="% of the set's word 3-grams found in eval text",
        ylabel="",
    )
    fig.tight_layout()
    return fig
