"""AutoAWQ checkpoints as the study stores them, and the one loader that turns any of them (or
the archived baseline) back into a dense model.

Checkpoints are standard AutoAWQ folders: ``quantization_config`` in config.json, packed int32
``qweight``/``qzeros`` and float16 ``scales`` in safetensors, the tokenizer, and the study's own
record ``quantstudy_quant.json``. The archived baseline is a dense folder with ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from quantstudy.awqformat import compressed
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.paths import resolve

QUANT_META = "quantstudy_quant.json"
CHECKSUMS = "SHA256SUMS"


class CheckpointError(ValueError):
    """A checkpoint or archive that cannot be used as it is; the message says what to change."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("study.device is 'cuda' but no CUDA GPU is visible; use device: cpu")
    return device


def cast_model(model, dtype: torch.dtype):
    """``model`` in ``dtype`` the way ``from_pretrained(dtype=...)`` builds it: parameters and
    saved buffers cast, but buffers that are not saved (RoPE's ``inv_freq``, computed at load
    time) keep their float32 values. ``model.to(dtype)`` would round ``inv_freq`` to bfloat16
    (0.6978 becomes 0.6992), which shifts every rotary angle; a baseline cast that way while the
    checkpoints load through ``from_pretrained`` would differ from them in positions, not weights."""
    saved = set(model.state_dict())
    keep = {
        name: buf.detach().clone()
        for name, buf in model.named_buffers()
        if name not in saved and buf.is_floating_point()
    }
    model.to(dtype)
    for name, buf in keep.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buf.to(device=model.get_submodule(owner)._buffers[attr].device)
    return model


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_archive(folder: str | Path) -> dict[str, str]:
    """Raise CheckpointError unless every file matches SHA256SUMS (and none is missing)."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise CheckpointError(f"{listing} is missing: the archive cannot be verified")
    sums = {}
    for line in listing.read_text().splitlines():
        digest, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"archive {folder}: {name} is missing")
        actual = sha256_file(path)
        if actual != digest:
            raise CheckpointError(
                f"archive {folder}: checksum mismatch for {name} (expected {digest[:12]}..., found {actual[:12]}...)"
            )
        sums[name] = digest
    return sums


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # with torch, only where weights are read

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def checkpoint_size(folder: str | Path) -> dict:
    """Bytes on disk, and effective bits per quantized weight (packed weights + scales + zeros)."""
    folder = Path(folder)
    disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    tensors = read_tensors(folder)
    q_bits = 0
    q_weights = 0
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            bits_here = (
                t.numel() * 32 + tensors[prefix + ".qzeros"].numel() * 32 + tensors[prefix + ".scales"].numel() * 16
            )
            n_w = t.shape[0] * t.shape[1] * 8  # 8 x 4-bit values per int32
            q_bits += bits_here
            q_weights += n_w
    ct_bits, ct_weights = compressed.packed_size(tensors)  # llm-compressor's layout
    q_bits, q_weights = q_bits + ct_bits, q_weights + ct_weights
    return {
        "checkpoint_bytes": disk,
        "effective_bits_per_weight": round(q_bits / q_weights, 4) if q_weights else None,
        "quantized_weights": q_weights,
    }


def checkpoint_kind(folder: str | Path) -> str:
    """'awq' (AutoAWQ packed), 'compressed' (llm-compressor's compressed-tensors packed), 'dense'
    (baseline or simulated), or raise for an unknown quantization config."""
    folder = resolve(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: no config.json; not a model checkpoint")
    cfg = json.loads(cfg_path.read_text())
    qc = cfg.get("quantization_config")
    if qc is None:
        return "dense"
    method = qc.get("quant_method")
    if method == "awq" and qc.get("bits", qc.get("w_bit")) == 4 and str(qc.get("version", "gemm")).lower() == "gemm":
        return "awq"
    if compressed.is_compressed_config(qc):
        return "compressed"
    raise CheckpointError(
        f"{cfg_path}: quantization_config {qc!r} is not supported here; expected AutoAWQ GEMM 4-bit "
        "(quant_method 'awq', bits 4, version 'gemm'), compressed-tensors pack-quantized, or no quantization"
    )


def dequantize_awq_state(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> dict[str, torch.Tensor]:
    """Replace every (qweight, qzeros, scales) triple by a dense float32 `weight` [out, in],
    with autoawq's own unpacking arithmetic (awq.utils.packing_utils.dequantize_gemm)."""
    quiet_awq()
    from awq.utils.packing_utils import dequantize_gemm  # AutoAWQ: seconds to import, loaded only where used

    out: dict[str, torch.Tensor] = {}
    done = set()
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            w = dequantize_gemm(t, tensors[prefix + ".qzeros"], tensors[prefix + ".scales"].float(), bits, group_size)
            out[prefix + ".weight"] = w.t().contiguous().float()  # GEMM layout is [in, out]
            done.update({prefix + s for s in (".qweight", ".qzeros", ".scales")})
    for name, t in tensors.items():
        if name not in done:
            out[name] = t.float() if t.is_floating_point() else t
    return out


def load_checkpoint(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """One loader for the baseline and every checkpoint -> (model, tokenizer, info).

    CPU: AWQ weights are unpacked into dense float32 linears (from_quantized needs IPEX there).
    GPU: AutoAWQ's own kernels through from_quantized. llm-compressor's checkpoints are
    decompressed with compressed-tensors on either (vLLM serves them; transformers does not).
    """
    # seconds to import; loaded only where a model is
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = resolve(folder)
    kind = checkpoint_kind(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    meta = json.loads((folder / QUANT_META).read_text()) if (folder / QUANT_META).is_file() else {"method": "baseline"}
    device = resolve_device(device)
    loader = "dense" if kind == "dense" else "dequantized"
    model = None
    if kind == "dense":
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    elif kind == "awq" and device == "cuda":  # pragma: no cover - needs a GPU
        try:  # the kernels a team would serve; the dense dequantization below is the same arithmetic
            quiet_awq()
            from awq import AutoAWQForCausalLM  # AutoAWQ: seconds to import, loaded only where used

            model = AutoAWQForCausalLM.from_quantized(str(folder), fuse_layers=False).model
            loader = "AutoAWQForCausalLM.from_quantized"
        except Exception as exc:
            loader = f"dequantized (from_quantized failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})"
    if model is None:
        cfg = AutoConfig.from_pretrained(str(folder))
        qc = cfg.quantization_config if isinstance(cfg.quantization_config, dict) else cfg.quantization_config.to_dict()
        del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        if kind == "compressed":
            state = compressed.dequantize_compressed_state(read_tensors(folder), qc)
        else:
            state = dequantize_awq_state(
                read_tensors(folder), qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size"))
            )
        if getattr(cfg, "tie_word_embeddings", False) and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        model.tie_weights() if getattr(cfg, "tie_word_embeddings", False) else None
    model.to(device).eval()
    return model, tokenizer, {"kind": kind, "loader": loader, **meta}
