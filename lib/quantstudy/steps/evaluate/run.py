"""Step 03's driver: evaluate the baseline and every checkpoint of the main comparison against
the exact baseline (perplexity, KL, top-1 agreement, task accuracy), judge the quality budget
with paired bootstrap CIs, estimate calibration-source effects, build the cross-domain matrix,
check the archived baseline reproduces the evaluated one (rollback), optionally run
lm-evaluation-harness alongside, and write ``metrics.json`` and ``per_item.npz``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from quantstudy import awqformat, contracts, serving
from quantstudy.metrics.scoring import Stream, batch_order, build_stream, evaluate_model, score_items
from quantstudy.metrics.stats import budget_verdict, metric_pair, paired_bootstrap, source_effect, summarize
from quantstudy.paths import resolve
from quantstudy.steps.evaluate import lmeval
from quantstudy.steps.evaluate.models import (
    checkpoint_list,
    eval_dtype,
    load_baseline,
    load_candidate,
    load_eval_data,
    main_checkpoints,
    source_groups,
    weight_fingerprint,
)
from quantstudy.steps.evaluate.views import flip_table, reference_table, summary_table

# Baseline log-probs are cached in memory up to this size; beyond it the baseline model is
# kept and re-run per batch (real vocabularies of 100k+ tokens).
CACHE_LIMIT_BYTES = 6 * 2**30


# --------------------------------------------------------------------------- evaluation
def _served_row(P, records: list[dict]) -> dict | None:
    """The record of the served configuration (``serve.lm_head``) when its head is not the
    model's own: the checkpoint step 04 times, with that head, as a row of its own."""
    if P.serve.lm_head == "float":
        return None
    try:
        rec = serving.served_checkpoint(records)
    except serving.ServingError:
        return None
    return {
        **rec,
        "name": serving.served_name(rec["name"], P.serve.lm_head),
        "served_head": P.serve.lm_head,
        "served_from": rec["name"],
    }


def _evaluate_candidates(
    P, quantize_dir: Path, records: list[dict], served: dict | None, tok, streams, items, base_lp
) -> dict[str, dict]:
    """Every checkpoint's arrays against the baseline; the served configuration's from the
    same passes as the checkpoint it is served from."""
    cands = {}
    for rec in tqdm(records, desc="evaluate checkpoints"):
        model = load_candidate(P, quantize_dir, rec["name"])
        heads = None
        if served and rec["name"] == served["served_from"]:
            heads = {served["name"]: serving.served_head(model.get_output_embeddings(), served["served_head"])}
        cands[rec["name"]] = evaluate_model(
            model, tok, streams, items, base_lp, name=rec["name"], heads=heads, item_batch=P.evaluate.item_batch
        )
        if heads:
            cands[served["name"]] = cands[rec["name"]].pop("heads")[served["name"]]
        del model
    return cands


def run_evaluation(P, quantize_dir: str | Path, data: dict) -> dict:
    """Evaluate the baseline (the original model.path) and every checkpoint of step 02."""
    quantize_dir = resolve(quantize_dir)
    # Search-setting variants and sample-count sweeps were compared in step 02's sanity check;
    # the full evaluation covers the main comparison (RTN and AWQ per source and draw).
    records = main_checkpoints(checkpoint_list(quantize_dir))
    base_model, tok = load_baseline(P, data.get("tokenizer"))
    fingerprint = weight_fingerprint(base_model)
    streams = {
        dom: build_stream(
            tok, data[dom], P.evaluate.window, P.evaluate.stride, P.evaluate.max_eval_tokens, data["lexicon"]
        )
        for dom in ("generic", "in_domain")
    }
    cache_bytes = sum(s.input_ids.numel() for s in streams.values()) * base_model.config.vocab_size * 4
    keep = cache_bytes <= CACHE_LIMIT_BYTES
    base = evaluate_model(
        base_model, tok, streams, data["items"], name="baseline", keep_logprobs=keep, item_batch=P.evaluate.item_batch
    )
    reference = {
        t: score_items(base_model, tok, v, desc=f"baseline {t} (reference)", batch_items=P.evaluate.item_batch)
        for t, v in data.get("reference_items", {}).items()
        if v
    }
    base_lp = {dom: base["streams"][dom].pop("_logprobs") for dom in streams} if keep else base_model
    served = _served_row(P, records)
    cands = _evaluate_candidates(P, quantize_dir, records, served, tok, streams, data["items"], base_lp)
    del base_lp
    records = records + ([served] if served else [])
    return {
        "records": records,
        "streams": streams,
        "base": base,
        "cands": cands,
        "items_used": data["items"],
        "reference": reference,
        "reference_items": data.get("reference_items", {}),
        "base_fingerprint": fingerprint,
        "eval_dtype": P.model.eval_dtype,
        "chat_template": data.get("chat_template", False),
    }


def _head_of_stream(stream: Stream, n_windows: int) -> tuple[Stream, int]:
    """The first n_windows of a stream, and how many scored tokens they hold."""
    mask = stream.score_mask[:n_windows]
    n = int(mask.sum())
    return Stream(stream.input_ids[:n_windows], mask, stream.category[:n], stream.window_of_token[:n]), n


def rollback_check(P, quantize_dir: str | Path, result: dict, n_windows: int = 8, n_items: int = 16) -> dict:
    """Reload the archived baseline after verifying its checksums: every tensor must equal the
    evaluated baseline's bit for bit (same names, same SHA-256 of its bytes), and re-scoring
    the first windows of each domain and the first items of each task must reproduce the
    baseline's numbers exactly."""
    archive = resolve(quantize_dir) / "baseline"
    awqformat.verify_archive(archive)
    model, tok, _ = awqformat.load_checkpoint(archive, device=P.study.device)
    model = awqformat.cast_model(model, eval_dtype(P))
    weights_equal = weight_fingerprint(model) == result["base_fingerprint"]
    heads = {dom: _head_of_stream(s, n_windows) for dom, s in result["streams"].items()}
    # The first items in the order score_items takes them: each scored alone, or in batches of
    # the evaluation's fixed shape (companion-independent either way), so every bit matches.
    picked = {t: batch_order(v, tok)[:n_items] for t, v in result["items_used"].items()}
    again = evaluate_model(
        model,
        tok,
        {d: h[0] for d, h in heads.items()},
        {t: [v[i] for i in picked[t]] for t, v in result["items_used"].items()},
        name="archive",
        item_batch=P.evaluate.item_batch,
        fit_items=result["items_used"],
    )
    checks = {"weights": bool(weights_equal)}
    for dom, rec in again["streams"].items():
        rec.pop("_logprobs", None)
        checks[f"nll_{dom}"] = bool(np.array_equal(rec["nll"], result["base"]["streams"][dom]["nll"][: heads[dom][1]]))
    for task, rec in again["items"].items():
        checks[f"{task}_scores"] = bool(
            np.array_equal(rec["margin"], result["base"]["items"][task]["margin"][picked[task]])
        )
    return {
        "archive": str(archive),
        "checksums_verified": True,
        "identical": all(checks.values()),
        "checks": checks,
        "rescored": {"windows_per_domain": n_windows, "items_per_task": n_items},
        "baseline_metrics": summarize(result["base"]),
    }


# --------------------------------------------------------------------------- judgements
def budget_table(P, base: dict, cands: dict[str, dict], streams: dict[str, Stream]) -> list[dict]:
    rows = []
    for name, cand in cands.items():
        for line in P.evaluate.budget:
            if line.metric == "satisfaction":  # a live metric: judged by the rollout (step 05)
                continue
            b, c, stat, groups = metric_pair(line.metric, base, cand, streams)
            ci = paired_bootstrap(
                b,
                c,
                stat,
                n=P.evaluate.bootstrap_samples,
                seed=P.study.seed,
                confidence=P.evaluate.confidence,
                groups=groups,
            )
            if stat == "ppl_pct" and line.unit == "points":
                raise ValueError(f"evaluate.budget: {line.metric} is a perplexity; use unit: percent")
            rows.append({"checkpoint": name, **budget_verdict(line.model_dump(), ci), "ci": ci})
    return rows


# The metrics calibration_effects compares sources on (besides the budget's offline lines).
_EFFECT_METRICS = (
    "policy_closed_book_acc",
    "policy_grounded_acc",
    "retention_acc",
    "indomain_ppl",
    "generic_ppl",
    "policy_grounded_flip_rate",
    "retention_flip_rate",
    "policy_closed_book_flip_rate",
)
_EFFECT_PAIRS = (("in_domain", "generic"), ("mixed", "generic"), ("in_domain", "RTN"), ("generic", "RTN"))
# llm-compressor next to AutoAWQ: the calibration-source effect within llm-compressor, the
# implementation effect on the same sets and draws (paired), and the assistant-only loss mask.
_LLMC = "/llmc"
_LLMC_PAIRS = (
    ("in_domain" + _LLMC, "generic" + _LLMC, "calibration source", False),
    ("mixed" + _LLMC, "generic" + _LLMC, "calibration source", False),
    ("generic" + _LLMC, "generic", "implementation", True),
    ("in_domain" + _LLMC, "in_domain", "implementation", True),
    ("mixed" + _LLMC, "mixed", "implementation", True),
    ("in_domain" + _LLMC + "-asst", "in_domain" + _LLMC, "loss mask", True),
)


def _source_arrays(result: dict, groups: dict[str, list[str]], sources: tuple[str, str], metric: str):
    """({source: [candidate array per draw]}, statistic, bootstrap groups) of one metric;
    KeyError when a model lacks what the metric needs."""
    per_source = {}
    for src in sources:
        arrs = []
        for name in groups[src]:
            _, c, stat, g = metric_pair(metric, result["base"], result["cands"][name], result["streams"])
            arrs.append(c)
        per_source[src] = arrs
    return per_source, stat, g


def calibration_effects(P, result: dict, bits: int = 4) -> list[dict]:
    """In-domain vs generic (and mixed vs generic) per budget metric, resampling items and draws."""
    groups = source_groups(result["records"], bits)
    out = []
    metrics = list(
        dict.fromkeys([b.metric for b in P.evaluate.budget if b.metric != "satisfaction"] + list(_EFFECT_METRICS))
    )
    pairs = [(a, b, "calibration source", False) for a, b in _EFFECT_PAIRS] + list(_LLMC_PAIRS)
    for a, b, kind, paired in pairs:
        if a not in groups or b not in groups or (paired and len(groups[a]) != len(groups[b])):
            continue
        for metric in metrics:
            try:
                per_source, stat, g = _source_arrays(result, groups, (a, b), metric)
            except KeyError:
                continue
            eff = source_effect(
                per_source,
                a,
                b,
                stat,
                n=P.evaluate.bootstrap_samples,
                seed=P.study.seed,
                confidence=P.evaluate.confidence,
                groups=g,
                paired_draws=paired,
            )
            spread = {
                src: [float(np.mean(x)) if stat == "mean_diff" else float(np.exp(np.mean(x))) for x in per_source[src]]
                for src in (a, b)
            }
            out.append(
                {
                    "metric": metric,
                    "unit": "points" if stat == "mean_diff" else "% perplexity",
                    "kind": kind,
                    **eff,
                    "per_draw": spread,
                }
            )
    return out


def cross_domain_matrix(result: dict, bits: int = 4):
    """Rows: calibration source (mean over draws); columns: evaluation domain/task; values:
    change against the baseline (perplexity %, accuracy points)."""
    base = summarize(result["base"])
    groups = source_groups(result["records"], bits)
    cols = {
        "generic ppl (%)": "ppl_generic",
        "in-domain ppl (%)": "ppl_in_domain",
        "closed-book policy (pts)": "policy_closed_book_acc",
        "grounded policy (pts)": "policy_grounded_acc",
        "retention (pts)": "retention_acc",
    }
    rows = {}
    order = ("generic", "in_domain", "mixed", "RTN")
    for src in [*order, *(k for k in groups if k not in order)]:
        if src not in groups:
            continue
        vals = {}
        for label, key in cols.items():
            if key not in base:
                continue
            xs = [summarize(result["cands"][n])[key] for n in groups[src]]
            m = float(np.mean(xs))
            vals[label] = 100 * (m / base[key] - 1) if key.startswith("ppl") else 100 * (m - base[key])
        rows[src] = vals
    return pd.DataFrame(rows).T


# --------------------------------------------------------------------------- outputs
def _verdicts(budget: list[dict]) -> dict[str, str]:
    """Per checkpoint: pass only when every budget line passes."""
    verdicts: dict[str, str] = {}
    for r in budget:
        prev = verdicts.get(r["checkpoint"], "pass")
        verdicts[r["checkpoint"]] = "pass" if prev == "pass" and r["verdict"] == "pass" else "fail"
    return verdicts


def _per_item_arrays(result: dict) -> dict[str, np.ndarray]:
    """Every model's per-token and per-item arrays, keyed ``model|domain or task|array``."""
    arrays = {}
    for name, arr in [("baseline", result["base"]), *result["cands"].items()]:
        for dom, rec in arr["streams"].items():
            for k, v in rec.items():
                if not k.startswith("_"):
                    arrays[f"{name}|{dom}|{k}"] = v
        for task, rec in arr["items"].items():
            for k, v in rec.items():
                arrays[f"{name}|{task}|{k}"] = v
    return arrays


def write_metrics(
    output_dir: str | Path,
    P,
    result: dict,
    budget: list[dict],
    effects: list[dict],
    matrix,
    damage,
    rollback: dict,
    wall_s: float,
    lm_eval: dict | None = None,
) -> dict:
    table = summary_table(result)
    metrics = {
        "budget_declared": [b.model_dump() for b in P.evaluate.budget],
        "budget": budget,
        "verdict_by_checkpoint": _verdicts(budget),
        "summary": json.loads(table.reset_index().to_json(orient="records")),
        "calibration_effects": effects,
        "cross_domain_matrix": json.loads(matrix.to_json(orient="index")),
        "category_damage": json.loads(damage.to_json(orient="records")),
        "rollback_check": rollback,
        "flips": json.loads(flip_table(P, result).reset_index().to_json(orient="records")),
        "reference_tasks": {
            t: {k: v for k, v in row.items()}
            for t, row in json.loads(reference_table(result).to_json(orient="index")).items()
        },
        "eval_dtype": result.get("eval_dtype", "float32"),
        "chat_template": bool(result.get("chat_template")),
        "chance_levels": {
            t: float(np.mean([1 / len(i["choices"]) for i in v])) for t, v in result["items_used"].items() if v
        },
        "n_items": {t: len(v) for t, v in result["items_used"].items()},
        "n_tokens": {d: s.n_tokens for d, s in result["streams"].items()},
        "window": P.evaluate.window,
        "stride": P.evaluate.stride,
        "targets": {
            "evaluation_wall_s": {
                "measured": round(wall_s, 1),
                "target": P.targets.evaluation_wall_s,
                "met": wall_s <= P.targets.evaluation_wall_s,
            }
        },
        "wall_s": round(wall_s, 1),
    }
    if lm_eval is not None:  # model -> task -> {acc, acc_stderr, study_acc, agree_items, ...}
        metrics["lm_eval"] = lm_eval
    contracts.write("03_evaluate", output_dir, metrics, default=float)
    np.savez_compressed(Path(output_dir) / "per_item.npz", **_per_item_arrays(result))
    return metrics


def run_lm_eval(P, quantize_dir: str | Path, result: dict | None = None) -> dict | None:
    """lm-eval-harness next to the study's own scorer (:mod:`quantstudy.steps.evaluate.lmeval`):
    the study's task items as local lm-eval tasks (``quantstudy_<task>``) plus
    ``evaluate.lm_eval_tasks``, on the baseline and every checkpoint. Given step 03's
    ``result``, each task also carries the study's accuracy on the same items and the items
    both scorers judge alike.

    Runs when ``evaluate.lm_eval_tasks`` lists anything (``[quantstudy]``: the study's tasks
    alone); lm-eval takes 2-3x the study's task-scoring time, so the default lists nothing.
    Returns {model: {task: {acc, acc_stderr, study_acc, agree_items, n_items, max_abs_ll_diff}}},
    or None when no tasks are listed.
    """
    if not P.evaluate.lm_eval_tasks:
        return None
    if not lmeval.available():
        raise RuntimeError(
            "evaluate.lm_eval_tasks names tasks but lm-eval-harness is not installed: "
            "run `make setup`, or set lm_eval_tasks: []"
        )
    if result is not None:
        items, reference = result["items_used"], result.get("reference_items", {})
    else:
        data = load_eval_data(P)
        items, reference = data["items"], data["reference_items"]
    return lmeval.run(P, quantize_dir, items, result, reference)
