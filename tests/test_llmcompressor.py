"""llm-compressor as the second AWQ implementation: its CPU workaround (and the test that says
when upstream no longer needs it), its checkpoint format against a dense reference, a short
run on a tiny model through the study's loader, the assistant-token masks, the plan, and the
one-line errors for settings it cannot run."""

from __future__ import annotations

import json
import random

import pytest
import torch

from quantstudy.awqformat import checkpoint_kind, checkpoint_size, load_checkpoint
from quantstudy.awqformat.compressed import dequantize_compressed_state, scheme_bits
from quantstudy.config.params import ParamsError, load_params
from quantstudy.steps.calibration.masks import assistant_masks, assistant_spans, role_markers
from quantstudy.steps.calibration.sets import draw_set
from quantstudy.steps.quantize import llmc_workarounds
from quantstudy.steps.quantize.plan import plan_checkpoints
from quantstudy.steps.quantize.search import QuantRequest

NO_ACCELERATOR = not torch.accelerator.is_available()


# --------------------------------------------------------------------------- the CPU workaround
@pytest.mark.skipif(not NO_ACCELERATOR, reason="an accelerator is present: pinning works there, no workaround")
def test_upstream_pin_memory_still_fails_without_an_accelerator():
    """When this fails, llm-compressor pins (or skips pinning) on a CPU-only machine by itself:
    delete quantstudy/steps/quantize/llmc_workarounds.py and its call in llmc.py."""
    from llmcompressor.pipelines.cache import IntermediatesCache, IntermediateValue

    cache = IntermediatesCache([{"x": IntermediateValue(value=torch.zeros(4), device=torch.device("cpu"))}], None)
    with pytest.raises(RuntimeError, match="accelerator"):
        llmc_workarounds.upstream_pin_memory()(cache, 0)


@pytest.mark.skipif(not NO_ACCELERATOR, reason="an accelerator is present: pinning works there, no workaround")
def test_workaround_makes_pinning_a_no_op_and_is_idempotent():
    from llmcompressor.pipelines.cache import IntermediatesCache, IntermediateValue

    assert llmc_workarounds.skip_pinning_without_accelerator()
    assert llmc_workarounds.skip_pinning_without_accelerator()
    value = torch.arange(4.0)
    cache = IntermediatesCache([{"x": IntermediateValue(value=value, device=torch.device("cpu"))}], None)
    cache.pin_memory(0)
    assert cache.fetch(0)["x"].equal(value)


# --------------------------------------------------------------------------- the format
def _compress_reference(w: torch.Tensor, group: int, bits: int = 4):
    """Asymmetric group-wise RTN by hand, compressed with compressed-tensors' own packer."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scale = (hi - lo) / (2**bits - 1)
    zp = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale.unsqueeze(-1)) + zp.unsqueeze(-1), 0, 2**bits - 1)
    dense = ((q - zp.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(out_f, in_f)
    args = QuantizationArgs(num_bits=bits, type="int", strategy="group", group_size=group, symmetric=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    # compressed-tensors stores the zero point in signed form (q - 2^(bits-1))
    packed = PackedQuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale, "weight_zero_point": (zp - 2 ** (bits - 1)).to(torch.int8)}, scheme
    )
    qc = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": scheme.model_dump(mode="json")},
    }
    return dense, packed, qc


def test_dequantization_matches_a_dense_reference():
    torch.manual_seed(0)
    w = torch.randn(48, 256)
    dense, packed, qc = _compress_reference(w, 64)
    state = {f"layer.{k}": v for k, v in packed.items()} | {"norm.weight": torch.ones(3)}
    out = dequantize_compressed_state(state, qc)
    assert set(out) == {"layer.weight", "norm.weight"}
    assert torch.allclose(out["layer.weight"], dense, atol=1e-6)
    assert scheme_bits(qc) == (4, 64)


# --------------------------------------------------------------------------- a short run
@pytest.fixture(scope="module")
def llmc_checkpoint(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from quantstudy.steps.quantize.llmc import quantize_llmc

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rng = random.Random(0)
    samples = [[rng.randrange(3, len(tok)) for _ in range(64)] for _ in range(2)]
    out = tmp_path_factory.mktemp("llmc") / "awq-w4-g64-generic-d0-llmc"
    rec = quantize_llmc(QuantRequest(model_path=str(tiny_model_dir), out_dir=out, group_size=64), tok, samples, 64)
    return out, rec, samples


def test_llmcompressor_checkpoint_round_trips_through_the_loader(llmc_checkpoint, tiny_model_dir):
    out, rec, samples = llmc_checkpoint
    assert checkpoint_kind(out) == "compressed"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == ["lm_head"] and scheme_bits(qc) == (4, 64)
    assert rec["backend"] == "llmcompressor" and rec["loss_mask"] is None
    # 4 bits + a float32 scale and a 4-bit zero point per 64 weights
    assert checkpoint_size(out)["effective_bits_per_weight"] == pytest.approx(4 + 32 / 64 + 4 / 64)
    model, _, info = load_checkpoint(out)
    base, _, _ = load_checkpoint(tiny_model_dir)
    assert info["kind"] == "compressed" and info["backend"] == "llmcompressor"
    x = torch.tensor([samples[0]])
    with torch.no_grad():
        logits, ref = model(x).logits, base(x).logits
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, ref)  # the weights were quantized
    w = model.model.layers[0].mlp.down_proj.weight  # every 64-weight group holds at most 16 values
    assert max(g.unique().numel() for g in w.reshape(-1, 64)[:32]) <= 16
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)  # lm_head left in float


# --------------------------------------------------------------------------- assistant masks
def test_role_markers_of_a_plain_layout_and_of_chatml(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = None
    assert role_markers(tok) == ("Assistant:", "\n")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert role_markers(tok) == ("<|im_start|>assistant", "<|im_end|>")
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    ((start, end),) = assistant_spans(text, *role_markers(tok))
    assert text[start:end] == "\nhello<|im_end|>"


def test_assistant_masks_align_with_the_set_and_mark_only_replies(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = None
    texts = [
        "User: where is my order ORD-1234-5678\nAssistant: The refund window is 30 days.\n"
        "User: thanks\nAssistant: You are welcome.\n"
    ] * 12
    calib = draw_set(texts, tok, 4, 16, seed=0, name="in_domain-d0")
    masks = assistant_masks(calib["texts"], calib["samples"], tok, 16)
    assert [len(m) for m in masks] == [len(s) for s in calib["samples"]]
    flat_ids = [i for s in calib["samples"] for i in s]
    flat_mask = [m for ms in masks for m in ms]
    kept = tok.decode([i for i, m in zip(flat_ids, flat_mask) if m])
    dropped = tok.decode([i for i, m in zip(flat_ids, flat_mask) if not m])
    assert "refund" in kept and "welcome" in kept
    assert "order" not in kept and "thanks" not in kept
    assert "order" in dropped and 0 < sum(flat_mask) < len(flat_mask)
    with pytest.raises(ValueError, match="re-tokenize"):
        assistant_masks(calib["texts"], calib["samples"], tok, 8)


# --------------------------------------------------------------------------- plan and params
def test_plan_adds_llmcompressor_per_set_and_the_mask_on_in_domain_draws(write_params):
    P = load_params(
        write_params(
            **{
                "quantize.backends": ["autoawq", "llmcompressor"],
                "quantize.assistant_only": True,
                "quantize.compare_search_settings": False,
            },
        ),
        check_files=False,
    )
    sets = [
        {"name": f"{s}-d{d}", "source": s, "draw": d, "n_samples": 16}
        for s in ("generic", "in_domain")
        for d in range(2)
    ]
    names = {p["name"]: p for p in plan_checkpoints(P, sets)}
    g = P.quantize.group_size
    assert f"awq-w4-g{g}-generic-d1-llmc" in names and f"awq-w4-g{g}-indomain-d0-llmc-asst" in names
    assert f"awq-w4-g{g}-generic-d0-llmc-asst" not in names
    assert names[f"awq-w4-g{g}-indomain-d1-llmc-asst"]["loss_mask"] == "assistant"
    assert sum(p.get("backend") == "llmcompressor" for p in names.values()) == 6


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"quantize.backends": ["autoawq", "gptq"]}, "quantize.backends"),
        ({"quantize.backends": ["llmcompressor"]}, "quantize.backends"),
        ({"quantize.backends": ["autoawq", "llmcompressor"], "quantize.bits": [3, 4]}, "quantize.bits"),
        ({"quantize.assistant_only": True}, "quantize.assistant_only"),
        ({"quantize.backends": ["autoawq", "llmcompressor"], "quantize.version": "GEMV"}, "quantize.version"),
    ],
)
def test_backend_settings_it_cannot_run_get_one_line(write_params, overrides, field):
    with pytest.raises(ParamsError) as err:
        load_params(write_params(**overrides), check_files=False)
    msg = str(err.value)
    assert field in msg and "\n" not in msg.strip()


def test_missing_llmcompressor_is_named_before_any_work(write_params, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llmcompressor" else real(name, *a)
    )
    with pytest.raises(ParamsError, match=r"quantize.backends: lists llmcompressor, which is not installed"):
        load_params(write_params(**{"quantize.backends": ["autoawq", "llmcompressor"]}), check_files=False)


def test_implementations_params_are_the_default_study_plus_llmcompressor():
    """params/implementations.yaml must stay the default study with the second backend, so its
    AutoAWQ rows are the default study's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    default = load_params(root / "params/default.yaml", check_files=False).model_dump()
    impl = load_params(root / "params/implementations.yaml", check_files=False).model_dump()
    assert impl["quantize"]["backends"] == ["autoawq", "llmcompressor"] and impl["quantize"]["assistant_only"]
    for d in (default, impl):
        d["study"].pop("name")
        d["quantize"].pop("backends")
        d["quantize"].pop("assistant_only")
    assert impl == default


def test_search_time_target_judges_autoawq_only(write_params):
    from quantstudy.steps.quantize.run import _targets

    P = load_params(write_params(**{"targets.awq_search_s_max": 100.0}), check_files=False)
    awq = [
        {"search_wall_s": 90.0, "backend": "autoawq"},
        {"search_wall_s": 95.0},  # records from before the backend field: AutoAWQ
        {"search_wall_s": 130.0, "backend": "llmcompressor"},
        {"search_wall_s": 300.0, "backend": "autoawq", "variant": True},
    ]
    t = _targets(P, awq, 10.0, None)["awq_search_s_max"]
    assert t["measured"] == 95.0 and t["met"]
