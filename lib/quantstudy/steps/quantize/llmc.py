"""The second AWQ implementation: llm-compressor (vllm-project), AutoAWQ's maintained successor.

Same calibration samples, bits, group size, zero point and ``duo_scaling`` as the AutoAWQ run
of a set, as llm-compressor's own recipe: ``AWQModifier`` (the scale search) followed by
``QuantizationModifier`` (group-wise int weights, ``lm_head`` left in float), through
``oneshot`` with its sequential pipeline. The checkpoint is llm-compressor's compressed-tensors
``pack-quantized`` folder, which vLLM serves; the study loads it back through compressed-tensors'
own decompression (:mod:`quantstudy.awqformat.compressed`).

Both see the same token blocks (the set's samples concatenated and cut into ``max_seq_len``
blocks, as AutoAWQ does), in one batch. Differences from AutoAWQ that stay: llm-compressor has
no clip search (AutoAWQ's ``apply_clip``; the study's default leaves it off), its own grid and
loss code, and it stores scales in the model's dtype (float32 here) where AutoAWQ stores float16.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import torch

from quantstudy.awqformat.checkpoint import QUANT_META
from quantstudy.paths import resolve
from quantstudy.steps.quantize.archive import finish_record, follow_umask
from quantstudy.steps.quantize.checks import QuantizeError
from quantstudy.steps.quantize.llmc_workarounds import skip_pinning_without_accelerator
from quantstudy.steps.quantize.memory import PeakRSS
from quantstudy.steps.quantize.search import QuantRequest, search_precision, torch_dtype

N_GRID = 20  # scale candidates per layer group: AutoAWQ's grid size, and llm-compressor's default


def available() -> bool:
    """llm-compressor is installed (``make setup`` installs it)."""
    return importlib.util.find_spec("llmcompressor") is not None


def quiet_llmc() -> None:
    """llm-compressor logs every stage at INFO (dozens of lines per layer), which drowns the
    study's progress bars; its level is read once, at its first import."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")


def recipe(req: QuantRequest) -> list:
    """llm-compressor's AWQ recipe for a request: the scale search, then group-wise int weights."""
    quiet_llmc()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # seconds; only here
    from llmcompressor.modifiers.quantization import QuantizationModifier  # llm-compressor: seconds; only here
    from llmcompressor.modifiers.transform.awq import AWQModifier  # (as above)

    weights = QuantizationArgs(
        num_bits=req.bits, type="int", strategy="group", group_size=req.group_size, symmetric=not req.zero_point
    )
    return [
        AWQModifier(duo_scaling=req.duo_scaling, n_grid=N_GRID),
        QuantizationModifier(
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}, ignore=["lm_head"]
        ),
    ]


def as_blocks(samples: list[list[int]], max_seq_len: int) -> list[list[int]]:
    """The samples as AutoAWQ feeds them to its search: concatenated and cut into whole blocks
    of ``max_seq_len`` tokens (a last partial block is dropped). Both implementations then see
    the same token blocks, and llm-compressor can run them as one batch of equal lengths."""
    flat = [t for s in samples for t in s]
    return [flat[i : i + max_seq_len] for i in range(0, len(flat) - max_seq_len + 1, max_seq_len)]


def _calibration_dataset(samples: list[list[int]], max_seq_len: int, loss_masks: list[list[int]] | None):
    from datasets import Dataset  # ~1.3 s to import

    blocks = as_blocks(samples, max_seq_len)
    if not blocks:
        raise QuantizeError(f"calibration set holds fewer than max_seq_len={max_seq_len} tokens: no whole block")
    columns = {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}
    if loss_masks is not None:
        if [len(m) for m in loss_masks] != [len(s) for s in samples]:
            raise QuantizeError("assistant masks do not align with the calibration samples; re-run step 01")
        columns["loss_mask"] = as_blocks(loss_masks, max_seq_len)
    return Dataset.from_dict(columns)


def _load_model(req: QuantRequest):
    """The base model (a project path or a hub id) in the search dtype, on the CPU."""
    from transformers import AutoModelForCausalLM  # seconds to import

    src = resolve(req.model_path)
    return AutoModelForCausalLM.from_pretrained(
        str(src) if src.exists() else req.model_path,
        dtype=torch_dtype(req.dtype),
        trust_remote_code=req.trust_remote_code,
    )


def _meta(req: QuantRequest, source: str, draw: int | None, samples: list[list[int]], dataset) -> dict:
    """The checkpoint's record (``quantstudy_quant.json``), in the fields AutoAWQ's carry."""
    masked = "loss_mask" in dataset.column_names
    return {
        "method": "awq",
        "backend": "llmcompressor",
        "loss_mask": "assistant" if masked else None,
        "masked_tokens": int(sum(map(sum, dataset["loss_mask"]))) if masked else None,
        "bits": req.bits,
        "group_size": req.group_size,
        "zero_point": req.zero_point,
        "version": "compressed-tensors pack-quantized",
        "duo_scaling": req.duo_scaling,
        "apply_clip": False,
        "search_autocast": req.search_autocast,
        "simulated": False,
        "calibration_source": source,
        "draw": draw,
        "calibration_samples": len(samples),
        "calibration_tokens": int(sum(map(len, dataset["input_ids"]))),
        "base_model": str(req.model_path),
    }


def quantize_llmc(
    req: QuantRequest,
    tokenizer,
    samples: list[list[int]],
    max_seq_len: int,
    source: str = "",
    draw: int | None = None,
    loss_masks: list[list[int]] | None = None,
) -> dict:
    """Run llm-compressor's AWQ on token-id samples and save its compressed-tensors checkpoint.
    ``loss_masks`` (0/1 per token): only the marked tokens count in AWQ's objective."""
    if not samples:
        raise QuantizeError(f"calibration set {source or '?'} is empty: nothing to calibrate on")
    if req.bits != 4:
        raise QuantizeError(f"quantize.bits: llm-compressor runs 4-bit here; found {req.bits}")
    if not available():
        raise QuantizeError("quantize.backends lists llmcompressor but it is not installed: run `make setup`")
    quiet_llmc()
    skip_pinning_without_accelerator()
    from llmcompressor import oneshot  # seconds to import, loaded only where used

    t0 = time.time()
    with PeakRSS() as mem:
        model = _load_model(req)
        t_search = time.time()
        dataset = _calibration_dataset(samples, max_seq_len, loss_masks)
        with search_precision(req):  # quantize.search_autocast, as for AutoAWQ's search
            oneshot(
                model=model,
                dataset=dataset,
                recipe=recipe(req),
                num_calibration_samples=len(dataset),
                batch_size=len(dataset),  # one batch, as AutoAWQ runs its blocks
                max_seq_length=max_seq_len,
                shuffle_calibration_samples=False,
                pipeline="sequential",
                use_loss_mask=loss_masks is not None,
            )
        search_s = time.time() - t_search
        meta = _meta(req, source, draw, samples, dataset)
        _save(model, tokenizer, Path(req.out_dir), meta)
    return finish_record(req.out_dir, meta, search_s, t0, mem.peak_mb)


def _save(model, tokenizer, out: Path, meta: dict) -> None:
    """A fresh folder: llm-compressor's compressed checkpoint, the tokenizer, the study's record."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with torch.no_grad():
        model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    (out / QUANT_META).write_text(json.dumps(meta, indent=2))
    follow_umask(out)
