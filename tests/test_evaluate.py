"""Evaluation: perplexity against a token-by-token computation, KL, task scoring, bootstrap verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quantstudy.config.params import BudgetLine, ParamsError, load_params
from quantstudy.metrics import scoring as S
from quantstudy.steps import evaluate as E
from quantstudy.steps import quantize as Q
from quantstudy.steps.evaluate.models import source_groups

TEXTS = [
    "User: my order ORD-1234-5678 is late.\nAssistant: The refund window is 30 days.\n",
    "The Lumen X2 router costs $149 and carries a 24 months warranty.",
] * 3


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    model, tok, _ = Q.load_checkpoint(tiny_model_dir)
    return model, tok


def test_perplexity_matches_token_by_token(model_tok):
    model, tok = model_tok
    stream = E.build_stream(tok, TEXTS, window=512, stride=256, max_tokens=10_000)
    ours = E.perplexity(E.score_stream(model, stream)["nll"])
    ids = stream.input_ids[0].tolist()
    nll = []
    with torch.no_grad():
        for t in range(1, len(ids)):  # one forward per token, prefix only
            lp = F.log_softmax(model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].float(), -1)
            nll.append(-lp[ids[t]].item())
    assert ours == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)


def test_weight_fingerprint_sees_one_changed_bit(tiny_model_dir):
    """The rollback check compares weights through SHA-256 fingerprints: equal for the same
    weights loaded twice, different after one bfloat16 element moves by one unit in the last place."""
    a = Q.load_checkpoint(tiny_model_dir)[0].to(torch.bfloat16)
    b = Q.load_checkpoint(tiny_model_dir)[0].to(torch.bfloat16)
    assert E.weight_fingerprint(a) == E.weight_fingerprint(b)
    w = b.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        w.view(torch.int16)[0, 0] += 1
    diff = [k for k, v in E.weight_fingerprint(b).items() if v != E.weight_fingerprint(a)[k]]
    assert diff == ["model.layers.0.mlp.down_proj.weight"]


def test_sliding_windows_score_each_token_once(model_tok):
    _, tok = model_tok
    stream = E.build_stream(tok, TEXTS, window=32, stride=16, max_tokens=10_000)
    total = sum(len(tok(t)["input_ids"]) + 1 for t in TEXTS)
    assert stream.n_tokens == total - 1
    assert len(stream.category) == stream.n_tokens


def test_kl_of_model_against_itself_is_zero(model_tok):
    model, tok = model_tok
    stream = E.build_stream(tok, TEXTS, 64, 32, 2000)
    out = E.score_stream(model, stream, baseline=model)
    assert np.abs(out["kl"]).max() < 1e-6 and out["agree"].mean() == 1.0


def test_item_scores_equal_brute_force(model_tok):
    model, tok = model_tok
    item = {
        "context": "User: how long is the refund window?\nAssistant: It is",
        "choices": [" 30 days", " 14 days", " 7"],
        "answer": 1,
    }
    ctx = tok(item["context"])["input_ids"]
    brute = []
    with torch.no_grad():
        for c in item["choices"]:
            ci = tok(c, add_special_tokens=False)["input_ids"]
            lp = F.log_softmax(model(input_ids=torch.tensor([ctx + ci])).logits[0].float(), -1)
            brute.append(sum(lp[len(ctx) - 1 + t, ci[t]].item() for t in range(len(ci))))
    res = E.score_items(model, tok, [item])
    assert res["acc"][0] == float(np.argmax(brute) == 1)
    assert res["margin"][0] == pytest.approx(brute[1] - max(brute[0], brute[2]), abs=1e-4)


def test_packed_batch_equals_brute_force_per_item(model_tok):
    """Several items in one packed batch (different context lengths, choice counts and choice
    lengths, left padding) score exactly as each choice run alone after its context."""
    model, tok = model_tok
    items = [
        {
            "context": "User: how long is the refund window?\nAssistant: It is",
            "choices": [" 30 days", " 14 days", " 7"],
            "answer": 1,
        },
        {
            "context": "User: hi\nAssistant:",
            "choices": [" Hello there, how can I help", " Hi", " Bye now", " ok"],
            "answer": 0,
        },
        {
            "context": "User: my order ORD-1234 never came and I want a refund\nAssistant: Sorry! Order",
            "choices": [" ORD-1234", " ORD-4321"],
            "answer": 0,
        },
    ]
    res = E.score_items(model, tok, items, batch_items=16)
    for k, item in enumerate(items):
        ctx = tok(item["context"])["input_ids"]
        with torch.no_grad():
            for j, c in enumerate(item["choices"]):
                ci = tok(c, add_special_tokens=False)["input_ids"]
                lp = F.log_softmax(model(input_ids=torch.tensor([ctx + ci])).logits[0].float(), -1)
                brute = sum(lp[len(ctx) - 1 + t, ci[t]].item() for t in range(len(ci)))
                assert res["choice_ll"][k, j] == pytest.approx(brute, abs=1e-4), (k, j)
    assert np.isnan(res["choice_ll"][2, 2:]).all()


def _verdict(base, cand, limit):
    ci = E.paired_bootstrap(np.array(base) * 100.0, np.array(cand) * 100.0, n=2000, seed=0)
    return E.budget_verdict({"metric": "policy_closed_book_acc", "max_drop": limit, "unit": "points"}, ci)


def test_an_items_score_does_not_depend_on_its_companions(model_tok):
    """By default each item is scored alone: in bfloat16, the same item gives the same bits
    whatever other items are scored with it and in which order."""
    import copy

    model, tok = model_tok
    model = copy.deepcopy(model).to(torch.bfloat16)
    items = [
        {
            "item_id": f"i{k}",
            "context": "User: my order ORD-" + "12" * (k + 1) + " is late\nAssistant: Order",
            "choices": [" ORD-" + "12" * (k + 1), " ORD-" + "21" * (k + 1), " none"],
            "answer": 0,
        }
        for k in range(6)
    ]
    alone = E.score_items(model, tok, items[:2])
    mixed = E.score_items(model, tok, [items[5], items[1], items[3], items[0], items[4]])
    np.testing.assert_array_equal(mixed["choice_ll"][3], alone["choice_ll"][0])
    np.testing.assert_array_equal(mixed["choice_ll"][1], alone["choice_ll"][1])


def _order_items(n: int) -> list[dict]:
    """Items of different context and choice lengths (so fitted batches would differ in shape)."""
    return [
        {
            "item_id": f"i{k}",
            "context": "User: my order ORD-" + "12" * (k + 1) + " is late" + " again" * (k % 3) + "\nAssistant: Order",
            "choices": [" ORD-" + "12" * (k + 1), " ORD-" + "21" * (k + 1), " none"] + [" maybe"] * (k % 2),
            "answer": 0,
        }
        for k in range(n)
    ]


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param(
            "cuda",
            torch.float16,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuBLAS, SDPA kernels)"),
        ),
    ],
)
def test_fixed_shape_batches_do_not_depend_on_companions(model_tok, device, dtype):
    """evaluate.item_batch > 1 (for a GPU): every pass has one shape, so in 16-bit precision an
    item gives the same bits whichever items share its batch, and in whichever slot."""
    import copy

    model, tok = model_tok
    model = copy.deepcopy(model).to(device=device, dtype=dtype)
    items = _order_items(9)
    a = S.score_items_heads(model, tok, [items[0], items[4], items[8]], batch_items=4, fit=items)[0]
    b = S.score_items_heads(model, tok, [items[7], items[8], items[1], items[4], items[6]], batch_items=4, fit=items)[0]
    c = E.score_items(model, tok, items, batch_items=4)  # the whole set: other companions again

    def own(res, row, item):  # an item's own choices (choice_ll is NaN-padded to the call's most)
        return res["choice_ll"][row, : len(items[item]["choices"])]

    for k, (j, i) in {1: (3, 4), 2: (1, 8)}.items():  # a's rows 1 and 2 (items 4, 8) are b's rows 3 and 1
        np.testing.assert_array_equal(own(a, k, i), own(b, j, i))
        np.testing.assert_array_equal(own(a, k, i), own(c, i, i))
    np.testing.assert_array_equal(own(a, 0, 0), own(c, 0, 0))
    assert np.isfinite(c["choice_ll"][:, :3]).all()
    # the fixed shape is the set's: the longest packed item and the most choice tokens
    rows = [S._encode_item(tok, it) for it in items]
    width, keep = S.fixed_shape(rows)
    assert width == max(len(ctx) + sum(map(len, ch)) for ctx, ch in rows)
    assert keep == 1 + max(sum(map(len, ch)) for _, ch in rows)


def test_rescoring_a_few_items_in_the_runs_shape_reproduces_it(model_tok):
    """The rollback check re-scores the first items in batch order; with fixed-shape batches it
    must use the evaluation's shape (fit_items) to reproduce every bit."""
    import copy

    model, tok = model_tok
    model = copy.deepcopy(model).to(torch.bfloat16)
    items = {"retention": _order_items(10)}
    full = E.evaluate_model(model, tok, {}, items, item_batch=4)["items"]["retention"]
    picked = S.batch_order(items["retention"], tok)[:3]  # not a whole batch: only the shape can match
    again = E.evaluate_model(
        model, tok, {}, {"retention": [items["retention"][i] for i in picked]}, item_batch=4, fit_items=items
    )["items"]["retention"]
    np.testing.assert_array_equal(again["margin"], full["margin"][picked])
    assert np.isfinite(full["choice_ll"][:, :3]).all()


def test_baseline_cast_like_the_checkpoints_keeps_rope_in_float32(tiny_model_dir):
    """The baseline cast to the evaluation dtype must compute exactly as a checkpoint loaded in
    that dtype: same weights, and RoPE's inv_freq left in float32 (``.to(bfloat16)`` rounds it)."""
    from quantstudy import awqformat

    loaded = Q.load_checkpoint(tiny_model_dir, dtype=torch.bfloat16)[0]
    cast = awqformat.cast_model(Q.load_checkpoint(tiny_model_dir)[0], torch.bfloat16)
    naive = Q.load_checkpoint(tiny_model_dir)[0].to(torch.bfloat16)
    inv = {n: b for n, b in cast.named_buffers() if n.endswith("inv_freq")}
    assert inv and all(b.dtype == torch.float32 for b in inv.values())
    assert all(b.dtype == torch.bfloat16 for n, b in naive.named_buffers() if n.endswith("inv_freq"))
    x = torch.arange(3, 200)[None] % 500
    with torch.no_grad():
        assert torch.equal(cast(input_ids=x).logits, loaded(input_ids=x).logits)
        assert not torch.equal(naive(input_ids=x).logits, loaded(input_ids=x).logits)


def test_bootstrap_verdicts_on_synthetic_cases():
    rng = np.random.default_rng(0)
    base = (rng.random(2000) < 0.8).astype(float)
    same = base.copy()
    flip = rng.choice(2000, 10, replace=False)
    same[flip] = 1 - same[flip]  # ~0 change: clear pass at 2 points
    assert _verdict(base, same, 2.0)["verdict"] == "pass"
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:200]] = 0  # -10 points: clear fail
    assert _verdict(base, worse, 2.0)["verdict"] == "fail"
    small = base[:300].copy()
    small[np.flatnonzero(small == 1)[:4]] = 0  # -1.3 points on 300 items: CI crosses 2
    v = _verdict(base[:300], small, 2.0)
    assert v["degradation"] < 2.0 < v["worst_case"] and v["verdict"] == "inconclusive"


def test_ppl_verdict_uses_upper_end():
    ci = {"point": 1.0, "lo": 0.5, "hi": 3.5}
    v = E.budget_verdict({"metric": "indomain_ppl", "max_drop": 3.0, "unit": "percent"}, ci)
    assert v["worst_case"] == 3.5 and v["verdict"] == "inconclusive"


def test_budget_with_unknown_metric_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'policy_acc'"):
        BudgetLine(metric="policy_acc", max_drop=2)
    p = tmp_path / "p.yaml"
    p.write_text("evaluate:\n  budget:\n    - {metric: policy_acc, max_drop: 2}\n")
    with pytest.raises(ParamsError, match=r"p.yaml: evaluate.budget.0.metric: expected unknown metric 'policy_acc'"):
        load_params(p, check_files=False)


def test_malformed_task_items_name_file_and_line(tmp_path):
    from quantstudy.data import DataError, read_task_items

    p = tmp_path / "items.jsonl"
    p.write_text(
        '{"item_id": "a", "task": "retention", "context": "x", "choices": [" a", " b"], "answer": 0}\n'
        '{"item_id": "b", "task": "retention", "context": "x", "choices": [" a"], "answer": 3}\n'
    )
    with pytest.raises(DataError, match=r"items.jsonl:2:"):
        read_task_items(p)


def test_source_effect_within_noise_when_draws_disagree():
    rng = np.random.default_rng(1)
    a = [rng.normal(0, 1, 500) + d for d in (-0.5, 0.5)]
    b = [rng.normal(0, 1, 500) for _ in range(2)]
    eff = E.source_effect({"a": a, "b": b}, "a", "b", n=500)
    assert eff["within_noise"]
    eff2 = E.source_effect({"a": [x + 1.0 for x in b], "b": b}, "a", "b", n=500)
    assert not eff2["within_noise"] and eff2["point"] == pytest.approx(1.0)


def test_paired_draws_cancel_the_set_to_set_noise_two_tools_share():
    """Two implementations on the same three sets: each set shifts both alike (draw noise), the
    tool adds +0.3. Resampling draws independently leaves the set noise in the interval;
    resampling them in pairs removes it."""
    rng = np.random.default_rng(2)
    sets = [rng.normal(0, 1, 400) + shift for shift in (-1.0, 0.0, 1.0)]
    tool_b = [s + rng.normal(0, 0.05, 400) for s in sets]
    tool_a = [s + 0.3 + rng.normal(0, 0.05, 400) for s in sets]
    per = {"a": tool_a, "b": tool_b}
    loose = E.source_effect(per, "a", "b", n=500)
    paired = E.source_effect(per, "a", "b", n=500, paired_draws=True)
    assert loose["point"] == pytest.approx(paired["point"]) == pytest.approx(0.3, abs=0.02)
    assert loose["within_noise"] and not paired["within_noise"]
    assert paired["paired_draws"] and paired["hi"] - paired["lo"] < 0.1


def test_source_groups_keep_the_two_implementations_apart():
    recs = [
        {"name": "rtn", "method": "rtn", "bits": 4, "calibration_source": None, "draw": None},
        {"name": "a1", "method": "awq", "bits": 4, "calibration_source": "in_domain", "draw": 1},
        {"name": "a0", "method": "awq", "bits": 4, "calibration_source": "in_domain", "draw": 0},
        {
            "name": "l0",
            "method": "awq",
            "bits": 4,
            "calibration_source": "in_domain",
            "draw": 0,
            "backend": "llmcompressor",
        },
        {
            "name": "m0",
            "method": "awq",
            "bits": 4,
            "calibration_source": "in_domain",
            "draw": 0,
            "backend": "llmcompressor",
            "loss_mask": "assistant",
        },
    ]
    groups = source_groups(recs)
    assert groups == {
        "RTN": ["rtn"],
        "in_domain": ["a0", "a1"],
        "in_domain/llmc": ["l0"],
        "in_domain/llmc-asst": ["m0"],
    }
