"""Memory: exact bytes of a model's weights (whole, per quantized linear, extrapolated to the
full layer count, on disk), one path's memory row, and freeing memory between paths."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from quantstudy.steps.benchmark.linears import Int4CPULinear, Int4CUDALinear, NaiveAWQLinear
from quantstudy.steps.quantize import PeakRSS


def free_memory(device: str) -> None:
    """Collect garbage now (and on a GPU empty the cache and reset the peak counter)."""
    gc.collect()
    if device == "cuda":  # pragma: no cover
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """``model.model.layers`` as a list (empty when the model has none)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def tensor_bytes(obj: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor | Iterable[torch.Tensor]) -> int:
    """Exact bytes of the parameters + buffers (each storage counted once: tied weights once)."""
    if isinstance(obj, torch.Tensor):
        tensors: Iterable[torch.Tensor] = [obj]
    elif isinstance(obj, nn.Module):
        tensors = [*obj.parameters(), *(b for b in obj.buffers() if b is not None)]
    elif isinstance(obj, Mapping):
        tensors = obj.values()
    else:
        tensors = list(obj)
    seen: set[tuple[int, int, str]] = set()
    total = 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), str(t.device)) if t.numel() else (id(t), 0, "")
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def disk_bytes(folder: str | Path) -> int:
    """Bytes of the folder's *.safetensors files."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _quantized_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (NaiveAWQLinear, Int4CPULinear, Int4CUDALinear)) or type(m).__name__.startswith("WQLinear")
    ]


def quantized_linear_bytes(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Bytes of the quantized linears as stored vs the same linears in float16.

    Works on a model (any path's modules) or on an AWQ state dict (``*.qweight`` triples).
    At 4 bits, g128, AWQ's layout is 4 + 16/128 (fp16 scales) + 4/128 (packed zeros) = 4.156
    bits per weight -> 3.85x smaller than float16. The fast4 CPU layout stores zeros as
    bfloat16 floats: 4 + 32/128 = 4.25 bits -> 3.76x.
    """
    q_bytes = fp16_bytes = n = 0
    if isinstance(model_or_state, nn.Module):
        for _, m in _quantized_linears(model_or_state):
            q_bytes += tensor_bytes(m)
            fp16_bytes += 2 * m.in_features * m.out_features + (
                2 * m.out_features if getattr(m, "bias", None) is not None else 0
            )
            n += 1
    else:
        st = model_or_state
        for k, qw in st.items():
            if k.endswith(".qweight"):
                prefix = k[: -len(".qweight")]
                parts = [qw, st[prefix + ".qzeros"], st[prefix + ".scales"]]
                in_f, out_f = qw.shape[0], qw.shape[1] * 8
                bias = st.get(prefix + ".bias")
                if bias is not None:
                    parts.append(bias)
                q_bytes += tensor_bytes(parts)
                fp16_bytes += 2 * in_f * out_f + (2 * out_f if bias is not None else 0)
                n += 1
    return {
        "linears": n,
        "quantized_bytes": q_bytes,
        "fp16_bytes": fp16_bytes,
        "ratio_vs_fp16": round(fp16_bytes / q_bytes, 4) if q_bytes else None,
    }


def model_weight_bytes(model: nn.Module, full_num_layers: int | None = None) -> int:
    """In-memory weight bytes, extrapolated to `full_num_layers` decoder layers if given."""
    total = tensor_bytes(model)
    layers = decoder_layers(model)
    if not full_num_layers or not layers:
        return total
    per_layer = tensor_bytes(layers[0])
    return total - per_layer * len(layers) + per_layer * full_num_layers


def memory_row(
    path: str,
    model: nn.Module,
    disk: int | None,
    full_num_layers: int | None,
    device: str,
    rss_before: int,
    build_mem: PeakRSS,
    rss_built: int,
    run_mem: PeakRSS,
) -> dict[str, Any]:
    """One path's memory: weights (in memory, whole model, on disk, quantized linears) and process RSS."""
    qlb = quantized_linear_bytes(model)
    return {
        "path": path,
        "lm_head": getattr(model, "quantstudy_lm_head", "float"),
        "weight_bytes_in_memory": tensor_bytes(model),
        "weight_bytes_full_model": model_weight_bytes(model, full_num_layers),
        "weight_bytes_on_disk": disk,
        "quantized_linear_bytes": qlb["quantized_bytes"] if qlb["linears"] else None,
        "quantized_linear_ratio_vs_fp16": qlb["ratio_vs_fp16"],
        # process RSS: before building, peak while building (skeleton + checkpoint tensors),
        # after building, and peak while timing (the inference footprint: weights, activations, KV)
        "rss_before_mb": round(rss_before / 2**20, 1),
        "peak_rss_build_mb": build_mem.peak_mb,
        "rss_built_mb": round(rss_built / 2**20, 1),
        "peak_rss_run_mb": run_mem.peak_mb,
        "peak_rss_run_delta_mb": round((run_mem.peak - rss_before) / 2**20, 1),
        "cuda_max_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None),
    }
