"""llm-compressor's checkpoints: compressed-tensors ``pack-quantized`` folders, turned back into
dense float weights with compressed-tensors' own decompression (the arithmetic vLLM's kernels
implement), as the AutoAWQ loader does with autoawq's unpacking.

A quantized linear ``<prefix>`` is stored as ``weight_packed`` (int32, eight 4-bit values per
word along the input dimension), ``weight_scale`` [out, in / group], ``weight_zero_point``
(packed along the output dimension; asymmetric schemes only) and ``weight_shape``.
"""

from __future__ import annotations

import torch

PARAMS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def is_compressed_config(qc: dict) -> bool:
    """A compressed-tensors quantization_config that this module can decompress."""
    return qc.get("quant_method") == "compressed-tensors" and qc.get("format") == "pack-quantized"


def _scheme(qc: dict):
    """The one weight scheme of a config (the study writes a single config group)."""
    # compressed-tensors: seconds to import, loaded only where such a checkpoint is read
    from compressed_tensors.quantization import QuantizationScheme

    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise ValueError(f"expected one config group in quantization_config; found {sorted(groups)}")
    return QuantizationScheme.model_validate(next(iter(groups.values())))


def scheme_bits(qc: dict) -> tuple[int, int]:
    """(bits, group size) of a compressed-tensors config."""
    w = _scheme(qc).weights
    return int(w.num_bits), int(w.group_size)


def dequantize_compressed_state(tensors: dict[str, torch.Tensor], qc: dict) -> dict[str, torch.Tensor]:
    """Replace every packed linear by a dense float32 ``weight`` [out, in]; other tensors as they are."""
    # compressed-tensors: seconds to import, loaded only where such a checkpoint is read
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    scheme = _scheme(qc)
    out: dict[str, torch.Tensor] = {}
    done = set()
    for name in tensors:
        if not name.endswith(".weight_packed"):
            continue
        prefix = name[: -len(".weight_packed")]
        local = {p: tensors[f"{prefix}.{p}"] for p in PARAMS if f"{prefix}.{p}" in tensors}
        local["weight_scale"] = local["weight_scale"].float()
        dense = PackedQuantizationCompressor.decompress(local, scheme)
        out[prefix + ".weight"] = dense["weight"].float().contiguous()
        done.update(f"{prefix}.{p}" for p in local)
    for name, t in tensors.items():
        if name not in done:
            out[name] = t.float() if t.is_floating_point() else t
    return out


def packed_size(tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(bits stored for the quantized linears: packed weights, scales, zero points; their weight count)."""
    bits = weights = 0
    for name, t in tensors.items():
        if name.endswith(".weight_packed"):
            prefix = name[: -len(".weight_packed")]
            shape = tensors[prefix + ".weight_shape"]
            weights += int(shape[0]) * int(shape[1])
            for p in ("weight_packed", "weight_scale", "weight_zero_point"):
                x = tensors.get(f"{prefix}.{p}")
                bits += 0 if x is None else x.numel() * x.element_size() * 8
    return bits, weights
