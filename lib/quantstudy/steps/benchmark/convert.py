"""A checkpoint -> the model one inference path times: ``baseline`` (dense, or the AWQ
checkpoint dequantized), ``naive4``, ``fast4`` (with the served output head on a CPU) and
``torchint4``, each quantized linear replaced by its path's module (:mod:`.linears`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import nn

from quantstudy import serving
from quantstudy.awqformat import cast_model, dequantize_awq_state
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.steps.benchmark.devices import PATHS, BenchError, available_paths, path_dtype, resolve_device
from quantstudy.steps.benchmark.linears import Int4CPULinear, Int4CUDALinear, NaiveAWQLinear, wqlinear_gemm

LOADER = f"{__name__}.convert_model"  # the loader a benchmark row names when convert_model built its model


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's *.safetensors files."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise BenchError(f"{folder}: no *.safetensors files")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _awq_config(cfg) -> dict | None:
    qc = getattr(cfg, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    return {
        "bits": qc.get("bits", qc.get("w_bit", 4)),
        "group_size": qc.get("group_size", qc.get("q_group_size", 128)),
        "version": str(qc.get("version", "gemm")).lower(),
        "method": qc.get("quant_method", "awq"),
    }


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _skeleton(cfg, dtype: torch.dtype) -> nn.Module:
    """The model from its config without random initialisation (every tensor is loaded after;
    initialising a 1B-shaped model costs ~20 s of single-threaded RNG per path)."""
    from transformers import AutoModelForCausalLM  # lazy: transformers costs seconds to import

    try:
        from transformers.initialization import no_init_weights  # seconds to import; loaded only where a model is
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def _checked_device(path: str, device: str) -> str:
    """The resolved device, once `path` is known and runs there."""
    if path not in PATHS:
        raise BenchError(f"unknown path {path!r}; paths: {', '.join(PATHS)}")
    device = resolve_device(device)
    reason = available_paths(device)[path]
    if reason:
        raise BenchError(f"path {path!r} is not available on {device}: {reason}")
    return device


def _read_config(folder: Path, path: str):
    """(config, AWQ settings or None) of a checkpoint folder that `path` can be built from."""
    from transformers import AutoConfig  # lazy: transformers costs seconds to import

    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder}: no config.json; not a model checkpoint")
    cfg = AutoConfig.from_pretrained(str(folder))
    qc = _awq_config(cfg)
    if qc is not None and (qc["method"] != "awq" or qc["bits"] != 4 or qc["version"] != "gemm"):
        raise BenchError(f"{folder}: quantization_config {qc} is not AutoAWQ GEMM 4-bit")
    if qc is None and path != "baseline":
        raise BenchError(f"path {path!r} needs an AutoAWQ GEMM checkpoint; {folder} is dense")
    return cfg, qc


def _autoawq_model(folder: Path, device: str) -> tuple[nn.Module | None, str | None]:  # pragma: no cover - GPU
    """fast4 on a GPU through AutoAWQ's own loader -> (model, None), or (None, why it failed)."""
    quiet_awq()
    from awq import AutoAWQForCausalLM  # lazy: awq costs seconds to import

    try:
        model = AutoAWQForCausalLM.from_quantized(str(folder), fuse_layers=False).model.to(device).eval()
        model.quantstudy_loader = "AutoAWQForCausalLM.from_quantized"
        return model, None
    except Exception as exc:  # same kernels, our loader: see wqlinear_gemm
        return None, f"from_quantized failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})"


def _load_dense(
    model: nn.Module, tensors: dict[str, torch.Tensor], qc: dict | None, tied: bool, dtype: torch.dtype
) -> nn.Module:
    """The baseline: the checkpoint's tensors (dequantized when AWQ) in `dtype`."""
    state = dequantize_awq_state(tensors, qc["bits"], qc["group_size"]) if qc else tensors
    if tied and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    if tied:
        model.tie_weights()
    return model


def _linear_builder(
    path: str, device: str, qc: dict, dtype: torch.dtype, inner_k_tiles: int, compute_dtype: torch.dtype
) -> Callable[..., nn.Module]:
    """(qweight, qzeros, scales, bias) -> the module `path` runs that linear with."""
    group, bits = qc["group_size"], qc["bits"]
    if path == "naive4":
        return lambda qw, qz, sc, bias: NaiveAWQLinear(
            qw, qz, sc, None if bias is None else bias.to(dtype), group, bits
        )
    if path == "torchint4":
        return lambda qw, qz, sc, bias: Int4CUDALinear.from_awq(qw, qz, sc, bias, group, bits, device=device)
    if device == "cuda":  # pragma: no cover - needs a GPU
        return lambda qw, qz, sc, bias: wqlinear_gemm(qw, qz, sc, bias, group, bits)
    return lambda qw, qz, sc, bias: Int4CPULinear.from_awq(
        qw, qz, sc, bias, group, bits, inner_k_tiles=inner_k_tiles, compute_dtype=compute_dtype
    )


def _swap_quantized_linears(
    model: nn.Module, tensors: dict[str, torch.Tensor], build: Callable[..., nn.Module]
) -> list[str]:
    """Pop every ``*.qweight`` triple (and its bias) off `tensors` into a built module -> their prefixes."""
    prefixes = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    for prefix in prefixes:
        qw, qz, sc = (tensors.pop(f"{prefix}.{n}") for n in ("qweight", "qzeros", "scales"))
        bias = tensors.pop(f"{prefix}.bias", None)
        _set_module(model, prefix, build(qw, qz, sc, bias))
    return prefixes


def _load_unquantized(
    model: nn.Module, rest: dict[str, torch.Tensor], prefixes: list[str], tied: bool, dtype: torch.dtype, folder: Path
) -> None:
    """Load the tensors left (embeddings, norms, lm_head) in `dtype`; every other key must be a quantized module's."""
    rest = {k: v.to(dtype) if v.is_floating_point() else v for k, v in rest.items()}
    if tied and "lm_head.weight" not in rest:
        rest["lm_head.weight"] = rest["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(rest, strict=False)
    quant_keys = {
        f"{p}.{n}" for p in prefixes for n in ("qweight", "qzeros", "scales", "packed", "scales_and_zeros", "bias")
    }
    missing = [k for k in missing if k not in quant_keys]
    if missing or unexpected:
        raise BenchError(
            f"{folder}: checkpoint does not match its config (missing {missing[:5]}, unexpected {list(unexpected)[:5]})"
        )
    if tied:
        model.tie_weights()


def convert_model(
    source: str | Path | nn.Module,
    path: str,
    device: str = "cpu",
    *,
    inner_k_tiles: int = 2,
    compute_dtype: torch.dtype = torch.bfloat16,
    lm_head: str = "float",
) -> nn.Module:
    """Build the model for inference `path` from an AutoAWQ GEMM checkpoint folder.

    `source` may also be a dense folder or a dense ``nn.Module``, for ``baseline`` only.
    The skeleton comes from config.json (``AutoModelForCausalLM.from_config``); the
    non-quantized tensors (embeddings, norms, lm_head) are loaded in the baseline dtype and
    every quantized linear (``*.qweight``) becomes the path's module. ``fast4`` on a CPU runs
    with the served output head ``lm_head`` (``serving.LM_HEADS``; the other paths keep the
    model's own head).
    """
    device = _checked_device(path, device)
    dtype = path_dtype(path, device)
    if isinstance(source, nn.Module):
        if path != "baseline":
            raise BenchError(f"path {path!r} needs an AWQ checkpoint folder, not a dense module")
        return cast_model(source, dtype).to(device).eval()
    folder = Path(source)
    cfg, qc = _read_config(folder, path)
    fallback_reason = None
    if device == "cuda" and path == "fast4":  # pragma: no cover - needs a GPU
        model, fallback_reason = _autoawq_model(folder, device)
        if model is not None:
            return model
    if qc is not None:
        del cfg.quantization_config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    model = _skeleton(cfg, dtype)
    tensors = load_tensors(folder)
    if path == "baseline":
        return _load_dense(model, tensors, qc, tied, dtype).to(device).eval()
    build = _linear_builder(path, device, qc, dtype, inner_k_tiles, compute_dtype)
    prefixes = _swap_quantized_linears(model, tensors, build)
    _load_unquantized(model, tensors, prefixes, tied, dtype, folder)
    model = model.to(device).eval()
    if path == "fast4" and device == "cpu":
        serving.apply_served_head(model, lm_head)
    if fallback_reason:  # pragma: no cover - needs a GPU
        model.quantstudy_loader = f"AutoAWQ WQLinear_GEMM modules loaded by quantstudy; {fallback_reason}"
    return model
