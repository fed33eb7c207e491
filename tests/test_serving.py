"""The served output head (serve.lm_head): the int8 and bfloat16 heads against a dense
reference, the shared decoder pass that scores a served head next to the model's own, and the
same head in step 04's fast4 path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantstudy import serving
from quantstudy.steps import evaluate as E
from quantstudy.steps import quantize as Q
from quantstudy.steps.benchmark import convert, probe

TEXTS = [
    "User: my order ORD-1234-5678 is late.\nAssistant: The refund window is 30 days.\n",
    "The Lumen X2 router costs $149 and carries a 24 months warranty.",
] * 3


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_int8_head_against_dense_reference():
    torch.manual_seed(0)
    lin = nn.Linear(256, 1000, bias=False)
    x = torch.randn(3, 5, 256)
    head = serving.Int8Head(lin.weight)
    assert head.qweight.dtype == torch.int8 and head.qweight.abs().max() <= 127
    out = head(x)
    assert out.shape == (3, 5, 1000) and out.dtype == torch.float32
    # the kernel computes with the int8 weights it holds: equal to the dequantized matmul in bfloat16
    ref_deq = (x.to(torch.bfloat16) @ head.dequantized().to(torch.bfloat16).t()).float()
    assert _rel_rms(out, ref_deq) < 0.01
    # against the float head: int8 rounding plus bfloat16 activations, well under 2%
    assert _rel_rms(out, lin(x)) < 0.02
    # per-channel scales: the largest weight of each row is represented exactly (to bfloat16 scale rounding)
    assert (head.qweight.abs().amax(dim=1) == 127).all()


def test_bfloat16_head_and_unknown_kind():
    torch.manual_seed(0)
    lin = nn.Linear(64, 100)
    x = torch.randn(4, 64)
    assert _rel_rms(serving.BFloat16Head(lin.weight, lin.bias)(x), lin(x)) < 0.01
    assert serving.served_head(lin, "float") is None
    with pytest.raises(serving.ServingError, match="serve.lm_head: unknown head 'int4'"):
        serving.served_head(lin, "int4")


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    model, tok, _ = Q.load_checkpoint(tiny_model_dir)
    return model.to(torch.bfloat16), tok


def test_shared_decoder_pass_is_the_models_own_forward(model_tok):
    """head_logits runs the decoder once and applies each head: the model's own head gives its
    forward's logits bit for bit, with or without extra heads, with logits_to_keep too."""
    model, tok = model_tok
    x = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        ref = model(input_ids=x).logits
        ref_keep = model(input_ids=x, logits_to_keep=3).logits
    head = serving.served_head(model.get_output_embeddings(), "int8")
    own, served = E.head_logits(model, [head], input_ids=x)
    assert torch.equal(own, ref)
    assert torch.equal(E.head_logits(model, [head], 3, input_ids=x)[0], ref_keep)
    assert _rel_rms(served, ref) < 0.05 and not torch.equal(served, ref)


def test_served_row_equals_a_model_with_that_head(model_tok, tiny_model_dir):
    """The served head scored from the shared pass equals scoring a separate model whose
    lm_head was replaced, array for array."""
    import copy

    model, tok = model_tok
    streams = {"d": E.build_stream(tok, TEXTS, 64, 32, 2000)}
    items = {
        "retention": [
            {
                "item_id": f"i{k}",
                "context": f"User: my order is ORD-{k}1.\nAssistant: Your order is",
                "choices": [f" ORD-{k}1", f" ORD-{k}2", " none"],
                "answer": 0,
            }
            for k in range(5)
        ]
    }
    head = serving.served_head(model.get_output_embeddings(), "int8")
    shared = E.evaluate_model(model, tok, streams, items, baseline_logprobs=model, heads={"served": head})
    served_model = serving.apply_served_head(copy.deepcopy(model), "int8")
    assert isinstance(served_model.lm_head, serving.Int8Head)
    alone = E.evaluate_model(served_model, tok, streams, items, baseline_logprobs=model)
    got = shared["heads"]["served"]
    for k in ("nll", "kl", "agree"):
        np.testing.assert_array_equal(got["streams"]["d"][k], alone["streams"]["d"][k])
    for k in ("acc", "margin", "choice_ll"):
        np.testing.assert_array_equal(got["items"]["retention"][k], alone["items"]["retention"][k])
    # and the model's own row is what it was without the extra head
    plain = E.evaluate_model(model, tok, streams, items, baseline_logprobs=model)
    np.testing.assert_array_equal(shared["streams"]["d"]["nll"], plain["streams"]["d"]["nll"])
    np.testing.assert_array_equal(shared["items"]["retention"]["margin"], plain["items"]["retention"]["margin"])


def test_served_checkpoint_rule():
    recs = [
        {"name": "rtn-w4-g64", "method": "rtn", "bits": 4},
        {"name": "awq-w4-g64-generic-d0", "method": "awq", "bits": 4, "calibration_source": "generic"},
        {"name": "awq-w4-g64-indomain-d1", "method": "awq", "bits": 4, "calibration_source": "in_domain"},
        {"name": "awq-w4-g64-indomain-d0", "method": "awq", "bits": 4, "calibration_source": "in_domain"},
        {
            "name": "awq-w3-g64-indomain-d0",
            "method": "awq",
            "bits": 3,
            "calibration_source": "in_domain",
            "simulated": True,
        },
    ]
    assert serving.served_checkpoint(recs)["name"] == "awq-w4-g64-indomain-d0"
    # llm-compressor's checkpoints (compressed-tensors) are evaluated, not served by the fast paths
    llmc = {"method": "awq", "bits": 4, "calibration_source": "in_domain", "backend": "llmcompressor"}
    assert serving.served_checkpoint([{**llmc, "name": "awq-w4-g64-indomain-a-llmc"}, *recs])["name"] == (
        "awq-w4-g64-indomain-d0"
    )
    assert serving.served_name("awq-w4-g64-indomain-d0", "int8") == "awq-w4-g64-indomain-d0+head-int8"
    assert serving.served_name("x", "float") == "x"
    with pytest.raises(serving.ServingError, match="no packed 4-bit checkpoint"):
        serving.served_checkpoint(recs[-1:])


def test_fast4_serves_the_configured_head(tiny_model_dir, tmp_path):
    """Step 04's fast4 on a CPU runs the served head; the baseline keeps its own."""
    tok = Q.load_checkpoint(tiny_model_dir)[1]
    folder = tmp_path / "rtn"
    Q.quantize_rtn(Q.QuantRequest(str(tiny_model_dir), folder), tok)
    fast = convert.convert_model(folder, "fast4", "cpu", lm_head="int8")
    assert isinstance(fast.lm_head, serving.Int8Head) and fast.quantstudy_lm_head == "int8"
    base = convert.convert_model(folder, "baseline", "cpu", lm_head="int8")
    assert isinstance(base.lm_head, nn.Linear)
    ref = convert.convert_model(folder, "fast4", "cpu")
    assert isinstance(ref.lm_head, nn.Linear)
    a, b = probe.probe_logits(fast, "cpu"), probe.probe_logits(ref, "cpu")
    assert torch.isfinite(a).all() and _rel_rms(a, b) < 0.05
