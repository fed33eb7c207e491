"""Quantization: AutoAWQ and RTN checkpoints on a tiny random Llama, unpacking, archive checks."""

from __future__ import annotations

import json
import random

import pytest
import torch

from quantstudy.awqformat import QUANT_META, CheckpointError, dequantize_awq_state, read_tensors
from quantstudy.awqformat.autoawq import supported_model_types
from quantstudy.paths import resolve
from quantstudy.steps import quantize as Q
from quantstudy.steps.quantize.search import _load_awq_model


def _samples(n: int = 8, length: int = 64, vocab: int = 300, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    samples = _samples(vocab=len(tok))
    awq = Q.quantize_awq(Q.QuantRequest(str(tiny_model_dir), out / "awq"), tok, samples, 64, "generic", 0)
    rtn = Q.quantize_rtn(Q.QuantRequest(str(tiny_model_dir), out / "rtn"), tok)
    scaled = out / "scaled"
    # Same search, nothing packed: AWQ's scaled float weights, the reference for "within one step".
    model = _load_awq_model(str(tiny_model_dir), torch.float32)
    model.quantize(
        tok,
        quant_config={"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"},
        calib_data=samples,
        max_calib_samples=len(samples),
        max_calib_seq_len=64,
        duo_scaling=False,
        apply_clip=False,
        export_compatible=True,
    )
    model.model.save_pretrained(scaled)
    return {"awq": out / "awq", "rtn": out / "rtn", "scaled": scaled, "awq_rec": awq, "rtn_rec": rtn}


def test_awq_checkpoint_is_standard_autoawq(checkpoints):
    cfg = json.loads((checkpoints["awq"] / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["bits"] == 4 and qc["group_size"] == 128 and qc["version"] == "gemm"
    tensors = read_tensors(checkpoints["awq"])
    assert any(k.endswith(".qweight") for k in tensors)
    assert tensors["model.layers.0.mlp.down_proj.qweight"].dtype == torch.int32
    assert tensors["model.layers.0.mlp.down_proj.scales"].dtype == torch.float16
    assert (checkpoints["awq"] / "tokenizer.json").is_file()
    rec = checkpoints["awq_rec"]
    assert 4.1 < rec["effective_bits_per_weight"] < 4.2
    assert rec["search_wall_s"] > 0 and rec["peak_rss_mb"] > 0


def test_unpacked_awq_within_one_step_of_scaled_original(checkpoints):
    from safetensors.torch import load_file

    packed = read_tensors(checkpoints["awq"])
    dense = dequantize_awq_state(packed, 4, 128)
    scaled = load_file(str(next(checkpoints["scaled"].glob("*.safetensors"))))
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"):
        w_q = dense[name + ".weight"]
        w = scaled[name + ".weight"].float()
        step = packed[name + ".scales"].float().t().repeat_interleave(128, dim=1)  # [out, in]
        assert w_q.shape == w.shape
        assert torch.all((w_q - w).abs() <= step * 1.01 + 1e-3), name


def test_rtn_unpacks_to_autoawq_pseudo_quantization(checkpoints, tiny_model_dir):
    """Our unpacking (autoawq's dequantize_gemm) equals autoawq's own fake quantization."""
    from awq.quantize.quantizer import AwqQuantizer
    from transformers import AutoModelForCausalLM

    q = AwqQuantizer.__new__(AwqQuantizer)
    q.w_bit, q.group_size, q.zero_point = 4, 128, True
    orig = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    dense = dequantize_awq_state(read_tensors(checkpoints["rtn"]), 4, 128)
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.gate_proj"):
        w = dict(orig.named_parameters())[name + ".weight"].data.half()
        ref = q.pseudo_quantize_tensor(w)[0].float()
        assert torch.allclose(dense[name + ".weight"], ref, atol=2e-3, rtol=1e-3), name


def test_awq_and_rtn_checkpoints_differ(checkpoints):
    a, r = read_tensors(checkpoints["awq"]), read_tensors(checkpoints["rtn"])
    differs = [k for k in a if k.endswith(".qweight") and not torch.equal(a[k], r[k])]
    assert differs, "AWQ and RTN produced identical packed weights"


def test_autocast_search_still_searches(checkpoints, tiny_model_dir, tok, tmp_path):
    """search_autocast runs the grid in bfloat16. With autocast's weight cache on, every grid
    point would be scored with the original weights and the search would fall back to scale 1,
    i.e. produce exactly the RTN checkpoint: it must not."""
    rec = Q.quantize_awq(
        Q.QuantRequest(str(tiny_model_dir), tmp_path / "awq_bf16", search_autocast="bfloat16"),
        tok,
        _samples(vocab=len(tok)),
        64,
        "generic",
        0,
    )
    assert rec["search_autocast"] == "bfloat16"
    a, r = read_tensors(tmp_path / "awq_bf16"), read_tensors(checkpoints["rtn"])
    differs = [k for k in a if k.endswith(".qweight") and not torch.equal(a[k], r[k])]
    assert len(differs) >= len([k for k in a if k.endswith(".qweight")]) // 2, differs


def test_load_checkpoint_gives_finite_logits(checkpoints):
    for key in ("awq", "rtn"):
        model, tok, info = Q.load_checkpoint(checkpoints[key])
        assert info["kind"] == "awq"
        logits = model(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
        assert torch.isfinite(logits).all()


def test_simulated_three_bit_is_dense_and_labelled(tiny_model_dir, tok, tmp_path):
    rec = Q.quantize_rtn(Q.QuantRequest(str(tiny_model_dir), tmp_path / "rtn3", bits=3), tok)
    assert rec["simulated"] is True
    assert Q.checkpoint_kind(tmp_path / "rtn3") == "dense"
    meta = json.loads((tmp_path / "rtn3" / QUANT_META).read_text())
    assert meta["simulated"] and meta["bits"] == 3
    model, _, _ = Q.load_checkpoint(tmp_path / "rtn3")
    w = model.model.layers[0].mlp.up_proj.weight.data.view(-1, 128)
    assert max(len(torch.unique(row)) for row in w[:16]) <= 8  # 3 bits: at most 8 levels per group


def test_archive_detects_a_changed_byte(tiny_model_dir, tmp_path):
    sums = Q.archive_baseline(tiny_model_dir, tmp_path / "baseline")
    assert "model.safetensors" in sums
    assert Q.verify_archive(tmp_path / "baseline") == sums
    target = tmp_path / "baseline" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch for model.safetensors"):
        Q.verify_archive(tmp_path / "baseline")


def test_unsupported_model_type_lists_supported():
    with pytest.raises(Q.QuantizeError, match="not supported by AutoAWQ.*supported types: .*llama"):
        Q.check_model({"model_type": "bert", "hidden_size": 256, "intermediate_size": 1024}, 128)


def test_model_type_list_matches_installed_autoawq():
    """Validation reads a written-out list (no AutoAWQ import); it must be the installed map."""
    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP

    assert supported_model_types() == sorted(AWQ_CAUSAL_LM_MODEL_MAP)


def test_steps_that_never_quantize_start_without_autoawq():
    """Validation and the steps without AWQ code do not pay AutoAWQ's import (seconds)."""
    import subprocess
    import sys

    code = (
        "import sys; from quantstudy.config import params; from quantstudy.steps import calibration, evaluate, "
        "rollout; from quantstudy import report; params.load_params('params/default.yaml'); "
        "print('awq' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=resolve("."), check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_group_size_must_divide_widths():
    with pytest.raises(Q.QuantizeError, match="does not divide intermediate_size=1000"):
        Q.check_model({"model_type": "llama", "hidden_size": 256, "intermediate_size": 1000}, 128)


def test_empty_calibration_set_is_named(tiny_model_dir, tok, tmp_path):
    with pytest.raises(Q.QuantizeError, match="calibration set in_domain is empty"):
        Q.quantize_awq(Q.QuantRequest(str(tiny_model_dir), tmp_path / "x"), tok, [], 64, "in_domain", 0)


def test_too_long_samples_are_refused_not_dropped(tiny_model_dir, tok, tmp_path):
    with pytest.raises(Q.QuantizeError, match="exceed max_seq_len=32"):
        Q.quantize_awq(Q.QuantRequest(str(tiny_model_dir), tmp_path / "x"), tok, _samples(2, 64), 32, "generic", 0)


def test_unknown_quantization_config_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}})
    )
    with pytest.raises(CheckpointError, match="not supported here"):
        Q.checkpoint_kind(tmp_path)
