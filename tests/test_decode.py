"""quantstudy.steps.benchmark.decode: the static-KV-cache decode loop (the logic the CUDA graph captures) against
Hugging Face's own forward and generate, on tiny random Llamas, the demo model and the int4 paths."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from quantstudy.config.params import BenchmarkSection  # noqa: E402
from quantstudy.steps import benchmark as bench  # noqa: E402
from quantstudy.steps.benchmark import convert, decode, production  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo-support-lm"
TINY = dict(
    prod_hidden_size=128,
    prod_intermediate_size=256,
    prod_num_layers=2,
    prod_num_heads=4,
    prod_num_kv_heads=2,
    prod_vocab_size=256,
    prod_bench_layers=2,
    batch_sizes=[1, 2],
    context_lengths=[8],
    decode_tokens=3,
    warmup=0,
    repeats=1,
    hardware_label="ci cpu",
)


def _tiny_llama(kv_heads: int = 2, tied: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def _check_against_hf(model, ids: torch.Tensor, steps: int, atol: float) -> None:
    """Prefill logits and every decode step's logits equal HF's forward with its own cache."""
    b, t = ids.shape
    dec = decode.Decoder(model, b, t + steps)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        logits = dec.prefill(ids)
        torch.testing.assert_close(logits, out.logits[:, -1], atol=atol, rtol=0)
        cache, token = decode.returned_cache(out), logits.argmax(-1, keepdim=True)
        for i in range(steps):
            out = model(input_ids=token, use_cache=True, **{decode.cache_kwarg(model): cache})
            cache = decode.returned_cache(out)
            logits = dec.decode_step(token, torch.tensor([t + i], device=ids.device))
            torch.testing.assert_close(logits, out.logits[:, -1], atol=atol, rtol=0)
            token = out.logits[:, -1].argmax(-1, keepdim=True)


def _hf_generate(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """HF greedy decoding of exactly n tokens (no stop at EOS: the loop under test has none)."""
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("kv_heads,tied", [(2, True), (4, False), (1, True)])
def test_decoder_matches_hf_forward_with_its_cache(kv_heads, tied):
    model = _tiny_llama(kv_heads, tied)
    ids = torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(1))
    _check_against_hf(model, ids, steps=6, atol=1e-4)


def test_generate_equals_hf_greedy_and_graphed_fallback():
    model = _tiny_llama()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    ref = _hf_generate(model, ids, 12)
    assert torch.equal(decode.generate(model, ids, 12, graphed=False), ref)
    assert torch.equal(decode.generate(model, ids, 12), ref)  # graphed=None: no graph on a CPU
    assert torch.equal(decode.generate(model, ids, 1), ref[:, :8])


def test_graphed_decoder_cpu_fallback_replays_the_step():
    """The wrapper's bookkeeping: static token copy, position advanced in place, same logits."""
    model = _tiny_llama()
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3))
    a, b = decode.Decoder(model, 2, 9), decode.Decoder(model, 2, 9)
    steps = decode.GraphedDecoder(b)
    assert not steps.graphed
    token = a.prefill(ids).argmax(-1, keepdim=True)
    torch.testing.assert_close(b.prefill(ids), a.prefill(ids), atol=0, rtol=0)
    steps.start(5)
    for pos in range(5, 9):
        want = a.decode_step(token, torch.tensor([pos]))
        got = steps.step(token)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert int(steps.pos) == pos + 1
        token = want.argmax(-1, keepdim=True)
    # a second round over the same cache (what the timing loop does) gives the same first step
    a2 = b.prefill(ids)
    steps.start(5)
    torch.testing.assert_close(
        steps.step(a2.argmax(-1, keepdim=True)),
        a.decode_step(a2.argmax(-1, keepdim=True), torch.tensor([5])),
        atol=0,
        rtol=0,
    )


def test_decoder_refuses_what_it_cannot_do():
    model = _tiny_llama()
    dec = decode.Decoder(model, 2, 8)
    with pytest.raises(decode.DecodeError, match="does not fit"):
        dec.prefill(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(decode.DecodeError, match="does not fit"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(decode.DecodeError, match="outside the cache"):
        decode.GraphedDecoder(dec).start(8)
    with pytest.raises(decode.DecodeError, match="CUDA device"):
        decode.GraphedDecoder(dec, graphed=True)
    with pytest.raises(decode.DecodeError, match="n_new"):
        decode.generate(model, torch.zeros(1, 3, dtype=torch.long), 0)
    model.config.model_type = "gpt2"
    with pytest.raises(decode.DecodeError, match="Llama-family"):
        decode.Decoder(model, 1, 4)


@pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="demo model not built (make demo-model)")
def test_demo_model_generate_equals_hf():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(DEMO), dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    _check_against_hf(model, ids, steps=3, atol=1e-4)
    assert torch.equal(decode.generate(model, ids, 10), _hf_generate(model, ids, 10))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    _, folder = production.production_model(BenchmarkSection(**TINY), out_dir=tmp_path_factory.mktemp("dec-awq"))
    return folder


@pytest.mark.parametrize("path", ["naive4", "fast4"])
def test_decoder_runs_the_int4_paths_modules(tiny_folder, path):
    """Whatever module a path put in place of a linear is called: the loop agrees with HF eager
    on the same converted model (the same kernels in both; only attention code differs)."""
    if bench.available_paths("cpu")[path]:
        pytest.skip(bench.available_paths("cpu")[path])
    model = convert.convert_model(tiny_folder, path)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"naive4": "NaiveAWQLinear", "fast4": "Int4CPULinear"}[path] in kinds
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(5))
    _check_against_hf(model, ids, steps=3, atol=1e-4 if path == "naive4" else 2e-3)
    assert torch.equal(decode.generate(model, ids, 6), _hf_generate(model, ids, 6))
