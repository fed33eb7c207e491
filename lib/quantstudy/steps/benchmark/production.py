"""The production-shaped model: a ~1B-shaped Llama with random weights, round-to-nearest
quantized and packed as an AutoAWQ GEMM checkpoint, with only ``prod_bench_layers`` decoder
layers instantiated (the timings extrapolate to ``prod_num_layers``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from quantstudy.awqformat import rtn_quantize_linear
from quantstudy.config.params import BenchmarkSection
from quantstudy.steps.benchmark.devices import BenchError
from quantstudy.steps.benchmark.section import bench_section


def production_config(bench_params: BenchmarkSection | Mapping[str, Any], num_layers: int | None = None):
    """LlamaConfig of the production-shaped model (``num_layers`` defaults to prod_bench_layers)."""
    from transformers import LlamaConfig  # lazy: transformers costs seconds to import

    p = bench_section(bench_params)
    max_pos = max(2048, max(p.context_lengths) + p.decode_tokens + 8)
    return LlamaConfig(
        hidden_size=p.prod_hidden_size,
        intermediate_size=p.prod_intermediate_size,
        num_hidden_layers=num_layers or p.prod_bench_layers,
        num_attention_heads=p.prod_num_heads,
        num_key_value_heads=p.prod_num_kv_heads,
        vocab_size=p.prod_vocab_size,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
        use_cache=True,
    )


@torch.no_grad()
def _rtn_awq_state(dense: nn.Module, group_size: int) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM state of `dense`: every decoder linear RTN-quantized and packed
    (``*.qweight``, ``*.qzeros``, ``*.scales``, float16 bias), every other tensor in float16."""
    state: dict[str, torch.Tensor] = {}
    quantized = set()
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
    return state


def _write_awq_folder(
    folder: Path, state: dict[str, torch.Tensor], cfg, group_size: int, seed: int, p: BenchmarkSection
) -> None:
    """model.safetensors, config.json (with AutoAWQ's quantization_config) and quantstudy_quant.json."""
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg_dict = cfg.to_dict()
    cfg_dict["torch_dtype"] = "float16"
    cfg_dict["quantization_config"] = {
        "quant_method": "awq",
        "zero_point": True,
        "group_size": group_size,
        "bits": 4,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    (folder / "quantstudy_quant.json").write_text(
        json.dumps(
            {
                "method": "rtn",
                "bits": 4,
                "group_size": group_size,
                "zero_point": True,
                "version": "GEMM",
                "simulated": False,
                "synthetic": True,
                "seed": seed,
                "full_num_layers": p.prod_num_layers,
                "instantiated_layers": p.prod_bench_layers,
            },
            indent=2,
        )
    )


def production_model(
    bench_params: BenchmarkSection | Mapping[str, Any],
    out_dir: str | Path | None = None,
    group_size: int = 128,
    seed: int = 0,
) -> tuple[nn.Module, Path]:
    """A ~1B-shaped Llama with random weights -> (dense float32 model, AWQ GEMM folder).

    Only ``prod_bench_layers`` decoder layers are instantiated (the full vocabulary's
    embeddings and lm_head once). Every decoder linear is round-to-nearest quantized with
    AutoAWQ's arithmetic and packed with the vectorized :func:`pack_awq_gemm` (bit-identical
    to ``WQLinear_GEMM.from_linear``). The folder holds config.json (with AutoAWQ's
    ``quantization_config``) and model.safetensors (non-quantized tensors in float16, as
    AutoAWQ saves them). `out_dir` defaults to a new temporary folder.
    """
    from transformers import AutoModelForCausalLM  # lazy: transformers costs seconds to import

    p = bench_section(bench_params)
    for key, width in (("prod_hidden_size", p.prod_hidden_size), ("prod_intermediate_size", p.prod_intermediate_size)):
        if width % group_size:
            raise BenchError(f"{key}={width} is not a multiple of group_size={group_size}")
    cfg = production_config(p)
    torch.manual_seed(seed)
    dense = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="quantstudy-prod-"))
    folder.mkdir(parents=True, exist_ok=True)
    _write_awq_folder(folder, _rtn_awq_state(dense, group_size), cfg, group_size, seed, p)
    return dense, folder
