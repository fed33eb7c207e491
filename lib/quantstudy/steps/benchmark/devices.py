"""Where the benchmark runs: the device, the inference paths available there (and why not),
the dtype each path computes in; the step's error type and how a failure is noted."""

from __future__ import annotations

import torch

from quantstudy.awqformat.autoawq import quiet_awq

PATHS = ("baseline", "naive4", "fast4", "torchint4")
QUANTIZED_PATHS = ("naive4", "fast4", "torchint4")
MODES = ("eager", "graphed")


class BenchError(ValueError):
    """A benchmark request that cannot run here; the message says what to change."""


def short_error(exc: BaseException) -> str:
    """``Class: first line`` of an exception, for a note that a path or shape was skipped."""
    return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else must be one of those."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device: expected 'cpu', 'cuda' or 'auto'; found {device!r}")
    return device


def path_dtype(path: str, device: str) -> torch.dtype:
    """The dtype of a path's non-quantized modules: bfloat16 for torchint4 (its kernel's only
    activation dtype), else float16 on a GPU and float32 on a CPU."""
    return torch.bfloat16 if path == "torchint4" else torch.float16 if device == "cuda" else torch.float32


def _int4_cpu_reason() -> str | None:
    ops = torch.ops.aten
    for op in ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu"):
        if not hasattr(ops, op):
            return f"torch {torch.__version__} has no aten.{op} (needs torch >= 2.6)"
    try:  # smoke test: the op may exist but lack a kernel for this CPU build
        packed = ops._convert_weight_to_int4pack_for_cpu(torch.zeros(16, 128, dtype=torch.int32), 2)
        ops._weight_int4pack_mm_for_cpu(
            torch.zeros(1, 128, dtype=torch.bfloat16), packed, 128, torch.ones(1, 16, 2, dtype=torch.bfloat16)
        )
    except Exception as exc:  # pragma: no cover - depends on the torch build
        return f"torch int4 CPU kernel fails here: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}"
    return None


def _autoawq_gpu_reason() -> str | None:  # pragma: no cover - needs a GPU
    try:
        quiet_awq()
        from awq.modules.linear.gemm import TRITON_AVAILABLE, awq_ext  # lazy: awq costs seconds to import
    except Exception as exc:
        return f"autoawq GEMM module not importable ({exc.__class__.__name__})"
    return (
        None
        if (awq_ext is not None or TRITON_AVAILABLE)
        else ("AutoAWQ GPU kernels missing: install autoawq-kernels (awq_ext) or triton")
    )


def _int4_cuda_reason(device: str) -> str | None:
    if device != "cuda":
        return "torch's int4 CUDA kernel (aten._weight_int4pack_mm) needs a CUDA GPU; fast4 is the CPU int4 kernel"
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):  # pragma: no cover - needs a GPU
        return f"torch {torch.__version__} has no aten._weight_int4pack_mm"
    if torch.cuda.get_device_capability() < (8, 0):  # pragma: no cover - needs a GPU
        return "torch's int4 CUDA kernel needs compute capability 8.0 or newer (Ampere+)"
    return None  # pragma: no cover - needs a GPU


def available_paths(device: str = "cpu") -> dict[str, str | None]:
    """{path: None if it runs on `device`, else the reason it does not}."""
    device = resolve_device(device)
    out: dict[str, str | None] = {}
    if device == "cuda" and not torch.cuda.is_available():
        reason = "device is 'cuda' but no CUDA GPU is visible; use device 'cpu'"
        return {p: reason for p in PATHS}
    out["baseline"] = None
    try:
        quiet_awq()
        from awq.utils.packing_utils import dequantize_gemm  # noqa: F401  (lazy: awq costs seconds to import)

        out["naive4"] = None
    except Exception as exc:  # pragma: no cover - autoawq is a dependency
        out["naive4"] = f"autoawq is not importable ({exc.__class__.__name__}); install autoawq"
    out["fast4"] = _int4_cpu_reason() if device == "cpu" else _autoawq_gpu_reason()
    out["torchint4"] = _int4_cuda_reason(device)
    return out
