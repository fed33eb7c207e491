"""Does a path compute what the baseline computes? Logits of one fixed random prompt per
built model, and how far a path's are from the baseline's."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def probe_logits(model: nn.Module, device: str, tokens: int = 64, seed: int = 0) -> torch.Tensor:
    """float32 logits of one fixed random prompt (the same for every path of a model)."""
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed + 1))
    with torch.inference_mode():
        return model(input_ids=ids.to(device)).logits.float().cpu()[0]


def agreement(path: str, logits: torch.Tensor, base: torch.Tensor) -> dict[str, Any]:
    """How far a path's logits are from the baseline's on the same prompt.

    ``rel_rms_diff`` = RMS(logits - baseline) / RMS(baseline): a kernel bug shows up as a
    value near 1, rounding (e.g. bfloat16 scales) as well under 0.05. ``top1_agreement`` is
    the share of positions with the same arg-max token; on random weights the logits are
    nearly flat, so tiny rounding flips near-ties and top-1 agreement is the weaker check.
    """
    diff = logits - base
    return {
        "path": path,
        "tokens": int(base.shape[0]),
        "rel_rms_diff": float(diff.pow(2).mean().sqrt() / base.pow(2).mean().sqrt().clamp_min(1e-12)),
        "max_abs_diff": float(diff.abs().max()),
        "top1_agreement": float((logits.argmax(-1) == base.argmax(-1)).float().mean()),
    }
