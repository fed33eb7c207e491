"""What step 03 loads: the evaluation texts and task items, step 02's checkpoint records (and
which of them form the main comparison), the baseline model in the evaluation dtype, and the
weight fingerprints the rollback check compares."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from quantstudy import awqformat, contracts, data, modelsource
from quantstudy.metrics.registry import TASKS
from quantstudy.paths import resolve
from quantstudy.steps.calibration import domain_lexicon_for


def checkpoint_list(quantize_dir: str | Path) -> list[dict]:
    """Checkpoint records written by step 02 (records of checkpoints present on disk)."""
    folder = resolve(quantize_dir)
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: run step 02_quantize first (input_dirs['02_quantize'])")
    recs = contracts.read("02_quantize", folder)["checkpoints"]
    missing = [r["name"] for r in recs if not (folder / "checkpoints" / r["name"] / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoints missing under {folder / 'checkpoints'}: {', '.join(missing)}; re-run step 02"
        )
    return recs


def main_checkpoints(records: list[dict]) -> list[dict]:
    """Checkpoints of the main comparison: no sweep sets, no search-setting variants, no
    served-head rows (those are a serving choice, scored against the budget only)."""
    return [r for r in records if not r.get("sweep") and not r.get("variant") and not r.get("served_head")]


LLMC = "/llmc"  # group-key suffix of llm-compressor's checkpoints
ASSISTANT_ONLY = "-asst"  # ... calibrated on the assistant's tokens only


def group_key(rec: dict) -> str:
    """'RTN', or the calibration source, with ``/llmc`` for llm-compressor's checkpoints and
    ``/llmc-asst`` for those calibrated on the assistant's tokens only."""
    if rec["method"] == "rtn":
        return "RTN"
    key = rec["calibration_source"]
    if rec.get("backend", "autoawq") == "llmcompressor":
        key += LLMC + (ASSISTANT_ONLY if rec.get("loss_mask") else "")
    return key


def source_groups(records: list[dict], bits: int = 4) -> dict[str, list[str]]:
    """{'RTN': [...], 'generic': [draw names], 'in_domain': [...], 'mixed': [...],
    'in_domain/llmc': [...], ...} at one bit width, each group in draw order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for r in main_checkpoints(records):
        if r["bits"] != bits:
            continue
        groups.setdefault(group_key(r), []).append((r.get("draw") or 0, r["name"]))
    return {k: [name for _, name in sorted(v, key=lambda x: x[0])] for k, v in groups.items()}


def load_eval_data(P, tokenizer=None) -> dict:
    """Evaluation texts of both domains and the task items (validated, optionally capped per
    task), rendered as the model will see them: conversations and structured items through the
    tokenizer's chat template when it has one. Reference tasks (``evaluate.reference_tasks``)
    are kept apart: the baseline alone scores them, against chance."""
    tokenizer = tokenizer if tokenizer is not None else modelsource.load_tokenizer(P.model)
    items = data.read_task_items(P.data.task_items)
    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    for it in items:
        rendered = {**it, "context": data.item_context(it, tokenizer)}
        by_task.setdefault(it["task"], []).append(rendered)
    if P.evaluate.max_items_per_task:
        by_task = {t: v[: P.evaluate.max_items_per_task] for t, v in by_task.items()}
    reference = {t: by_task.pop(t) for t in P.evaluate.reference_tasks if t in by_task}
    convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)
    return {
        "generic": data.load_generic_texts(P.data, "eval"),
        "in_domain": [data.conversation_to_text(c, tokenizer) for c in convs],
        "items": by_task,
        "reference_items": reference,
        "lexicon": domain_lexicon_for(P),
        "tokenizer": tokenizer,
        "chat_template": data.has_chat_template(tokenizer),
    }


def eval_dtype(P) -> torch.dtype:
    return getattr(torch, P.model.eval_dtype)


def load_baseline(P, tokenizer=None):
    """The full-precision model from its source (a GGUF file is dequantized again, so the
    rollback check compares the archive with the source), in the evaluation dtype; with its
    tokenizer, or the one given (loading a GGUF's tokenizer takes seconds)."""
    if P.model.source == "gguf":
        model = modelsource.load_float_model(P.model).to(awqformat.resolve_device(P.study.device))
        tok = tokenizer if tokenizer is not None else modelsource.load_tokenizer(P.model)
    else:
        model, tok, _ = awqformat.load_checkpoint(P.model.path, device=P.study.device)
        tok = tokenizer if tokenizer is not None else tok
    return awqformat.cast_model(model, eval_dtype(P)).eval(), tok


def load_candidate(P, quantize_dir: Path, name: str):
    """A step-02 checkpoint by name, loaded in the evaluation dtype (model only)."""
    model, _, _ = awqformat.load_checkpoint(
        quantize_dir / "checkpoints" / name, device=P.study.device, dtype=eval_dtype(P)
    )
    return model


def weight_fingerprint(model) -> dict[str, str]:
    """SHA-256 of every tensor's bytes, by state-dict name: the rollback check compares the
    archive with the evaluated baseline through these instead of loading the source again."""
    return {
        name: hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
        for name, t in model.state_dict().items()
    }
