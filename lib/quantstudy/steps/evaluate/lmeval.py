"""lm-eval-harness next to the study's own scorer.

The task items step 03 scores (already rendered: ``context`` is the exact prompt string the
model sees, ``choices`` carry their leading spaces, ``answer`` is an index) are exported as one
local lm-eval task per study task (``quantstudy_<task>``: a JSONL file and a generated task
YAML, ``output_type: multiple_choice``, metric ``acc``) and scored by lm-eval on the baseline
and every checkpoint, through the already-loaded model object (``HFLM(pretrained=<model>)``):
the study's own loader dequantizes AWQ checkpoints on a CPU, where lm-eval's loader would need
GPU kernels. The other tasks listed in ``evaluate.lm_eval_tasks`` (lm-eval's installed tasks,
or a task YAML file) run in the same pass; their data must load here (no network: local tasks
only), which is checked before any model is scored.

It runs when ``evaluate.lm_eval_tasks`` lists anything (``[quantstudy]``: the study's own tasks
alone). lm-eval scores every choice with a full forward pass over context + choice, where the
study's scorer runs each context once and reuses its KV cache: 2-3x the study's task-scoring
time on 2 CPU cores, too much for the default study's time budget.

lm-eval is installed with ``--no-deps`` (see the Makefile): its full dependency set would
downgrade a pinned package. What it needs for this use (HF model, local multiple-choice task,
loglikelihood and loglikelihood_rolling) is installed; lm-eval's command line table printer
(pytablewriter) and tasks with their own extra packages are not.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from quantstudy.paths import resolve
from quantstudy.steps.evaluate.models import checkpoint_list, load_baseline, load_candidate, main_checkpoints

TASK_PREFIX = "quantstudy_"
# Listed in evaluate.lm_eval_tasks: the study's own tasks alone (they run whenever lm-eval runs).
STUDY_TASKS = "quantstudy"


def task_name(study_task: str) -> str:
    """The lm-eval task name of a study task (``retention`` -> ``quantstudy_retention``)."""
    return TASK_PREFIX + study_task


def available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval logs every task and request batch at INFO/WARNING; keep errors only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- export
def task_config(name: str, jsonl: Path, cache_dir: Path | None = None) -> dict:
    """An lm-eval multiple-choice task over a JSONL file of {context, choices, answer}."""
    kwargs: dict[str, Any] = {"data_files": {"test": str(jsonl)}}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": kwargs,
        "test_split": "test",
        "output_type": "multiple_choice",
        # Field names, not Jinja templates: each value is used exactly as stored.
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        # The choices carry their own leading space: lm-eval's default delimiter " " would double it.
        "target_delimiter": "",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def export_tasks(items_by_task: dict[str, list[dict]], folder: str | Path) -> dict[str, str]:
    """Write each study task's items as ``<name>.jsonl`` plus ``<name>.yaml`` into folder.

    Items must be rendered (``context`` the model's prompt string). Returns {study task: lm-eval
    task name}; tasks without items are left out.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task, items in items_by_task.items():
        if not items:
            continue
        name = task_name(task)
        jsonl = folder / f"{name}.jsonl"
        with jsonl.open("w", encoding="utf-8") as f:
            for i, it in enumerate(items):
                # Only the fields the task reads: free-form metadata would trip Arrow's schema inference.
                f.write(
                    json.dumps(
                        {
                            "item_id": str(it.get("item_id", i)),
                            "context": it["context"],
                            "choices": list(it["choices"]),
                            "answer": int(it["answer"]),
                        }
                    )
                    + "\n"
                )
        (folder / f"{name}.yaml").write_text(
            yaml.safe_dump(task_config(name, jsonl, folder / "hf_cache"), sort_keys=False)
        )
        names[task] = name
    return names


def task_manager(folder: str | Path, include_defaults: bool = False):
    """An lm-eval TaskManager that finds the exported tasks (and, with include_defaults,
    lm-eval's installed ones: indexing those takes a few seconds)."""
    # lm-eval is optional (`make setup`) and slow to import: loaded only when used.
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=str(folder), include_defaults=include_defaults)


def check_tasks(names: list[str], manager) -> None:
    """Load every named task's data now (lm-eval reads it when a task is built), so a task
    that cannot load fails before any model is scored: one line per task and its reason."""
    errors = []
    for name in names:
        try:
            with _quiet():
                manager.load([name])
        except Exception as exc:  # noqa: BLE001 - unknown name, no network, missing file, bad config
            if isinstance(exc, KeyError) and "not a registered" in str(exc):
                errors.append(f"lm-eval task {name!r}: no such task (not installed with lm-eval, not a local task)")
                continue
            reason = " ".join(str(exc).split()) or "no message"
            errors.append(f"lm-eval task {name!r} cannot be loaded: {type(exc).__name__}: {reason[:300]}")
    if errors:
        raise RuntimeError(
            "; ".join(errors) + " (evaluate.lm_eval_tasks: list only tasks whose data is on this "
            "machine, or set lm_eval_tasks: [])"
        )


def check_listed(names: list[str]) -> None:
    """Preflight for ``evaluate.lm_eval_tasks`` alone (no model, no study items): every listed
    task other than the study's own must load its data here. Seconds for lm-eval's task index,
    plus the hub's retries for a task whose data is not on this machine."""
    extra = [
        str(resolve(t)) if t.endswith((".yaml", ".yml")) else t
        for t in names
        if t != STUDY_TASKS and not t.startswith(TASK_PREFIX)
    ]
    if extra:
        with tempfile.TemporaryDirectory(prefix="quantstudy-lmeval-") as tmp:
            check_tasks(extra, task_manager(tmp, include_defaults=True))


# --------------------------------------------------------------------------- scoring
def make_lm(model, tokenizer, batch_size: int | str = 16, **kwargs):
    """lm-eval's HF wrapper around an already-loaded model. The tokenizer is copied (lm-eval
    may set a pad token and flips its padding side); log-softmax runs in float32, as in the
    study's scorer."""
    # lm-eval is optional (`make setup`) and slow to import: loaded only when used.
    from lm_eval.models.huggingface import HFLM

    with _quiet():
        return HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=batch_size,
            softmax_dtype=torch.float32,
            **kwargs,
        )


def evaluate(lm, names: list[str], manager, bootstrap_iters: int = 1000, seed: int = 1234) -> dict:
    """lm-eval's results for the named tasks, per-request samples included (log_samples).

    lm-eval's own ``evaluate`` with the zero-shot setup ``simple_evaluate`` would make (no
    global seeds touched, no environment report per model).
    """
    # lm-eval is optional (`make setup`) and slow to import: loaded only when used.
    from lm_eval.evaluator import evaluate as lm_evaluate

    with _quiet():
        loaded = manager.load(list(names))
        for task in loaded["tasks"].values():
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=seed)
        return lm_evaluate(lm=lm, task_dict=loaded, bootstrap_iters=bootstrap_iters, log_samples=True)


def per_item(res: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(acc [items], choice log-likelihoods [items, most choices] NaN-padded) of one task, in
    the order of its documents."""
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    acc = np.array([float(s["acc"]) for s in samples])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    out = np.full((len(lls), max((len(x) for x in lls), default=0)), np.nan)
    for i, x in enumerate(lls):
        out[i, : len(x)] = x
    return acc, out


def task_result(res: dict, name: str, study: dict | None = None) -> dict:
    """{acc, acc_stderr, study_acc, agree_items, n_items, max_abs_ll_diff} of one task: lm-eval's
    accuracy and, given the study's per-item scores of the same items (``acc``, ``choice_ll``),
    the study's accuracy, the items on which both scorers call the answer right or wrong alike,
    and the largest per-choice log-likelihood difference (nats)."""
    r = res["results"][name]
    out: dict[str, Any] = {
        "acc": _number(r["acc,none"]),
        "acc_stderr": _number(r.get("acc_stderr,none")),
        "study_acc": None,
        "agree_items": None,
    }
    acc, lls = per_item(res, name)
    out["n_items"] = int(len(acc))
    if study is not None:
        s_acc = np.asarray(study["acc"], dtype=float)
        if len(s_acc) == len(acc):
            out["study_acc"] = float(s_acc.mean())
            out["agree_items"] = int(((s_acc > 0.5) == (acc > 0.5)).sum())
            s_ll = study.get("choice_ll")
            if s_ll is not None and np.shape(s_ll)[0] == len(lls):
                w = min(np.shape(s_ll)[1], lls.shape[1])
                d = np.abs(np.asarray(s_ll)[:, :w] - lls[:, :w])
                out["max_abs_ll_diff"] = _number(np.nanmax(d)) if np.isfinite(d).any() else None
    return out


def _number(x) -> float | None:
    """A finite float, or None (lm-eval writes "N/A" or NaN where a statistic is undefined)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def score_model(
    model,
    tokenizer,
    study_names: dict[str, str],
    listed: list[str],
    manager,
    study_scores: dict[str, dict] | None = None,
    batch_size: int | str = 16,
) -> dict:
    """One model: {task: result} for the exported study tasks (keyed by the study's task name)
    and the listed lm-eval tasks (keyed by their own name; accuracy only)."""
    lm = make_lm(model, tokenizer, batch_size=batch_size)
    names = list(study_names.values()) + [t for t in listed if t not in study_names.values()]
    res = evaluate(lm, names, manager)
    out = {}
    for task, name in study_names.items():
        out[task] = task_result(res, name, (study_scores or {}).get(task))
    for name, r in res["results"].items():  # listed tasks, and a listed group's subtasks
        if name not in study_names.values() and _number(r.get("acc,none")) is not None:
            out[name] = {
                "acc": _number(r["acc,none"]),
                "acc_stderr": _number(r.get("acc_stderr,none")),
                "study_acc": None,
                "agree_items": None,
            }
    return out


def run(
    P,
    quantize_dir: str | Path,
    items: dict[str, list[dict]],
    result: dict | None = None,
    reference_items: dict[str, list[dict]] | None = None,
) -> dict:
    """lm-eval on the baseline and every checkpoint of the main comparison.

    ``items``: the rendered task items every model is scored on; ``reference_items``: tasks
    the study scores on the baseline only (scored likewise here). ``result`` (step 03's
    ``run_evaluation``) supplies the study's per-item scores for the comparison. Returns
    {model: {task: {acc, acc_stderr, study_acc, agree_items, n_items, max_abs_ll_diff}}}.
    """
    # A listed task is an lm-eval task name or a task YAML file (relative to the project root).
    listed = [str(resolve(t)) if t.endswith((".yaml", ".yml")) else t for t in P.evaluate.lm_eval_tasks]
    quantize_dir = resolve(quantize_dir)
    records = main_checkpoints(checkpoint_list(quantize_dir))
    batch_size: int | str = "auto" if P.study.device != "cpu" and torch.cuda.is_available() else 16
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="quantstudy-lmeval-") as tmp:
        study = export_tasks(items, Path(tmp) / "all")
        reference = export_tasks(reference_items or {}, Path(tmp) / "reference")
        extra = [n for n in listed if n != STUDY_TASKS and n not in study.values() and n not in reference.values()]
        manager = task_manager(tmp, include_defaults=bool(extra))
        check_tasks(list(study.values()) + list(reference.values()) + extra, manager)  # before any model loads

        model, tok = load_baseline(P)
        scores = dict(result["base"]["items"]) if result else None
        if result:
            scores.update(result.get("reference", {}))
        out["baseline"] = score_model(model, tok, {**study, **reference}, extra, manager, scores, batch_size)
        del model
        for rec in tqdm(records, desc="lm-eval checkpoints"):
            model = load_candidate(P, quantize_dir, rec["name"])
            scores = result["cands"].get(rec["name"], {}).get("items") if result else None
            out[rec["name"]] = score_model(model, tok, study, extra, manager, scores, batch_size)
            del model
    return out
