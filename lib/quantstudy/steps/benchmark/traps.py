"""Speed-ups over the baseline per shape and mode, what the eager harness costs against the
graphed loop, and the trap detector: a quantized path slower than the baseline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from quantstudy.steps.benchmark.devices import BenchError


def speedup_table(df, baseline: str = "baseline"):
    """Speed-up of every path over `baseline` for each shape (batch, context[, scope][, mode]):
    a graphed path is compared with the graphed baseline, an eager one with the eager baseline.

    ``*_speedup`` = path median tokens/s / baseline median tokens/s. The spread
    ``*_speedup_low``/``_high`` = path min / baseline max and path max / baseline min: the
    widest ratio the repeats allow (no overlap of the two ranges means a clear difference).
    """
    keys = [k for k in ("mode", "batch", "context", "scope") if k in df.columns]
    base = df[df["path"] == baseline]
    if base.empty:
        raise BenchError(f"no {baseline!r} rows to compare against; paths present: {sorted(df['path'].unique())}")
    merged = df.merge(base, on=keys, suffixes=("", "_base"))
    out = merged[["path", *keys]].copy()
    for kind in ("prefill", "decode"):
        col = f"{kind}_tok_s"
        out[f"{kind}_speedup"] = merged[f"{col}_median"] / merged[f"{col}_median_base"]
        out[f"{kind}_speedup_low"] = merged[f"{col}_min"] / merged[f"{col}_max_base"]
        out[f"{kind}_speedup_high"] = merged[f"{col}_max"] / merged[f"{col}_min_base"]
    return pd.DataFrame(out).reset_index(drop=True)


def harness_table(df, path: str = "baseline"):
    """What the harness costs: `path`'s graphed tokens/s over its eager tokens/s per shape
    (scope ``measured``; ``*_low``/``_high`` as in :func:`speedup_table`). Empty without both modes."""
    if "mode" not in df.columns or not {"eager", "graphed"} <= set(df["mode"]):
        return pd.DataFrame()
    t = df[(df["path"] == path) & (df["scope"] == "measured")]
    merged = t[t["mode"] == "graphed"].merge(
        t[t["mode"] == "eager"], on=["path", "batch", "context"], suffixes=("", "_eager")
    )
    out = merged[["path", "batch", "context"]].copy()
    for kind in ("prefill", "decode"):
        col = f"{kind}_tok_s"
        out[f"{kind}_tok_s_eager"] = merged[f"{col}_median_eager"]
        out[f"{kind}_tok_s_graphed"] = merged[f"{col}_median"]
        out[f"{kind}_graphed_over_eager"] = merged[f"{col}_median"] / merged[f"{col}_median_eager"]
        out[f"{kind}_graphed_over_eager_low"] = merged[f"{col}_min"] / merged[f"{col}_max_eager"]
        out[f"{kind}_graphed_over_eager_high"] = merged[f"{col}_max"] / merged[f"{col}_min_eager"]
    return pd.DataFrame(out).reset_index(drop=True)


def flag_traps(table, baseline: str = "baseline", threshold: float = 1.0) -> list[dict[str, Any]]:
    """Rows where a quantized path is slower than the baseline (median speed-up < threshold).

    Each flag names the path, shape, phase and a one-line explanation; ``clear`` says whether
    even the best repeat of the path is slower than the worst repeat of the baseline.
    """
    flags: list[dict[str, Any]] = []
    keys = [k for k in ("mode", "batch", "context", "scope") if k in table.columns]
    for _, row in table.iterrows():
        if row["path"] == baseline:
            continue
        for kind in ("prefill", "decode"):
            sp = float(row[f"{kind}_speedup"])
            if not sp < threshold:
                continue
            high = float(row.get(f"{kind}_speedup_high", sp))
            clear = high < threshold
            shape = ", ".join(f"{k}={row[k]}" for k in keys)
            why = (
                "dequantizes every weight on every call: pays 4-bit unpacking and still a dense matmul"
                if row["path"] == "naive4"
                else "the int4 kernel loses to the dense matmul at this shape"
            )
            flags.append(
                {
                    "path": row["path"],
                    **{k: row[k] for k in keys},
                    "phase": kind,
                    "speedup": sp,
                    "clear": clear,
                    "explanation": (
                        f"{row['path']} {kind} is {sp:.2f}x the {baseline} speed ({shape}); "
                        f"{'clearly slower' if clear else 'slower, within run-to-run noise'}: {why}"
                    ),
                }
            )
    return flags
