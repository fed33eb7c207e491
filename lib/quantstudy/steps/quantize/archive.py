"""What step 02 writes to disk: the full-precision baseline archived with its checksums (and
the line that rolls serving back to it), and each quantized checkpoint folder with its record."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from quantstudy import modelsource
from quantstudy.awqformat import CHECKSUMS, QUANT_META, checkpoint_size, sha256_file
from quantstudy.config.params import ModelSection
from quantstudy.paths import project_root
from quantstudy.steps.quantize.checks import QuantizeError


def archive_baseline(model: Any, dst: str | Path) -> dict[str, str]:
    """Write the full-precision model as a local folder (a copy of an embedded folder; a hub
    model or a GGUF file converted once to float weights) and its SHA256SUMS.

    ``model`` is the params' model section (or, for an embedded folder, its path).
    Returns {file: sha256}.
    """
    if isinstance(model, (str, Path)):
        model = ModelSection(source="embedded", path=str(model))
    dst = Path(dst)
    try:
        modelsource.materialize(model, dst, dtype=model.dtype)
    except modelsource.ModelSourceError as exc:
        raise QuantizeError(str(exc)) from None
    sums = {str(p.relative_to(dst)): sha256_file(p) for p in sorted(dst.rglob("*")) if p.is_file()}
    (dst / CHECKSUMS).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def save_checkpoint(awq_model, tokenizer, out_dir: Path, meta: dict) -> None:
    """A fresh checkpoint folder: AutoAWQ's packed format, or dense float16 weights when
    ``meta["simulated"]`` (3 bits), the tokenizer, and ``meta`` as quantstudy_quant.json."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if meta["simulated"]:
        # Dense fake-quantized weights, stored in float16 like any 16-bit model.
        awq_model.model.config.torch_dtype = "float16"
        awq_model.model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    else:
        awq_model.model.to(torch.float16)  # float scales -> float16, as AutoAWQ checkpoints ship
        awq_model.save_quantized(str(out))
    tokenizer.save_pretrained(out)
    (out / QUANT_META).write_text(json.dumps(meta, indent=2))
    follow_umask(out)


def follow_umask(folder: Path) -> None:
    """AutoAWQ writes its safetensors readable by the owner only (0600); results meant to be
    shared get the user's umask like every other file."""
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(folder).rglob("*"):
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def write_record(out_dir: Path, record: dict) -> None:
    """A checkpoint's full record (settings, timings, sizes) as its quantstudy_quant.json."""
    (Path(out_dir) / QUANT_META).write_text(json.dumps(record, indent=2))


def finish_record(out_dir: Path, meta: dict, search_s: float, started: float, peak_rss_mb: float | None) -> dict:
    """A saved checkpoint's full record: its settings, the search and total wall time, peak
    memory and its size on disk; written as its quantstudy_quant.json and returned."""
    record = {
        **meta,
        "name": Path(out_dir).name,
        "search_wall_s": round(search_s, 2),
        "total_wall_s": round(time.time() - started, 2),
        "peak_rss_mb": peak_rss_mb,
        **checkpoint_size(out_dir),
    }
    write_record(out_dir, record)
    return record


def rollback_line(baseline_dir: Path) -> str:
    """The one line that verifies the archived baseline and points serving back at it."""
    rel = _rel(baseline_dir)
    return f"(cd {rel} && sha256sum --quiet -c {CHECKSUMS}) && export MODEL_PATH={rel}"


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)
