"""What the quantizer can handle, checked before any search: the model's config (read without
loading weights), its architecture against AutoAWQ's list, its widths against the group size,
and the bit widths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantstudy import modelsource
from quantstudy.awqformat import CheckpointError
from quantstudy.awqformat.autoawq import supported_model_types
from quantstudy.paths import resolve


class QuantizeError(CheckpointError):
    """A model or setting the quantizer cannot handle; the message says what to change."""


def read_config(model: Any) -> dict:
    """config.json of a local folder, the header of a GGUF file, or a hub id's config through
    transformers (needs network). ``model`` is the params' model section or a folder path."""
    if not isinstance(model, (str, Path)):
        found = modelsource.model_config(model)
        if found is not None:
            return found[1]
        model_path = model.path
    else:
        model_path = model
    folder = resolve(model_path)
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    from transformers import AutoConfig  # seconds to import; only a hub id needs it

    try:
        return AutoConfig.from_pretrained(str(model_path)).to_dict()
    except Exception as exc:  # network or unknown id
        raise QuantizeError(
            f"model.path: cannot read a config for {model_path!r} ({exc.__class__.__name__}); "
            "give a local model folder, or a hub id on a machine with network"
        ) from None


def check_model(config: dict, group_size: int, bits: list[int] | tuple[int, ...] = (4,)) -> None:
    """Fail before any search: unsupported architecture, or a group size that splits a row."""
    mtype = config.get("model_type")
    supported = supported_model_types()
    if mtype not in supported:
        raise QuantizeError(
            f"model type {mtype!r} is not supported by AutoAWQ 0.2.9; supported types: {', '.join(supported)}"
        )
    widths = {k: config.get(k) for k in ("hidden_size", "intermediate_size")}
    for key, width in widths.items():
        if isinstance(width, int) and width % group_size:
            raise QuantizeError(
                f"quantize.group_size={group_size} does not divide {key}={width}: every quantized "
                f"layer's input width must be a multiple of the group size; choose a divisor of {width}"
            )
    for b in bits:
        if b not in (3, 4):
            raise QuantizeError(f"quantize.bits: {b} is not supported; use 4 (packed) or 3 (simulated)")
