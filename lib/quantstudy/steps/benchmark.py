"""Step 04 benchmark: memory and prefill/decode speed of each inference path, the
"quantized is slower than baseline" trap, and the fleet size / cost it implies.

Inference paths (``available_paths`` says which run here, and why not):

``baseline``
    Dense model: float32 on CPU, float16 on GPU. Built from an AWQ folder it is the
    dequantized model (same shapes, so the same speed and memory as the original dense one).
``naive4``
    :class:`NaiveAWQLinear` keeps AutoAWQ's packed GEMM tensors (``qweight`` int32 [in, out/8],
    ``qzeros`` int32 [in/g, out/8], ``scales`` float16 [in/g, out]) and unpacks them with
    ``awq.utils.packing_utils.dequantize_gemm`` on *every* forward call, then matmuls. This is
    what 4-bit weights cost without kernels.
``fast4``
    CPU: :class:`Int4CPULinear`, torch's int4 weight-only kernel
    ``aten._weight_int4pack_mm_for_cpu``. Torch's convention is ``w = (q - 8) * scale + zero``
    with a float ``zero`` per group and output column; AWQ's is ``w = (q - z) * s`` with
    ``q, z`` in 0..15, so the exact conversion is ``scale = s`` and ``zero = (8 - z) * s``.
    On this kind of CPU (AVX512-BF16/AMX) the kernel is only fast with bfloat16 activations and
    bfloat16 scales/zeros: float32 inputs take a slow path ~3-4x (1 token) to ~80x (128 tokens)
    slower than the dense float32 matmul, and float16 is ~13x slower than bfloat16. So the
    layer casts ``x`` to bfloat16, runs the kernel and casts back; scales and zeros are rounded
    to bfloat16 (8-bit mantissa), which costs ~0.3% relative error against the float16-scale
    dequantized weights. ``compute_dtype=torch.float32`` keeps an exact (slow) reference.
    GPU: AutoAWQ's own kernels via ``AutoAWQForCausalLM.from_quantized`` (needs ``awq_ext`` or
    triton; not exercisable on a CPU-only machine).
``torchint4`` (CUDA only)
    :class:`Int4CUDALinear`, torch's own CUDA int4 kernel ``aten._weight_int4pack_mm``
    (tinygemm) with bfloat16 activations; the AWQ weights are converted exactly as for the CPU
    kernel (:mod:`quantstudy.awqformat.tinygemm`). Its non-quantized modules run in bfloat16.
    Prefill-sized inputs (>= 1,024 rows and >= in_features) take the weight dequantized through
    the kernel and one dense matmul, as AutoAWQ does; decode steps always run the kernel.

Non-quantized modules (embeddings, norms, ``lm_head``) stay in the baseline dtype in every
path (bfloat16 for ``torchint4``), so speed differences come from the quantized linears alone.

Modes (``benchmark.modes``): ``eager`` is Hugging Face's forward with its dynamic cache (below);
``graphed`` is :mod:`quantstudy.steps.decode`: a static KV cache, eager prefill, and each decode step
replayed from a CUDA graph (on a CPU the same loop runs without a graph). Each (path, mode) is
compared with the baseline in the same mode; ``harness`` compares the two modes of the baseline.

Timing follows AutoAWQ's ``examples/benchmark.py``: ``warmup`` untimed rounds, then ``repeats``
timed rounds; each round is one prefill forward over the prompt (``use_cache=True``,
``logits_to_keep=1`` as ``generate`` does) and ``decode_tokens`` greedy single-token steps that
reuse the cache. Prefill tokens/s = batch*context / prefill time; decode tokens/s =
batch*decode_tokens / total decode time. Forward hooks on the decoder layers also time the
layers alone, which gives three *scopes* per measurement:

* ``measured``: the model as instantiated (``prod_bench_layers`` layers + embeddings + head);
* ``layers``: the decoder layers alone (what quantization changes);
* ``full_model``: extrapolated to ``full_num_layers``: time = (measured - layer time)
  + layer time * full_num_layers / timed layers (speed per layer is the same for every layer
  of a uniform decoder). Without ``full_num_layers`` it equals ``measured``.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from quantstudy.awqformat import (PACK_ORDER, PackingError, cast_model, dequantize_awq_state, pack_awq_gemm,  # noqa: F401
                                  rtn_quantize_linear, unpack_awq_gemm)
from quantstudy.awqformat.packing import _pack_columns  # noqa: F401
from quantstudy.awqformat.tinygemm import awq_to_tinygemm
from quantstudy import contracts, serving
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.config.params import BenchmarkSection
from quantstudy.steps.quantize import PeakRSS

PATHS = ("baseline", "naive4", "fast4", "torchint4")
QUANTIZED_PATHS = ("naive4", "fast4", "torchint4")
MODES = ("eager", "graphed")
SCOPES = ("measured", "layers", "full_model")
TARGET_FAST_DECODE_SPEEDUP = 2.5
TARGET_BYTES_RATIO = 3.8
TARGET_GRAPHED_DECODE_SPEEDUP = 1.5  # issue 17: graphed 4-bit decode at batch 1 vs graphed float16 (GPU)


class BenchError(ValueError):
    """A benchmark request that cannot run here; the message says what to change."""


# =========================================================================== devices / paths
def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device: expected 'cpu', 'cuda' or 'auto'; found {device!r}")
    return device


def _int4_cpu_reason() -> str | None:
    ops = torch.ops.aten
    for op in ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu"):
        if not hasattr(ops, op):
            return f"torch {torch.__version__} has no aten.{op} (needs torch >= 2.6)"
    try:  # smoke test: the op may exist but lack a kernel for this CPU build
        packed = ops._convert_weight_to_int4pack_for_cpu(torch.zeros(16, 128, dtype=torch.int32), 2)
        ops._weight_int4pack_mm_for_cpu(torch.zeros(1, 128, dtype=torch.bfloat16), packed, 128,
                                        torch.ones(1, 16, 2, dtype=torch.bfloat16))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        return f"torch int4 CPU kernel fails here: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}"
    return None


def available_paths(device: str = "cpu") -> dict[str, str | None]:
    """{path: None if it runs on `device`, else the reason it does not}."""
    device = _resolve_device(device)
    out: dict[str, str | None] = {}
    if device == "cuda" and not torch.cuda.is_available():
        reason = "device is 'cuda' but no CUDA GPU is visible; use device 'cpu'"
        return {p: reason for p in PATHS}
    out["baseline"] = None
    try:
        quiet_awq()
        from awq.utils.packing_utils import dequantize_gemm  # noqa: F401
        out["naive4"] = None
    except Exception as exc:  # pragma: no cover - autoawq is a dependency
        out["naive4"] = f"autoawq is not importable ({exc.__class__.__name__}); install autoawq"
    if device == "cpu":
        out["fast4"] = _int4_cpu_reason()
    else:  # pragma: no cover - needs a GPU
        try:
            quiet_awq()
            from awq.modules.linear.gemm import TRITON_AVAILABLE, awq_ext
        except Exception as exc:
            out["fast4"] = f"autoawq GEMM module not importable ({exc.__class__.__name__})"
        else:
            out["fast4"] = None if (awq_ext is not None or TRITON_AVAILABLE) else (
                "AutoAWQ GPU kernels missing: install autoawq-kernels (awq_ext) or triton")
    out["torchint4"] = _int4_cuda_reason(device)
    return out


def _int4_cuda_reason(device: str) -> str | None:
    if device != "cuda":
        return "torch's int4 CUDA kernel (aten._weight_int4pack_mm) needs a CUDA GPU; fast4 is the CPU int4 kernel"
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):  # pragma: no cover - needs a GPU
        return f"torch {torch.__version__} has no aten._weight_int4pack_mm"
    if torch.cuda.get_device_capability() < (8, 0):  # pragma: no cover - needs a GPU
        return "torch's int4 CUDA kernel needs compute capability 8.0 or newer (Ampere+)"
    return None  # pragma: no cover - needs a GPU


def _int4_cuda_ops():
    """(convert, matmul) of torch's CUDA int4 kernel; tests swap in a CPU emulation."""
    return torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm


# =========================================================================== path modules
class NaiveAWQLinear(nn.Module):
    """Packed AWQ GEMM tensors, unpacked with ``dequantize_gemm`` on every call (no kernel)."""

    def __init__(self, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None, group_size: int, bits: int = 4):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[0], qweight.shape[1] * (32 // bits)
        self.group_size, self.bits = group_size, bits
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("qzeros", qzeros.contiguous())
        self.register_buffer("scales", scales.half().contiguous())
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quiet_awq()
        from awq.utils.packing_utils import dequantize_gemm

        w = dequantize_gemm(self.qweight, self.qzeros, self.scales.to(x.dtype), self.bits, self.group_size)
        out = torch.matmul(x, w)  # w is [in, out]
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class Int4CPULinear(nn.Module):
    """torch's int4 weight-only CPU kernel with AWQ's weights converted exactly.

    Buffers: ``packed`` uint8 [out_padded, in/2] (from ``_convert_weight_to_int4pack_for_cpu``)
    and ``scales_and_zeros`` [in/g, out_padded, 2] = (s, (8 - z) * s) in `compute_dtype`.
    The kernel needs out % 16 == 0; other widths are zero-padded and the output sliced.
    """

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, out_features: int, group_size: int, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.compute_dtype = group_size, compute_dtype
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_awq(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None, group_size: int, bits: int = 4, inner_k_tiles: int = 2,
                 compute_dtype: torch.dtype = torch.bfloat16) -> "Int4CPULinear":
        if bits != 4:
            raise BenchError("fast4 supports 4-bit AWQ weights only")
        iweight, izeros = unpack_awq_gemm(qweight, qzeros, bits)  # [in, out], [in/g, out]
        in_f, out_f = iweight.shape
        s = scales.float()
        zero_f = (8 - izeros).float() * s  # torch: w = (q - 8) * s + zero_f  ==  (q - z) * s
        pad = (-out_f) % 16
        w_int = iweight.t().contiguous()  # [out, in]
        if pad:
            w_int = torch.cat([w_int, torch.full((pad, in_f), 8, dtype=torch.int32)])
            s = torch.cat([s, torch.zeros(s.shape[0], pad)], 1)
            zero_f = torch.cat([zero_f, torch.zeros(s.shape[0], pad)], 1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w_int, inner_k_tiles)
        sz = torch.stack([s, zero_f], dim=-1).to(compute_dtype).contiguous()
        return cls(packed, sz, None if bias is None else bias.float(), in_f, out_f, group_size, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        out = out[:, : self.out_features].to(x.dtype).reshape(*shape[:-1], self.out_features)
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, compute_dtype={self.compute_dtype}")


class Int4CUDALinear(nn.Module):
    """torch's CUDA int4 kernel (tinygemm) with AWQ's weights converted exactly.

    Buffers: ``packed`` int32 (from ``_convert_weight_to_int4pack``) and ``scales_and_zeros``
    bfloat16 [in/g, out, 2] = (s, (8 - z) * s). Activations are cast to bfloat16 (the only
    dtype the kernel takes) and the output back to the input dtype.

    tinygemm is a decode kernel: its cost grows with the rows of `x` at a fraction of a dense
    GEMM's rate. From ``dense_min_rows`` rows (and at least ``in_features``: a prefill), the
    layer dequantizes its weight through the same kernel (an identity times the weight, so
    the very bfloat16 values it computes with) and runs one dense bfloat16 matmul, as AutoAWQ
    does from 1,024 rows. Decode steps (rows = batch) always use the kernel.
    """

    dense_min_rows = 1024

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, out_features: int, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_awq(cls, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None, group_size: int, bits: int = 4, inner_k_tiles: int | None = None,
                 device: str | torch.device = "cuda") -> "Int4CUDALinear":
        """`inner_k_tiles` (2, 4 or 8: k-tiles per load) defaults to the largest that divides in_features / 16."""
        if bits != 4:
            raise BenchError("torchint4 supports 4-bit AWQ weights only")
        if inner_k_tiles is None:
            inner_k_tiles = next((t for t in (8, 4, 2) if qweight.shape[0] % (16 * t) == 0), 8)
        try:
            w_uint8, sz = awq_to_tinygemm(qweight.to(device), qzeros.to(device), scales.to(device),
                                          group_size, inner_k_tiles)
        except PackingError as exc:
            raise BenchError(f"torchint4: torch's int4 CUDA kernel cannot hold this layer: {exc}") from None
        convert, _ = _int4_cuda_ops()
        packed = convert(w_uint8, inner_k_tiles)
        in_f, out_f = qweight.shape[0], w_uint8.shape[0]
        bias = None if bias is None else bias.to(device=device, dtype=torch.bfloat16)
        return cls(packed, sz.to(torch.bfloat16), bias, in_f, out_f, group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """[in, out] bfloat16: the weight exactly as the kernel computes with it."""
        _, mm = _int4_cuda_ops()
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.scales_and_zeros.device)
        return mm(eye, self.packed, self.group_size, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, mm = _int4_cuda_ops()
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if x2.shape[0] >= max(self.dense_min_rows, self.in_features):
            out = x2 @ self.dequantized_weight()
        else:
            out = mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        out = out.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


# =========================================================================== model building
def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

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
    return {"bits": qc.get("bits", qc.get("w_bit", 4)), "group_size": qc.get("group_size", qc.get("q_group_size", 128)),
            "version": str(qc.get("version", "gemm")).lower(), "method": qc.get("quant_method", "awq")}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _skeleton(cfg, dtype: torch.dtype) -> nn.Module:
    """The model from its config without random initialisation (every tensor is loaded after;
    initialising a 1B-shaped model costs ~20 s of single-threaded RNG per path)."""
    import contextlib

    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def convert_model(source: str | Path | nn.Module, path: str, device: str = "cpu", *,
                  inner_k_tiles: int = 2, compute_dtype: torch.dtype = torch.bfloat16,
                  lm_head: str = "float") -> nn.Module:
    """Build the model for inference `path` from an AutoAWQ GEMM checkpoint folder.

    `source` may also be a dense folder or a dense ``nn.Module``, for ``baseline`` only.
    The skeleton comes from config.json (``AutoModelForCausalLM.from_config``); the
    non-quantized tensors (embeddings, norms, lm_head) are loaded in the baseline dtype and
    every quantized linear (``*.qweight``) becomes the path's module. ``fast4`` on a CPU runs
    with the served output head ``lm_head`` (``serving.LM_HEADS``; the other paths keep the
    model's own head).
    """
    from transformers import AutoConfig

    if path not in PATHS:
        raise BenchError(f"unknown path {path!r}; paths: {', '.join(PATHS)}")
    device = _resolve_device(device)
    reason = available_paths(device)[path]
    if reason:
        raise BenchError(f"path {path!r} is not available on {device}: {reason}")
    dtype = torch.bfloat16 if path == "torchint4" else torch.float16 if device == "cuda" else torch.float32
    if isinstance(source, nn.Module):
        if path != "baseline":
            raise BenchError(f"path {path!r} needs an AWQ checkpoint folder, not a dense module")
        return cast_model(source, dtype).to(device).eval()
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder}: no config.json; not a model checkpoint")
    cfg = AutoConfig.from_pretrained(str(folder))
    qc = _awq_config(cfg)
    if qc is not None and (qc["method"] != "awq" or qc["bits"] != 4 or qc["version"] != "gemm"):
        raise BenchError(f"{folder}: quantization_config {qc} is not AutoAWQ GEMM 4-bit")
    if qc is None and path != "baseline":
        raise BenchError(f"path {path!r} needs an AutoAWQ GEMM checkpoint; {folder} is dense")
    if device == "cuda" and path == "fast4":  # pragma: no cover - needs a GPU
        quiet_awq()
        from awq import AutoAWQForCausalLM

        try:
            model = AutoAWQForCausalLM.from_quantized(str(folder), fuse_layers=False).model.to(device).eval()
            model.quantstudy_loader = "AutoAWQForCausalLM.from_quantized"
            return model
        except Exception as exc:  # same kernels, our loader: see _wqlinear_gemm
            fallback_reason = f"from_quantized failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})"
    else:
        fallback_reason = None
    if qc is not None:
        del cfg.quantization_config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    model = _skeleton(cfg, dtype)
    tensors = _load_tensors(folder)
    if path == "baseline":
        state = dequantize_awq_state(tensors, qc["bits"], qc["group_size"]) if qc else tensors
        if tied and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        if tied:
            model.tie_weights()
        return model.to(device).eval()
    prefixes = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    for prefix in prefixes:
        qw, qz, sc = (tensors.pop(f"{prefix}.{n}") for n in ("qweight", "qzeros", "scales"))
        bias = tensors.pop(f"{prefix}.bias", None)
        if path == "naive4":
            mod = NaiveAWQLinear(qw, qz, sc, None if bias is None else bias.to(dtype), qc["group_size"], qc["bits"])
        elif path == "torchint4":
            mod = Int4CUDALinear.from_awq(qw, qz, sc, bias, qc["group_size"], qc["bits"], device=device)
        elif device == "cuda":  # pragma: no cover - needs a GPU
            mod = _wqlinear_gemm(qw, qz, sc, bias, qc["group_size"], qc["bits"])
        else:
            mod = Int4CPULinear.from_awq(qw, qz, sc, bias, qc["group_size"], qc["bits"],
                                         inner_k_tiles=inner_k_tiles, compute_dtype=compute_dtype)
        _set_module(model, prefix, mod)
    rest = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    if tied and "lm_head.weight" not in rest:
        rest["lm_head.weight"] = rest["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(rest, strict=False)
    quant_keys = {f"{p}.{n}" for p in prefixes for n in ("qweight", "qzeros", "scales", "packed", "scales_and_zeros", "bias")}
    missing = [k for k in missing if k not in quant_keys]
    if missing or unexpected:
        raise BenchError(f"{folder}: checkpoint does not match its config (missing {missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]})")
    if tied:
        model.tie_weights()
    model = model.to(device).eval()
    if path == "fast4" and device == "cpu":
        serving.apply_served_head(model, lm_head)
    if fallback_reason:  # pragma: no cover - needs a GPU
        model.quantstudy_loader = f"AutoAWQ WQLinear_GEMM modules loaded by quantstudy; {fallback_reason}"
    return model


def _wqlinear_gemm(qweight, qzeros, scales, bias, group_size: int, bits: int):  # pragma: no cover - GPU
    """AutoAWQ's own GEMM module (its awq_ext or triton kernels) holding the packed tensors."""
    quiet_awq()
    from awq.modules.linear.gemm import WQLinear_GEMM

    in_f, out_f = qweight.shape[0], qweight.shape[1] * (32 // bits)
    mod = WQLinear_GEMM(bits, group_size, in_f, out_f, bias is not None, "cpu")
    mod.qweight.copy_(qweight)
    mod.qzeros.copy_(qzeros)
    mod.scales.copy_(scales.half())
    if bias is not None:
        mod.bias.copy_(bias.half())
    return mod


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
    return {"path": path, "tokens": int(base.shape[0]),
            "rel_rms_diff": float(diff.pow(2).mean().sqrt() / base.pow(2).mean().sqrt().clamp_min(1e-12)),
            "max_abs_diff": float(diff.abs().max()),
            "top1_agreement": float((logits.argmax(-1) == base.argmax(-1)).float().mean())}


# =========================================================================== production model
def _bench_section(bench_params: BenchmarkSection | Mapping[str, Any]) -> BenchmarkSection:
    if isinstance(bench_params, BenchmarkSection):
        return bench_params
    return BenchmarkSection.model_validate(dict(bench_params))


def production_config(bench_params: BenchmarkSection | Mapping[str, Any], num_layers: int | None = None):
    """LlamaConfig of the production-shaped model (``num_layers`` defaults to prod_bench_layers)."""
    from transformers import LlamaConfig

    p = _bench_section(bench_params)
    max_pos = max(2048, max(p.context_lengths) + p.decode_tokens + 8)
    return LlamaConfig(hidden_size=p.prod_hidden_size, intermediate_size=p.prod_intermediate_size,
                       num_hidden_layers=num_layers or p.prod_bench_layers, num_attention_heads=p.prod_num_heads,
                       num_key_value_heads=p.prod_num_kv_heads, vocab_size=p.prod_vocab_size,
                       max_position_embeddings=max_pos, tie_word_embeddings=False, use_cache=True)


def production_model(bench_params: BenchmarkSection | Mapping[str, Any], out_dir: str | Path | None = None,
                     group_size: int = 128, seed: int = 0) -> tuple[nn.Module, Path]:
    """A ~1B-shaped Llama with random weights -> (dense float32 model, AWQ GEMM folder).

    Only ``prod_bench_layers`` decoder layers are instantiated (the full vocabulary's
    embeddings and lm_head once). Every decoder linear is round-to-nearest quantized with
    AutoAWQ's arithmetic and packed with the vectorized :func:`pack_awq_gemm` (bit-identical
    to ``WQLinear_GEMM.from_linear``). The folder holds config.json (with AutoAWQ's
    ``quantization_config``) and model.safetensors (non-quantized tensors in float16, as
    AutoAWQ saves them). `out_dir` defaults to a new temporary folder.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    p = _bench_section(bench_params)
    for key, width in (("prod_hidden_size", p.prod_hidden_size), ("prod_intermediate_size", p.prod_intermediate_size)):
        if width % group_size:
            raise BenchError(f"{key}={width} is not a multiple of group_size={group_size}")
    cfg = production_config(p)
    torch.manual_seed(seed)
    dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="quantstudy-prod-"))
    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    quantized = set()
    with torch.no_grad():
        for li, layer in enumerate(dense.model.layers):
            for name, mod in layer.named_modules():
                if isinstance(mod, nn.Linear):
                    prefix = f"model.layers.{li}.{name}"
                    qw, qz, sc = rtn_quantize_linear(mod.weight, group_size)
                    state.update({f"{prefix}.qweight": qw, f"{prefix}.qzeros": qz, f"{prefix}.scales": sc})
                    if mod.bias is not None:
                        state[f"{prefix}.bias"] = mod.bias.detach().half().contiguous()
                    quantized.add(f"{prefix}.weight")
                    quantized.add(f"{prefix}.bias")
        for k, v in dense.state_dict().items():
            if k not in quantized:
                state[k] = v.detach().half().contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg_dict = cfg.to_dict()
    cfg_dict["torch_dtype"] = "float16"
    cfg_dict["quantization_config"] = {"quant_method": "awq", "zero_point": True, "group_size": group_size,
                                       "bits": 4, "version": "gemm", "modules_to_not_convert": None}
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    (folder / "quantstudy_quant.json").write_text(json.dumps({
        "method": "rtn", "bits": 4, "group_size": group_size, "zero_point": True, "version": "GEMM",
        "simulated": False, "synthetic": True, "seed": seed, "full_num_layers": p.prod_num_layers,
        "instantiated_layers": p.prod_bench_layers}, indent=2))
    return dense, folder


# =========================================================================== memory
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
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (NaiveAWQLinear, Int4CPULinear, Int4CUDALinear))
            or type(m).__name__.startswith("WQLinear")]


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
            fp16_bytes += 2 * m.in_features * m.out_features + (2 * m.out_features if getattr(m, "bias", None) is not None else 0)
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
    return {"linears": n, "quantized_bytes": q_bytes, "fp16_bytes": fp16_bytes,
            "ratio_vs_fp16": round(fp16_bytes / q_bytes, 4) if q_bytes else None}


def model_weight_bytes(model: nn.Module, full_num_layers: int | None = None) -> int:
    """In-memory weight bytes, extrapolated to `full_num_layers` decoder layers if given."""
    total = tensor_bytes(model)
    layers = _decoder_layers(model)
    if not full_num_layers or not layers:
        return total
    per_layer = tensor_bytes(layers[0])
    return total - per_layer * len(layers) + per_layer * full_num_layers


# =========================================================================== timing
def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


class _LayerTimer:
    """Accumulates wall time spent inside the decoder layers (forward hooks)."""

    def __init__(self, layers: list[nn.Module], cuda: bool):
        self.total = 0.0
        self.cuda = cuda
        self._t0 = 0.0
        self._handles = []
        for layer in layers:
            self._handles.append(layer.register_forward_pre_hook(self._pre))
            self._handles.append(layer.register_forward_hook(self._post))

    def _sync(self):
        if self.cuda:  # pragma: no cover
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.total += time.perf_counter() - self._t0

    def remove(self):
        for h in self._handles:
            h.remove()


def _sync(device: str) -> None:
    if device == "cuda":  # pragma: no cover
        torch.cuda.synchronize()


def _one_round(model: nn.Module, input_ids: torch.Tensor, decode_tokens: int, device: str,
               timer: _LayerTimer | None) -> dict[str, float]:
    """One prefill + `decode_tokens` greedy steps -> seconds (total and inside decoder layers)."""
    if timer:
        timer.total = 0.0
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    prefill = time.perf_counter() - t0
    prefill_layers = timer.total if timer else math.nan
    cache = out.cache
    if timer:
        timer.total = 0.0
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache = out.cache
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - t0
    decode_layers = timer.total if timer else math.nan
    return {"prefill_s": prefill, "prefill_layers_s": prefill_layers, "decode_s": decode, "decode_layers_s": decode_layers}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def time_model(model: nn.Module, path: str, batch_sizes: Iterable[int], context_lengths: Iterable[int],
               decode_tokens: int, warmup: int = 2, repeats: int = 5, device: str = "cpu",
               full_num_layers: int | None = None, vocab_size: int | None = None, seed: int = 0,
               progress: Any = None) -> list[dict[str, Any]]:
    """Time one model over every (batch, context) -> tidy rows (one per batch x context x scope)."""
    device = _resolve_device(device)
    layers = _decoder_layers(model)
    n_layers = len(layers)
    scale = (full_num_layers / n_layers) if (full_num_layers and n_layers) else 1.0
    # On a GPU the layer hooks synchronise twice per layer, which would slow the eager rows that
    # the graphed rows are compared with; with every layer instantiated no extrapolation needs
    # them, so the whole model is timed without hooks there (full_model = measured).
    unhooked = device == "cuda" and scale == 1.0
    timer = _LayerTimer(layers, device == "cuda") if layers and not unhooked else None
    vocab = vocab_size or model.config.vocab_size
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                for context in context_lengths:
                    ids = torch.randint(0, vocab, (batch, context), generator=gen).to(device)
                    for _ in range(warmup):
                        _one_round(model, ids, decode_tokens, device, timer)
                    raw = [_one_round(model, ids, decode_tokens, device, timer) for _ in range(repeats)]
                    if progress is not None:
                        progress.update(1)
                    for scope in SCOPES:
                        if scope != "measured" and timer is None and not (unhooked and scope == "full_model"):
                            continue
                        pre_t, dec_t = [], []
                        for r in raw:
                            if scope == "measured":
                                pre, dec = r["prefill_s"], r["decode_s"]
                            elif scope == "layers":
                                pre, dec = r["prefill_layers_s"], r["decode_layers_s"]
                            elif unhooked:
                                pre, dec = r["prefill_s"], r["decode_s"]
                            else:
                                pre = r["prefill_s"] + (scale - 1.0) * r["prefill_layers_s"]
                                dec = r["decode_s"] + (scale - 1.0) * r["decode_layers_s"]
                            pre_t.append(batch * context / pre)
                            dec_t.append(batch * decode_tokens / dec)
                        rows.append(_timing_row(path, "eager", batch, context, scope, decode_tokens, repeats,
                                                n_layers, full_num_layers or n_layers, pre_t, dec_t))
    finally:
        if timer:
            timer.remove()
    return rows


def _timing_row(path: str, mode: str, batch: int, context: int, scope: str, decode_tokens: int, repeats: int,
                timed_layers: int, model_layers: int, pre_t: list[float], dec_t: list[float]) -> dict[str, Any]:
    ps, ds = _stats(pre_t), _stats(dec_t)
    return {
        "path": path, "mode": mode, "batch": batch, "context": context, "scope": scope,
        "decode_tokens": decode_tokens, "repeats": repeats,
        "timed_layers": timed_layers, "model_layers": model_layers,
        "prefill_tok_s_median": ps["median"], "prefill_tok_s_min": ps["min"], "prefill_tok_s_max": ps["max"],
        "decode_tok_s_median": ds["median"], "decode_tok_s_min": ds["min"], "decode_tok_s_max": ds["max"],
        "prefill_tok_s_raw": pre_t, "decode_tok_s_raw": dec_t,
    }


def _graphed_round(dec, steps, ids: torch.Tensor, decode_tokens: int, device: str) -> dict[str, float]:
    """One eager prefill into the static cache + `decode_tokens` steps replayed from the graph."""
    _sync(device)
    t0 = time.perf_counter()
    token = dec.prefill(ids).argmax(-1, keepdim=True)
    _sync(device)
    prefill = time.perf_counter() - t0
    steps.start(ids.shape[1])
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        token = steps.step(token).argmax(-1, keepdim=True)
    _sync(device)
    return {"prefill_s": prefill, "decode_s": time.perf_counter() - t0}


def _graph_check(dec, steps) -> float:
    """Max |logits| difference of the last replayed step from the same step run eagerly, relative
    to the eager logits' max (the eager rerun writes the same cache entries it read)."""
    graphed = steps.logits.float().clone()
    eager = dec.decode_step(steps.token, steps.pos - 1).float()
    return float((graphed - eager).abs().max() / eager.abs().max().clamp_min(1e-12))


def time_graphed(model: nn.Module, path: str, batch_sizes: Iterable[int], context_lengths: Iterable[int],
                 decode_tokens: int, warmup: int = 2, repeats: int = 5, device: str = "cpu",
                 seed: int = 0, progress: Any = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Like :func:`time_model` in mode ``graphed`` (:mod:`quantstudy.steps.decode`): a static cache of
    context + decode_tokens positions, eager prefill, decode steps replayed from one CUDA graph
    per shape (captured before the warm-up rounds; on a CPU the same loop runs eagerly).

    Only scope ``measured``: layer hooks would sync inside the graph's kernels (impossible in a
    replay), and the production shape times every layer anyway. With a `notes` list, a shape
    that fails (capture, memory) is noted there and skipped; without one it raises. Each row's
    ``graph_check_rel_diff`` compares the last replayed step with the same step run eagerly.
    """
    from quantstudy.steps.decode import Decoder, GraphedDecoder

    device = _resolve_device(device)
    n_layers = len(_decoder_layers(model))
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    for batch in batch_sizes:
        for context in context_lengths:
            ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(device)
            try:
                dec = Decoder(model, batch, context + decode_tokens)
                steps = GraphedDecoder(dec)
                for _ in range(1 + warmup):  # the first round captures the graph
                    _graphed_round(dec, steps, ids, decode_tokens, device)
                raw = [_graphed_round(dec, steps, ids, decode_tokens, device) for _ in range(repeats)]
                check = _graph_check(dec, steps)
            except Exception as exc:
                if notes is None or isinstance(exc, (KeyboardInterrupt, MemoryError)):
                    raise
                notes.append(f"{path} graphed batch {batch} context {context} failed on {device} and was skipped: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
                continue
            finally:
                dec = steps = None
                _memory_now(device)
                if progress is not None:
                    progress.update(1)
            rows.append({**_timing_row(path, "graphed", batch, context, "measured", decode_tokens, repeats,
                                       n_layers, n_layers, [batch * context / r["prefill_s"] for r in raw],
                                       [batch * decode_tokens / r["decode_s"] for r in raw]),
                         "graph_check_rel_diff": check})
            if notes is not None and not check < 1e-2:
                notes.append(f"{path} graphed batch {batch} context {context}: the replayed step's logits differ "
                             f"from the eager step's by {check:.3g} of their range: check the captured graph")
    return rows


# =========================================================================== trap detector
def speedup_table(df, baseline: str = "baseline"):
    """Speed-up of every path over `baseline` for each shape (batch, context[, scope][, mode]):
    a graphed path is compared with the graphed baseline, an eager one with the eager baseline.

    ``*_speedup`` = path median tokens/s / baseline median tokens/s. The spread
    ``*_speedup_low``/``_high`` = path min / baseline max and path max / baseline min: the
    widest ratio the repeats allow (no overlap of the two ranges means a clear difference).
    """
    import pandas as pd

    keys = [k for k in ("mode", "batch", "context", "scope") if k in df.columns]
    base = df[df["path"] == baseline]
    if base.empty:
        raise BenchError(f"no {baseline!r} rows to compare against; paths present: {sorted(df['path'].unique())}")
    merged = df.merge(base, on=keys, suffixes=("", "_base"))
    out = merged[["path", *keys]].copy()
    for kind in ("prefill", "decode"):
        col = f"{kind}_tok_s"
        out[f"{kind}_speedup"] = merged[f"{col}_median"] / merged[f"{col}_median_base"]
        out[f"{kind}_speedup_low"] = merged[f"{col}_min"] / merged[f"{col}_max_base"]
        out[f"{kind}_speedup_high"] = merged[f"{col}_max"] / merged[f"{col}_min_base"]
    return pd.DataFrame(out).reset_index(drop=True)


def harness_table(df, path: str = "baseline"):
    """What the harness costs: `path`'s graphed tokens/s over its eager tokens/s per shape
    (scope ``measured``; ``*_low``/``_high`` as in :func:`speedup_table`). Empty without both modes."""
    import pandas as pd

    if "mode" not in df.columns or not {"eager", "graphed"} <= set(df["mode"]):
        return pd.DataFrame()
    t = df[(df["path"] == path) & (df["scope"] == "measured")]
    merged = t[t["mode"] == "graphed"].merge(t[t["mode"] == "eager"], on=["path", "batch", "context"],
                                             suffixes=("", "_eager"))
    out = merged[["path", "batch", "context"]].copy()
    for kind in ("prefill", "decode"):
        col = f"{kind}_tok_s"
        out[f"{kind}_tok_s_eager"] = merged[f"{col}_median_eager"]
        out[f"{kind}_tok_s_graphed"] = merged[f"{col}_median"]
        out[f"{kind}_graphed_over_eager"] = merged[f"{col}_median"] / merged[f"{col}_median_eager"]
        out[f"{kind}_graphed_over_eager_low"] = merged[f"{col}_min"] / merged[f"{col}_max_eager"]
        out[f"{kind}_graphed_over_eager_high"] = merged[f"{col}_max"] / merged[f"{col}_min_eager"]
    return pd.DataFrame(out).reset_index(drop=True)


def flag_traps(table, baseline: str = "baseline", threshold: float = 1.0) -> list[dict[str, Any]]:
    """Rows where a quantized path is slower than the baseline (median speed-up < threshold).

    Each flag names the path, shape, phase and a one-line explanation; ``clear`` says whether
    even the best repeat of the path is slower than the worst repeat of the baseline.
    """
    flags: list[dict[str, Any]] = []
    keys = [k for k in ("mode", "batch", "context", "scope") if k in table.columns]
    for _, row in table.iterrows():
        if row["path"] == baseline:
            continue
        for kind in ("prefill", "decode"):
            sp = float(row[f"{kind}_speedup"])
            if not sp < threshold:
                continue
            high = float(row.get(f"{kind}_speedup_high", sp))
            clear = high < threshold
            shape = ", ".join(f"{k}={row[k]}" for k in keys)
            why = ("dequantizes every weight on every call: pays 4-bit unpacking and still a dense matmul"
                   if row["path"] == "naive4" else "the int4 kernel loses to the dense matmul at this shape")
            flags.append({
                "path": row["path"], **{k: row[k] for k in keys}, "phase": kind, "speedup": sp, "clear": clear,
                "explanation": (f"{row['path']} {kind} is {sp:.2f}x the {baseline} speed ({shape}); "
                                f"{'clearly slower' if clear else 'slower, within run-to-run noise'}: {why}"),
            })
    return flags


# =========================================================================== fleet & cost
def fleet_cost(weight_bytes: int | float, decode_tokens_per_s: float,
               bench_params: BenchmarkSection | Mapping[str, Any], label: str, batch_size: int = 1) -> dict[str, Any]:
    """Devices needed at peak and cost per 1000 conversations, for one inference path.

    Model (one replica per device, serving `batch_size` conversations at once, throughput
    `decode_tokens_per_s` measured for that batch on ``hardware_label``):

    * required throughput R = peak_conversations_per_s * tokens_per_conversation (tokens/s);
    * throughput-bound devices D_t = R / decode_tokens_per_s;
    * in-flight conversations (Little's law) C = D_t * batch_size (each stream runs at
      decode_tokens_per_s / batch_size, a conversation lasts tokens / that rate);
    * KV per conversation = kv_bytes_per_token * tokens_per_conversation (held in full);
      conversations one device can hold = floor((device_memory - weight_bytes) / KV per conv.);
    * memory-bound devices D_m = C / that capacity;
    * devices at peak = ceil(max(D_t, D_m)); cost per 1000 conversations =
      devices * price_per_device_hour / (peak_conversations_per_s * 3600) * 1000
      (the fleet is sized for, and billed at, the peak).

    GB means 10^9 bytes. Raises ValueError naming the bad input.
    """
    p = _bench_section(bench_params)

    def _pos(name: str, value: Any, integer: bool = False) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a positive number; found {value!r}") from None
        if not math.isfinite(v) or v <= 0 or (integer and v != int(v)):
            kind = "a positive integer" if integer else "a positive finite number"
            raise ValueError(f"{name}: expected {kind}; found {value!r}")
        return v

    wb = _pos("weight_bytes", weight_bytes)
    tps = _pos("decode_tokens_per_s", decode_tokens_per_s)
    batch = int(_pos("batch_size", batch_size, integer=True))
    mem = _pos("device_memory_gb", p.device_memory_gb) * 1e9
    price = _pos("price_per_device_hour", p.price_per_device_hour)
    peak = _pos("peak_conversations_per_s", p.peak_conversations_per_s)
    tokens = _pos("tokens_per_conversation", p.tokens_per_conversation, integer=True)
    kv_tok = _pos("kv_bytes_per_token", p.kv_bytes_per_token, integer=True)
    if wb >= mem:
        raise ValueError(f"device_memory_gb: {p.device_memory_gb} GB cannot hold the weights of {label!r} "
                         f"({wb / 1e9:.2f} GB)")
    kv_conv = kv_tok * tokens
    capacity = math.floor((mem - wb) / kv_conv)
    if capacity < 1:
        raise ValueError(f"kv_bytes_per_token: {kv_tok:.0f} B x tokens_per_conversation {tokens:.0f} = "
                         f"{kv_conv / 1e9:.2f} GB of KV per conversation does not fit beside the weights "
                         f"({(mem - wb) / 1e9:.2f} GB free per device)")
    required = peak * tokens
    d_t = required / tps
    concurrent = d_t * batch
    d_m = concurrent / capacity
    devices = math.ceil(max(d_t, d_m) - 1e-9)
    devices = max(devices, 1)
    cost_1000 = devices * price / (peak * 3600) * 1000
    return {
        "label": label, "hardware": p.hardware_label, "weight_gb": wb / 1e9, "batch_size": batch,
        "decode_tokens_per_s_per_device": tps, "required_tokens_per_s": required,
        "kv_gb_per_conversation": kv_conv / 1e9, "conversations_per_device_by_memory": capacity,
        "concurrent_conversations": concurrent, "devices_throughput_bound": d_t, "devices_memory_bound": d_m,
        "bound_by": "memory" if d_m > d_t else "throughput", "devices_at_peak": devices,
        "cost_per_hour": devices * price, "cost_per_1000_conversations": cost_1000,
    }


# =========================================================================== targets
def _fast_b1_speedup(speedups, path: str = "fast4", mode: str = "eager") -> tuple[float | None, str]:
    if speedups is None:
        return None, "no measurement"
    if isinstance(speedups, (int, float)):
        return float(speedups), "given"
    t = speedups[(speedups["path"] == path) & (speedups["batch"] == 1)]
    if "mode" in t.columns and (t["mode"] == mode).any():
        t = t[t["mode"] == mode]
    if "scope" in t.columns and not t.empty:
        t = t[t["scope"] == ("full_model" if (t["scope"] == "full_model").any() else "measured")]
    if t.empty:
        return None, f"no {path} batch-1 row"
    row = t.sort_values("context").iloc[0]
    where = f"batch 1, context {row['context']}" + (f", scope {row['scope']}" if "scope" in t.columns else "")
    return float(row["decode_speedup"]), where + (f", mode {row['mode']}" if "mode" in t.columns else "")


def _graphed_target(speedups) -> dict[str, Any] | None:
    """The GPU target: graphed 4-bit decode at batch 1 vs graphed float16 (best 4-bit path)."""
    if speedups is None or isinstance(speedups, (int, float)) or "mode" not in speedups.columns:
        return None
    found = {path: _fast_b1_speedup(speedups, path, "graphed") for path in ("fast4", "torchint4")}
    found = {k: v for k, v in found.items() if v[0] is not None and "mode graphed" in v[1]}
    if not found:
        return None
    best = max(found, key=lambda k: found[k][0])
    sp, where = found[best]
    return {"measured": sp, "target": TARGET_GRAPHED_DECODE_SPEEDUP, "met": sp >= TARGET_GRAPHED_DECODE_SPEEDUP,
            "where": f"{best}, {where}", "by_path": {k: v[0] for k, v in found.items()}}


def targets(speedups, bytes_ratio: float | None, device: str = "cpu", goals: Any = None) -> dict[str, dict[str, Any]]:
    """The two benchmark targets: fast 4-bit decode speed-up at batch 1 and quantized-linear
    bytes vs float16, with the goals of the params' ``targets`` section (``goals``; defaults
    2.5x and 3.8x). `speedups` is a :func:`speedup_table` (batch-1 fast4 row, smallest
    context, ``full_model`` scope when present) or a number."""
    goal_speed = getattr(goals, "fast_decode_speedup", TARGET_FAST_DECODE_SPEEDUP)
    goal_bytes = getattr(goals, "quantized_bytes_ratio", TARGET_BYTES_RATIO)
    sp, where = _fast_b1_speedup(speedups)
    layers_only = None
    if not isinstance(speedups, (int, float, type(None))) and "scope" in speedups.columns:
        t = speedups[(speedups["path"] == "fast4") & (speedups["batch"] == 1) & (speedups["scope"] == "layers")]
        layers_only = float(t.sort_values("context")["decode_speedup"].iloc[0]) if not t.empty else None
    speed = {"measured": sp, "target": goal_speed,
             "met": sp is not None and sp >= goal_speed, "where": where, "layers_only": layers_only}
    if device != "cpu":  # the speed-up target is the CPU int4 kernel's; on a GPU report the ratio only
        speed.update(target=None, met=None, where=f"{where}; on {device} (fast4 = AutoAWQ's kernels vs float16): "
                     f"the {goal_speed}x target applies to the CPU path, so none is set here")
    out = {
        "cpu_fast_decode_speedup_1b_b1": speed,
        "quantized_linear_bytes_vs_fp16": {"measured": bytes_ratio, "target": goal_bytes,
                                           "met": bytes_ratio is not None and bytes_ratio >= goal_bytes,
                                           "where": "AutoAWQ GEMM layout (qweight + qzeros + fp16 scales)"},
    }
    graphed = _graphed_target(speedups) if device == "cuda" else None
    if graphed:
        out["gpu_graphed_4bit_decode_speedup_b1"] = graphed
    return out


def _with_head(found: dict[str, dict[str, Any]], lm_head: str, device: str) -> dict[str, dict[str, Any]]:
    """Say which output head the fast4 speed-up was measured with (the served one on a CPU)."""
    speed = found.get("cpu_fast_decode_speedup_1b_b1")
    if speed is not None and device == "cpu":
        speed["where"] = f"{speed['where']}, lm_head {lm_head}"
    return found


# =========================================================================== driver
def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover - not on Linux/macOS
        return None


def _memory_now(device: str) -> None:
    gc.collect()
    if device == "cuda":  # pragma: no cover
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _bench_path(path: str, folder: Path, baseline, p: BenchmarkSection, device: str, full_num_layers: int | None,
                seed: int, inner_k_tiles: int, bar, lm_head: str = "float") -> dict[str, Any]:
    """Build one path's model, score the probe prompt, time it, account its memory, free it."""
    _memory_now(device)
    rss_before = PeakRSS.rss_bytes()
    with PeakRSS() as build_mem:
        src = baseline if (path == "baseline" and baseline is not None) else folder
        model = convert_model(src, path, device, inner_k_tiles=inner_k_tiles, lm_head=lm_head)
    gc.collect()
    rss_built = PeakRSS.rss_bytes()
    logits = probe_logits(model, device, seed=seed)
    timings, notes = [], []
    with PeakRSS() as run_mem:
        if "eager" in p.modes:
            timings += time_model(model, path, p.batch_sizes, p.context_lengths, p.decode_tokens, p.warmup,
                                  p.repeats, device, full_num_layers=full_num_layers, seed=seed, progress=bar)
        if "graphed" in p.modes:  # a shape that fails costs its graphed row only (noted), not the run
            timings += time_graphed(model, path, p.batch_sizes, p.context_lengths, p.decode_tokens, p.warmup,
                                    p.repeats, device, seed=seed, progress=bar, notes=notes)
    qlb = quantized_linear_bytes(model)
    if path == "baseline":
        disk = disk_bytes(baseline) if isinstance(baseline, (str, Path)) else None
    else:
        disk = disk_bytes(folder)
    memory = {
        "path": path, "lm_head": getattr(model, "quantstudy_lm_head", "float"), "weight_bytes_in_memory": tensor_bytes(model),
        "weight_bytes_full_model": model_weight_bytes(model, full_num_layers),
        "weight_bytes_on_disk": disk,
        "quantized_linear_bytes": qlb["quantized_bytes"] if qlb["linears"] else None,
        "quantized_linear_ratio_vs_fp16": qlb["ratio_vs_fp16"],
        # process RSS: before building, peak while building (skeleton + checkpoint tensors),
        # after building, and peak while timing (the inference footprint: weights, activations, KV)
        "rss_before_mb": round(rss_before / 2**20, 1), "peak_rss_build_mb": build_mem.peak_mb,
        "rss_built_mb": round(rss_built / 2**20, 1), "peak_rss_run_mb": run_mem.peak_mb,
        "peak_rss_run_delta_mb": round((run_mem.peak - rss_before) / 2**20, 1),
        "cuda_max_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                  if device == "cuda" else None),
    }
    loader = getattr(model, "quantstudy_loader", "quantstudy.steps.benchmark.convert_model")
    del model
    _memory_now(device)
    return {"timings": timings, "memory": memory, "logits": logits, "loader": loader, "notes": notes}


def run_benchmark(checkpoint_folder: str | Path, bench_params: BenchmarkSection | Mapping[str, Any],
                  device: str = "cpu", progress: bool = True, *, baseline: str | Path | nn.Module | None = None,
                  full_num_layers: int | None = None, seed: int = 0, inner_k_tiles: int = 2,
                  threads: int | None = None, lm_head: str = "float") -> dict[str, Any]:
    """Benchmark every requested path of one AWQ checkpoint; returns a dict of tables.

    ``lm_head`` is the served output head of ``fast4`` on a CPU (``serve.lm_head``: the
    configuration step 03 scores); the baseline keeps its own float head.

    ``baseline`` (a dense folder or module) replaces the dequantized checkpoint as the
    baseline model; ``full_num_layers`` extrapolates the ``full_model`` scope (see module
    docstring). ``threads`` sets torch's intra-op threads for the run (restored afterwards);
    on a machine shared with other busy processes, fewer threads than cores avoids the
    OpenMP oversubscription that makes every small op wait. Paths are built, timed and freed one at a time. An unavailable optional path is
    skipped with a note; an unavailable ``baseline`` raises :class:`BenchError`.

    Every built path also scores one fixed random prompt; ``agreement`` compares its logits
    with the dequantized checkpoint's (``rel_rms_diff``: the kernel alone; a fast kernel that
    is wrong is worse than a slow one) and with the timed baseline's
    (``rel_rms_diff_vs_baseline``: plus the quantization error when ``baseline`` is the
    original model).

    Keys: timings (tidy DataFrame), memory (DataFrame per path), speedups, traps, agreement, fleet,
    bytes_ratio, targets, notes, env.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    p = _bench_section(bench_params)
    device = _resolve_device(device)
    folder = Path(checkpoint_folder)
    avail = available_paths(device)
    ok = [k for k, v in avail.items() if v is None]
    notes: list[str] = []
    requested = list(dict.fromkeys(p.paths))
    if "baseline" not in requested:
        notes.append("baseline added: speed-ups need it")
    requested = ["baseline", *(q for q in requested if q != "baseline")]  # first: the others compare to it
    if avail["baseline"] is not None:
        raise BenchError(f"required path 'baseline' is unavailable on {device}: {avail['baseline']}; "
                         f"available paths: {', '.join(ok) or 'none'}")
    load = _load_average()
    cores = os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        notes.append(f"machine busy before timing (1-min load average {load:.2f} on {cores} cores): other "
                     "processes compete for the cores and memory bandwidth, so absolute tokens/s are low and noisy; "
                     "ratios between paths are more robust but still affected")
    if lm_head != "float" and "fast4" in requested and device == "cpu":
        notes.append(f"fast4 serves its output head as {lm_head} (serve.lm_head; in a study, step 03 scores that "
                     "configuration as its own row)")
    paths = []
    for path in requested:
        if avail.get(path):
            notes.append(f"{path} skipped: {avail[path]}")
        else:
            paths.append(path)
    n_shapes = len(p.batch_sizes) * len(p.context_lengths) * len(p.modes)
    if "graphed" in p.modes and device == "cpu":
        notes.append("graphed mode on cpu: the static-cache loop of quantstudy.steps.decode runs without CUDA graphs "
                     "(a CPU has none), so it measures the loop, not graph replay")
    prev_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise BenchError(f"threads: expected a positive count; found {threads}")
        torch.set_num_threads(threads)
    bar = tqdm(total=len(paths) * n_shapes, desc="benchmark", disable=not progress, leave=False)
    rows: list[dict[str, Any]] = []
    mem_rows: list[dict[str, Any]] = []
    agree_rows: list[dict[str, Any]] = []
    base_logits = ref_logits = None
    if baseline is not None and "baseline" in paths:
        # the kernels' reference is the dequantized checkpoint (the very weights they hold); a
        # separate baseline (the original model) adds the quantization error on top
        ref_model = convert_model(folder, "baseline", device)
        ref_logits = probe_logits(ref_model, device, seed=seed)
        del ref_model
        _memory_now(device)
    try:
        for path in paths:
            bar.set_postfix_str(path)
            try:
                measured = _bench_path(path, folder, baseline, p, device, full_num_layers, seed, inner_k_tiles, bar,
                                       lm_head)
            except Exception as exc:
                if path == "baseline" or isinstance(exc, (KeyboardInterrupt, MemoryError)):
                    raise
                # an optional quantized path that breaks (a kernel missing a shape, say) is
                # reported and skipped: the other paths' numbers are not lost
                notes.append(f"{path} failed on {device} and was skipped: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
                _memory_now(device)
                continue
            rows += measured["timings"]
            notes += measured["notes"]
            mem_rows.append(measured["memory"])
            logits = measured.pop("logits")
            if path == "baseline":
                base_logits = logits
                ref_logits = ref_logits if ref_logits is not None else logits
            agree_rows.append({**agreement(path, logits, ref_logits), "loader": measured["loader"],
                               "rel_rms_diff_vs_baseline": agreement(path, logits, base_logits)["rel_rms_diff"]})
    finally:
        bar.close()
        threads_used = torch.get_num_threads()
        torch.set_num_threads(prev_threads)
    timings = pd.DataFrame(rows)
    memory = pd.DataFrame(mem_rows)
    speedups = speedup_table(timings)
    traps = flag_traps(speedups)
    harness = harness_table(timings)
    awq_ratio = quantized_linear_bytes(_load_tensors(folder))["ratio_vs_fp16"]
    fleet_rows = []
    # A server decodes as the graphed mode does (static cache, on a GPU a captured step), so the
    # fleet is sized from the graphed rows when they exist; HF eager generation is the harness.
    fleet_mode = "graphed" if (timings["mode"] == "graphed").any() else "eager"
    rows = timings[timings["mode"] == fleet_mode]
    scope = "full_model" if "full_model" in set(rows["scope"]) else "measured"
    ctx = min(p.context_lengths)
    for _, r in rows[(rows["scope"] == scope) & (rows["context"] == ctx)].iterrows():
        wb = memory.loc[memory["path"] == r["path"], "weight_bytes_full_model"].iloc[0]
        try:
            fleet_rows.append({"path": r["path"], "mode": fleet_mode, "context": ctx,
                               **fleet_cost(wb, r["decode_tok_s_median"], p, r["path"], int(r["batch"]))})
        except ValueError as exc:
            notes.append(f"fleet for {r['path']} batch {r['batch']}: {exc}")
    return {
        "timings": timings, "memory": memory, "speedups": speedups, "traps": traps,
        "agreement": pd.DataFrame(agree_rows), "harness": harness,
        "fleet": pd.DataFrame(fleet_rows), "bytes_ratio": awq_ratio,
        "targets": _with_head(targets(speedups, awq_ratio, device), lm_head, device), "notes": notes,
        "env": {"device": device, "hardware_label": p.hardware_label, "torch": torch.__version__,
                "threads": threads_used, "cpu": platform.processor() or platform.machine(),
                "load_average_before": load, "load_average_after": _load_average(),
                "paths_available": avail, "checkpoint": str(folder), "full_num_layers": full_num_layers,
                "lm_head": lm_head,
                "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
    }


def production_benchmark(bench_params: BenchmarkSection | Mapping[str, Any], device: str = "cpu",
                         progress: bool = True, out_dir: str | Path | None = None, seed: int = 0,
                         threads: int | None = None, lm_head: str = "float") -> dict[str, Any]:
    """:func:`production_model` + :func:`run_benchmark`, extrapolated to ``prod_num_layers``.

    The baseline is the dequantized checkpoint (same shapes and dtype as the random dense
    model, hence the same speed and memory); the dense model itself is freed before timing.
    """
    p = _bench_section(bench_params)
    if p.production_paths is not None:  # e.g. without naive4, whose trap the study's own model already shows
        p = p.model_copy(update={"paths": p.production_paths})
    dense, folder = production_model(p, out_dir=out_dir, seed=seed)
    del dense
    gc.collect()
    result = run_benchmark(folder, p, device, progress, full_num_layers=p.prod_num_layers, seed=seed, threads=threads,
                           lm_head=lm_head)
    result["env"]["production_folder"] = str(folder)
    return result


# --------------------------------------------------------------------------- the step
def pick_checkpoint(quantize_dir: str | Path) -> Path:
    """The packed 4-bit checkpoint from step 02 that a server would run (``serving.served_checkpoint``;
    step 03 scores the same one with the served head)."""
    from quantstudy.paths import resolve

    folder = resolve(quantize_dir)
    metrics = folder / "metrics.json"
    recs = contracts.read("02_quantize", folder)["checkpoints"]
    try:
        return folder / "checkpoints" / serving.served_checkpoint(recs)["name"]
    except serving.ServingError as exc:
        raise BenchError(f"{metrics}: {exc}") from None


def speed_table(result: dict[str, Any], scope: str = "full_model"):
    sp = result["speedups"]
    cols = ["path", "batch", "context", "decode_speedup", "decode_speedup_low", "decode_speedup_high",
            "prefill_speedup", "prefill_speedup_low", "prefill_speedup_high"]
    t = result["timings"]
    keys = ["path", *(["mode"] if "mode" in t.columns and "mode" in sp.columns else []), "batch", "context"]
    t = t[t["scope"] == scope][[*keys, "decode_tok_s_median", "decode_tok_s_min", "decode_tok_s_max",
                                "prefill_tok_s_median"]]
    cols = [*keys, *(c for c in cols if c not in keys)]
    return sp[sp["scope"] == scope][cols].merge(t, on=keys).round(3)


def plot_decode_scaling(result: dict[str, Any], title: str = ""):
    """Decode time per token (ms, median of repeats) against context (at the smallest batch) and
    against batch (at the smallest context), one line per path x mode; scope ``measured``."""
    import matplotlib.pyplot as plt

    t = result["timings"]
    t = t[t["scope"] == "measured"].assign(ms_per_step=lambda d: 1e3 * d["batch"] / d["decode_tok_s_median"])
    if "mode" not in t.columns:
        t = t.assign(mode="eager")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = (("context", "batch", "prompt context (tokens)"), ("batch", "context", "batch size (sequences)"))
    for ax, (x, fixed, xlabel) in zip(axes, panels):
        at = t[fixed].min()
        for (path, mode), g in t[t[fixed] == at].groupby(["path", "mode"], sort=False):
            g = g.sort_values(x)
            ax.plot(g[x], g["ms_per_step"], marker="o", ls="-" if mode == "eager" else "--", label=f"{path}, {mode}")
        ax.set_xscale("log", base=2)
        ax.set(xlabel=xlabel, ylabel="decode ms per step (one token per sequence)",
               title=f"decode step time vs {x} ({fixed} {at})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    env = result.get("env") or {}
    fig.suptitle(title or f"Decode scaling on {env.get('hardware_label', 'this hardware')}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_speedups(results: dict[str, dict[str, Any]], hardware: str):
    """Decode and prefill speed-up over the baseline per path, with the spread of repeats;
    anything left of 1.0 is the trap: a quantized path slower than the baseline."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 + 0.45 * sum(
        len(r["speedups"][(r["speedups"]["scope"] == "full_model") & (r["speedups"]["path"] != "baseline")])
        for r in results.values()) + 1.2), squeeze=False)
    for ax, phase in zip(axes[0], ("decode", "prefill")):
        labels, i = [], 0
        for model_name, r in results.items():
            sp = r["speedups"]
            sp = sp[(sp["scope"] == "full_model") & (sp["path"] != "baseline")]
            for _, row in sp.iterrows():
                v, lo, hi = row[f"{phase}_speedup"], row[f"{phase}_speedup_low"], row[f"{phase}_speedup_high"]
                color = "#d62728" if hi < 1.0 else ("#ff7f0e" if v < 1.0 else "#2ca02c")
                ax.barh(i, v, color=color, alpha=0.85)
                ax.errorbar(v, i, xerr=[[v - lo], [hi - v]], fmt="none", color="black", capsize=3)
                labels.append(f"{model_name}: {row['path']} b{row['batch']} ctx{row['context']}")
                i += 1
        ax.axvline(1.0, color="black", ls="--", lw=1, label="baseline speed")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set(title=f"{phase} speed-up over the float baseline", xlabel="x baseline tokens/s (bars: range of repeats)")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Inference paths on {hardware}: red = slower than baseline (the trap), green = faster", fontsize=10)
    fig.tight_layout()
    return fig


def plot_memory(results: dict[str, dict[str, Any]]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        mem = r["memory"]
        ax.bar(mem["path"], mem["weight_bytes_full_model"] / 1e6, color=["#7f7f7f", "#ff7f0e", "#2ca02c"][: len(mem)])
        for x, v in zip(mem["path"], mem["weight_bytes_full_model"] / 1e6):
            ax.text(x, v, f"{v:,.1f}", ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{name}: weight memory per path", ylabel="MB (10^6 bytes), whole model")
    fig.tight_layout()
    return fig


def agreement_table(results: dict[str, dict[str, Any]]):
    """Every path's logits against its baseline's, per model (see :func:`agreement`)."""
    import pandas as pd

    frames = [r["agreement"].assign(model=name) for name, r in results.items() if "agreement" in r]
    if not frames:
        return pd.DataFrame()
    cols = ["model", "path", "rel_rms_diff", "max_abs_diff", "top1_agreement", "rel_rms_diff_vs_baseline", "loader"]
    table = pd.concat(frames, ignore_index=True)
    return table[[c for c in cols if c in table.columns]].round(5)


def fleet_table(result: dict[str, Any]):
    cols = ["path", "hardware", "weight_gb", "decode_tokens_per_s_per_device", "conversations_per_device_by_memory",
            "devices_at_peak", "bound_by", "cost_per_1000_conversations"]
    f = result["fleet"]
    return f[[c for c in cols if c in f.columns]].round(4)


def write_metrics(output_dir: str | Path, results: dict[str, dict[str, Any]], wall_s: float, goals: Any = None) -> dict:
    """metrics.json of step 04; ``goals`` (the params' targets section) re-judges the targets."""
    import json

    if goals is not None:
        for r in results.values():
            env = r.get("env") or {}
            r["targets"] = _with_head(targets(r["speedups"], r["bytes_ratio"], env.get("device", "cpu"), goals),
                                      env.get("lm_head", "float"), env.get("device", "cpu"))

    def clean(r: dict) -> dict:
        return {"speedups": json.loads(r["speedups"].to_json(orient="records")),
                "timings": json.loads(r["timings"].drop(columns=[c for c in r["timings"].columns if c.endswith("_raw")])
                                      .to_json(orient="records")),
                "memory": json.loads(r["memory"].to_json(orient="records")),
                "agreement": json.loads(r["agreement"].to_json(orient="records")) if "agreement" in r else [],
                "harness": json.loads(r["harness"].to_json(orient="records")) if len(r.get("harness", [])) else [],
                "fleet": json.loads(r["fleet"].to_json(orient="records")),
                "traps": r["traps"], "targets": r["targets"], "bytes_ratio": r["bytes_ratio"],
                "notes": r["notes"], "env": r["env"]}

    metrics = {name: clean(r) for name, r in results.items()}
    prod = results.get("production")
    metrics["targets"] = prod["targets"] if prod else next(iter(results.values()))["targets"]
    metrics["traps"] = [{"model": n, **t} for n, r in results.items() for t in r["traps"]]
    metrics["wall_s"] = round(wall_s, 1)
    return contracts.write("04_benchmark", output_dir, metrics, default=str)


def benchmark_checkpoint(params, checkpoint: str | Path | None, out_dir: str | Path, baseline: str | Path | None = None,
                         production: bool = True, progress: bool = True) -> dict:
    """Step 04 outside papermill (``quantstudy bench``): a checkpoint (``demo``) and/or the
    production-shaped model on ``params.study.device``; writes metrics.json and the two
    figures to `out_dir` and returns the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(params.study.device)
    if checkpoint is None and not production:
        raise BenchError("nothing to benchmark: give a checkpoint, or leave the production-shaped model on")
    results = {}
    head = params.serve.lm_head
    if checkpoint is not None:
        results["demo"] = run_benchmark(checkpoint, params.benchmark, device, progress, baseline=baseline, lm_head=head)
    if production:
        results["production"] = production_benchmark(params.benchmark, device, progress, lm_head=head)
    metrics = write_metrics(out_dir, results, time.time() - started, goals=getattr(params, "targets", None))
    label = params.benchmark.hardware_label
    plot_speedups(results, label).savefig(out_dir / "speedups.png", dpi=110)
    plot_memory(results).savefig(out_dir / "memory.png", dpi=110)
    if "graphed" in params.benchmark.modes:
        for name, r in results.items():
            plot_decode_scaling(r, f"{name}: decode scaling on {label}").savefig(out_dir / f"decode_scaling_{name}.png",
                                                                                 dpi=110)
    return metrics
