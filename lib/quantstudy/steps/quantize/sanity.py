"""The sanity check of step 02: perplexity of the baseline and every checkpoint on held-out text
of each domain, and the flag for an AWQ checkpoint worse than RTN on its own calibration domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantstudy import data
from quantstudy.awqformat import load_checkpoint
from quantstudy.metrics import scoring, stats
from quantstudy.steps.quantize.plan import checkpoint_name
from quantstudy.steps.quantize.search import torch_dtype as _dtype


def sanity_texts(P, baseline_dir: Path, max_docs: int = 400) -> dict[str, list[str]]:
    """Held-out text of each calibration domain (never calibration text); conversations in the
    model's chat template when it has one, as evaluation renders them."""
    from transformers import AutoTokenizer  # seconds to import; the package imports this module

    tok = AutoTokenizer.from_pretrained(str(baseline_dir))
    generic = data.load_generic_texts(P.data, "eval")[:max_docs]
    convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)[:max_docs]
    return {"generic": generic, "in_domain": [data.conversation_to_text(c, tok) for c in convs]}


def sanity_perplexities(
    P,
    records: list[dict],
    baseline_dir: Path,
    output_dir: Path,
    texts: dict[str, list[str]],
    max_tokens: int | None = None,
) -> list[dict]:
    """Perplexity of the baseline and every checkpoint on held-out text of each domain
    (``quantize.sanity_tokens`` tokens each, in ``model.eval_dtype``), and the flag: an AWQ
    checkpoint worse than RTN (same bits) on its own calibration domain."""
    from tqdm.auto import tqdm  # loaded with the long work it reports on

    max_tokens = max_tokens or P.quantize.sanity_tokens
    dtype = _dtype(P.model.eval_dtype)
    base, tok, _ = load_checkpoint(baseline_dir, device=P.study.device, dtype=dtype)
    streams = {
        d: scoring.build_stream(tok, t, P.evaluate.window, P.evaluate.stride, max_tokens) for d, t in texts.items()
    }
    base_nll = {d: scoring.score_stream(base, s)["nll"] for d, s in streams.items()}
    rows = [
        {
            "name": "baseline",
            "method": "baseline",
            "bits": 16,
            **{f"ppl_{d}": stats.perplexity(v) for d, v in base_nll.items()},
        }
    ]
    del base
    nll: dict[str, dict[str, np.ndarray]] = {}
    for rec in tqdm(records, desc="sanity ppl"):
        model, _, _ = load_checkpoint(
            Path(output_dir) / "checkpoints" / rec["name"], device=P.study.device, dtype=dtype
        )
        nll[rec["name"]] = {d: scoring.score_stream(model, s)["nll"] for d, s in streams.items()}
        rows.append(
            {
                "name": rec["name"],
                "method": rec["method"],
                "bits": rec["bits"],
                **{f"ppl_{d}": stats.perplexity(v) for d, v in nll[rec["name"]].items()},
            }
        )
        del model
    _flag_worse_than_rtn(P, records, rows, nll, streams)
    return rows


def _flag_worse_than_rtn(P, records: list[dict], rows: list[dict], nll: dict, streams: dict) -> None:
    """Mark each AWQ row whose perplexity on its own calibration domain is above RTN's (same bits)."""
    by_name = {r["name"]: r for r in rows}
    for rec in records:
        if rec["method"] != "awq":
            continue
        rtn = checkpoint_name("rtn", rec["bits"], rec["group_size"])
        own = {"generic": ["generic"], "in_domain": ["in_domain"], "mixed": ["generic", "in_domain"]}[
            rec["calibration_source"]
        ]
        row = by_name[rec["name"]]
        row["own_domains"] = own
        if rtn in nll:
            worse = []
            for d in own:
                ci = stats.paired_bootstrap(
                    nll[rtn][d],
                    nll[rec["name"]][d],
                    "ppl_pct",
                    n=P.evaluate.bootstrap_samples,
                    seed=P.study.seed,
                    groups=streams[d].window_of_token,
                )
                row[f"vs_rtn_pct_{d}"] = ci
                if ci["point"] > 0:
                    worse.append(d)
            row["worse_than_rtn_on_own_domain"] = bool(worse)
            row["worse_domains"] = worse
