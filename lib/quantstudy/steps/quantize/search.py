"""The quantizers: AutoAWQ's search per calibration set, a round-to-nearest reference with no
search, and the simulated 3-bit rounding; plus the activation-outlier diagnostic (the channels
AWQ's scales protect).

Checkpoints are standard AutoAWQ folders (``quantization_config`` in config.json, packed int32
``qweight``/``qzeros`` and float16 ``scales`` in safetensors, plus the tokenizer). At 3 bits
AutoAWQ packs nothing, so the AWQ search runs with ``export_compatible=True`` (scales and clipping
applied in float) and the weights are then rounded to 3 bits in simulation; such checkpoints are
dense float16 folders labelled ``"simulated": true`` in ``quantstudy_quant.json``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from quantstudy.awqformat import pseudo_quantizer, resolve_device, vectorized_from_linear
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.paths import resolve
from quantstudy.steps.quantize.archive import finish_record, save_checkpoint
from quantstudy.steps.quantize.checks import QuantizeError
from quantstudy.steps.quantize.memory import PeakRSS


def _load_awq_model(model_path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """The base model as AutoAWQ's wrapper (a project path or a hub id), on the CPU."""
    quiet_awq()
    from awq import AutoAWQForCausalLM  # AutoAWQ: seconds to import, loaded only where used

    src = resolve(model_path)
    path = str(src) if src.exists() else model_path
    return AutoAWQForCausalLM.from_pretrained(
        path,
        torch_dtype=dtype,
        device_map=None,
        trust_remote_code=trust_remote_code,
        safetensors=True,
        low_cpu_mem_usage=True,
        use_cache=False,
    )


def torch_dtype(name: str) -> torch.dtype:
    """float32, float16 or bfloat16, by its name in the params."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@dataclass
class QuantRequest:
    """One checkpoint to write: the base model, where, and the quantization settings."""

    model_path: str
    out_dir: Path
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    version: str = "GEMM"
    duo_scaling: bool = False
    apply_clip: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    search_autocast: str | None = None  # e.g. "bfloat16": the search's matmuls only; weights stay in dtype


def _quant_config(req: QuantRequest) -> dict:
    """AutoAWQ's quant_config for a request."""
    return {"zero_point": req.zero_point, "q_group_size": req.group_size, "w_bit": req.bits, "version": req.version}


def _simulate_low_bits(awq_model, bits: int, group_size: int, zero_point: bool) -> None:
    """Round every decoder linear to `bits` in place (AutoAWQ's own pseudo-quantizer)."""
    quiet_awq()
    from awq.utils.module import get_named_linears  # AutoAWQ: seconds to import, loaded only where used

    q = pseudo_quantizer(bits, group_size, zero_point)
    for layer in awq_model.get_model_layers(awq_model.model):
        for _, lin in get_named_linears(layer).items():
            lin.weight.data = q.pseudo_quantize_tensor(lin.weight.data.float())[0].to(lin.weight.dtype)


def search_precision(req: QuantRequest):
    """The precision of the AWQ search's forward passes.

    ``search_autocast: bfloat16`` runs the matmuls of the grid search under autocast (bfloat16
    inputs, float32 accumulation), as AutoAWQ's search runs in float16 on a GPU; the weights,
    the scales, the pseudo-quantizer and the loss stay in ``model.dtype``. On this CPU a
    bfloat16 matmul is about 2.5x a float32 one. ``None``: the model's own dtype throughout.

    The autocast weight cache must be off: the search rewrites ``weight.data`` in place for
    every grid point, and a cached low-precision copy of the original weight would make every
    candidate score alike, so the search would silently pick scale 1 (plain rounding)."""
    if not req.search_autocast:
        return contextlib.nullcontext()
    return torch.autocast(
        device_type=resolve_device(req.device), dtype=torch_dtype(req.search_autocast), cache_enabled=False
    )


def quantize_awq(
    req: QuantRequest, tokenizer, samples: list[list[int]], max_seq_len: int, source: str = "", draw: int | None = None
) -> dict:
    """Run AutoAWQ's search on token-id samples (each <= max_seq_len) and save the checkpoint."""
    if not samples:
        raise QuantizeError(f"calibration set {source or '?'} is empty: nothing to calibrate on")
    too_long = [len(s) for s in samples if len(s) > max_seq_len]
    if too_long:
        raise QuantizeError(
            f"{len(too_long)} calibration samples exceed max_seq_len={max_seq_len}; "
            "AutoAWQ would silently discard them: split them first (quantstudy.steps.calibration)"
        )
    simulated = req.bits < 4
    t0 = time.time()
    with PeakRSS() as mem:
        model = _load_awq_model(req.model_path, torch_dtype(req.dtype), req.trust_remote_code)
        model.model.to(resolve_device(req.device))
        t_search = time.time()
        with search_precision(req), vectorized_from_linear():
            model.quantize(
                tokenizer,
                quant_config=_quant_config(req),
                calib_data=samples,
                max_calib_samples=len(samples),
                max_calib_seq_len=max_seq_len,
                duo_scaling=req.duo_scaling,
                apply_clip=req.apply_clip,
                export_compatible=simulated,
                n_parallel_calib_samples=None,
            )
        search_s = time.time() - t_search
        if simulated:
            _simulate_low_bits(model, req.bits, req.group_size, req.zero_point)
        meta = {
            "method": "awq",
            "bits": req.bits,
            "group_size": req.group_size,
            "zero_point": req.zero_point,
            "version": req.version,
            "duo_scaling": req.duo_scaling,
            "apply_clip": req.apply_clip,
            "search_autocast": req.search_autocast,
            "simulated": simulated,
            "calibration_source": source,
            "draw": draw,
            "calibration_samples": len(samples),
            "calibration_tokens": int(sum(map(len, samples))),
            "base_model": str(req.model_path),
        }
        save_checkpoint(model, tokenizer, req.out_dir, meta)
    return finish_record(req.out_dir, meta, search_s, t0, mem.peak_mb)


class _RoundToNearest:
    """AutoAWQ's own per-layer quantize-and-pack (`_apply_quant`) with no search at all."""

    def __init__(self, awq_model, bits: int, group_size: int, zero_point: bool, version: str):
        self.q = pseudo_quantizer(bits, group_size, zero_point)
        self.q.awq_model, self.q.model = awq_model, awq_model.model
        self.q.version = version.lower()
        self.q.modules_to_not_convert = getattr(awq_model, "modules_to_not_convert", None) or []

    def run(self) -> None:
        quiet_awq()
        # AutoAWQ: seconds to import, loaded only where used
        from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears

        for layer in tqdm(self.q.awq_model.get_model_layers(self.q.model), desc="RTN", leave=False):
            linears = exclude_layers_to_not_quantize(get_named_linears(layer), self.q.modules_to_not_convert)
            self.q._apply_quant(layer, linears)


def quantize_rtn(req: QuantRequest, tokenizer) -> dict:
    """Round-to-nearest reference, no calibration, same packed AutoAWQ format (4-bit) or simulated (3-bit)."""
    quiet_awq()
    from awq.models._config import AwqConfig  # AutoAWQ: seconds to import, loaded only where used

    simulated = req.bits < 4
    t0 = time.time()
    with PeakRSS() as mem:
        model = _load_awq_model(req.model_path, torch_dtype(req.dtype), req.trust_remote_code)
        if simulated:
            _simulate_low_bits(model, req.bits, req.group_size, req.zero_point)
        else:
            with vectorized_from_linear():
                _RoundToNearest(model, req.bits, req.group_size, req.zero_point, req.version).run()
            model.quant_config = AwqConfig.from_dict(_quant_config(req))
            model.is_quantized = True
        meta = {
            "method": "rtn",
            "bits": req.bits,
            "group_size": req.group_size,
            "zero_point": req.zero_point,
            "version": req.version,
            "simulated": simulated,
            "calibration_source": None,
            "draw": None,
            "calibration_samples": 0,
            "calibration_tokens": 0,
            "base_model": str(req.model_path),
        }
        save_checkpoint(model, tokenizer, req.out_dir, meta)
    return finish_record(req.out_dir, meta, 0.0, t0, mem.peak_mb)


# --------------------------------------------------------------------------- diagnostics
@torch.no_grad()
def activation_outliers(model, batches: list[torch.Tensor]) -> list[dict]:
    """Per linear layer: max / median of the per-input-channel mean |x| over the batches.

    Real LLMs show a few channels tens to hundreds of times the median: those are the
    channels AWQ's scales protect.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(_mod, inp, _out):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.abs().sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name != "lm_head":
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        for b in batches:
            model(input_ids=b)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, s in sums.items():
        mean_abs = s / counts[name]
        med = mean_abs.median().item()
        rows.append(
            {
                "layer": name,
                "max_over_median": round(mean_abs.max().item() / max(med, 1e-12), 2),
                "top_channel": int(mean_abs.argmax()),
                "median_mean_abs": round(med, 5),
            }
        )
    return rows
