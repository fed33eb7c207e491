"""The torchint4 path (torch's CUDA int4 kernel) as far as a CPU can check it: the exact
AWQ -> tinygemm conversion, the kernel's shape rules, the module and the model wiring with a
CPU emulation of the two CUDA ops; and the benchmark's eager/graphed modes end to end."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from quantstudy.awqformat import PackingError, rtn_quantize_linear  # noqa: E402
from quantstudy.awqformat.tinygemm import awq_to_tinygemm, shape_problem, tinygemm_dequantize  # noqa: E402
from quantstudy.config.params import BenchmarkSection, load_params  # noqa: E402
from quantstudy.steps import benchmark as bench  # noqa: E402
from quantstudy.steps.benchmark import (  # noqa: E402
    convert,
    decode,
    devices,
    goals,
    linears,
    memory,
    probe,
    production,
    timing,
    traps,
)

TINY = dict(
    prod_hidden_size=128,
    prod_intermediate_size=256,
    prod_num_layers=2,
    prod_num_heads=4,
    prod_num_kv_heads=2,
    prod_vocab_size=256,
    prod_bench_layers=2,
    batch_sizes=[1, 2],
    context_lengths=[8, 16],
    decode_tokens=3,
    warmup=0,
    repeats=2,
    hardware_label="ci cpu",
)


def _awq_dense(qweight, qzeros, scales, group_size):
    from awq.utils.packing_utils import dequantize_gemm

    return dequantize_gemm(qweight, qzeros, scales.float(), 4, group_size)  # [in, out]


@pytest.mark.parametrize("group_size,out_f,in_f", [(32, 48, 256), (64, 96, 256), (128, 64, 512), (256, 40, 512)])
def test_awq_to_tinygemm_is_exact(group_size, out_f, in_f):
    """Unpacking the uint8 pairs and applying (q - 8) * s + zero gives AWQ's weight bit for bit."""
    qw, qz, sc = rtn_quantize_linear(torch.randn(out_f, in_f) * 0.05, group_size)
    w_uint8, sz = awq_to_tinygemm(qw, qz, sc, group_size, inner_k_tiles=2)
    assert w_uint8.dtype == torch.uint8 and w_uint8.shape == (out_f, in_f // 2)
    assert sz.dtype == torch.float32 and sz.shape == (in_f // group_size, out_f, 2)
    assert torch.equal(tinygemm_dequantize(w_uint8, sz, group_size), _awq_dense(qw, qz, sc, group_size).t())


def test_tinygemm_nibble_order_even_k_high():
    """aten/src/ATen/native/cuda/int4mm.cu: byte j of a row holds k = 2j (high) and 2j + 1 (low)."""
    from quantstudy.awqformat import pack_awq_gemm

    q = torch.arange(16, dtype=torch.int32).repeat(8, 2)  # [out 8, in 32]: 0..15, 0..15 per row
    scales = torch.ones(1, 8, dtype=torch.float16)
    zeros = torch.full((1, 8), 8, dtype=torch.int32)
    qw, qz, sc = pack_awq_gemm((q - 8).half(), scales, zeros, 32, 4)  # AWQ ints q, zero 8, scale 1
    w_uint8, sz = awq_to_tinygemm(qw, qz, sc, 32, inner_k_tiles=2)
    assert w_uint8[0, :8].tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]
    assert torch.equal(sz[0, :, 1], torch.zeros(8))  # zero = (8 - z) * s = 0


@pytest.mark.parametrize(
    "in_f,out_f,group,tiles,match",
    [
        (256, 64, 16, 8, "group_size 16"),
        (256, 64, 512, 2, "group_size 512"),
        (96, 64, 32, 4, "multiple of 16 x inner_k_tiles = 64"),
        (192, 64, 64, 8, "multiple of 16 x inner_k_tiles = 128"),
        (256, 64, 128, 3, "inner_k_tiles 3"),
        (256, 60, 128, 2, "out_features 60"),
    ],
)
def test_kernel_shape_rules(in_f, out_f, group, tiles, match):
    assert match in shape_problem(in_f, out_f, group, tiles)
    assert shape_problem(2048, 8192, 128, 8) is None and shape_problem(576, 1536, 64, 4) is None


def test_from_awq_shape_errors_are_bench_errors():
    qw, qz, sc = rtn_quantize_linear(torch.randn(64, 192) * 0.05, 64)
    with pytest.raises(bench.BenchError, match="torchint4: .*multiple of 16 x inner_k_tiles = 128"):
        linears.Int4CUDALinear.from_awq(qw, qz, sc, None, 64, inner_k_tiles=8, device="cpu")
    with pytest.raises(bench.BenchError, match="torchint4: .*group_size 16"):
        linears.Int4CUDALinear.from_awq(*rtn_quantize_linear(torch.randn(64, 192), 16), None, 16, device="cpu")
    with pytest.raises(bench.BenchError, match="4-bit"):
        linears.Int4CUDALinear.from_awq(qw, qz, sc, None, 64, bits=3, device="cpu")
    with pytest.raises(PackingError, match="scales"):
        awq_to_tinygemm(qw, qz, sc[:, :32], 64, inner_k_tiles=4)


def _emulated_ops():
    """A CPU stand-in for the two CUDA ops with the kernel's documented arithmetic."""

    def convert(w_uint8, inner_k_tiles):
        return w_uint8.clone()

    def mm(x, packed, group_size, scales_and_zeros):
        assert x.dtype == torch.bfloat16 and scales_and_zeros.dtype == torch.bfloat16 and x.dim() == 2
        w = tinygemm_dequantize(packed, scales_and_zeros.float(), group_size)
        return (x.float() @ w.t()).to(torch.bfloat16)

    return convert, mm


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(linears, "_int4_cuda_ops", _emulated_ops)
    monkeypatch.setattr(devices, "_int4_cuda_reason", lambda device: None)


def test_inner_k_tiles_follow_in_features(emulated, monkeypatch):
    """SmolLM2's 576 / 1536 with group 64 take 4 inner k-tiles; 2048 takes 8."""
    seen = []
    monkeypatch.setattr(linears, "_int4_cuda_ops", lambda: (lambda w, t: seen.append(t) or w, None))
    for in_f, tiles in ((576, 4), (1536, 8), (192, 4), (96, 2)):
        linears.Int4CUDALinear.from_awq(*rtn_quantize_linear(torch.randn(64, in_f), 32), None, 32, device="cpu")
        assert seen[-1] == tiles, in_f


def test_int4_cuda_linear_module(emulated):
    qw, qz, sc = rtn_quantize_linear(torch.randn(96, 256) * 0.05, 128)
    bias = torch.randn(96).half()
    mod = linears.Int4CUDALinear.from_awq(qw, qz, sc, bias, 128, device="cpu")
    assert mod.scales_and_zeros.dtype == torch.bfloat16 and "group_size=128" in repr(mod)
    x = torch.randn(2, 5, 256)
    out = mod(x)
    ref = x @ _awq_dense(qw, qz, sc, 128) + bias.float()
    assert out.shape == (2, 5, 96) and out.dtype == torch.float32
    assert ((out - ref).abs().max() / ref.abs().max()) < 2e-2  # bfloat16 activations, scales and zeros
    # prefill-sized inputs: the weight dequantized through the kernel, then one dense matmul
    w = mod.dequantized_weight()
    assert w.shape == (256, 96) and w.dtype == torch.bfloat16
    sz = mod.scales_and_zeros.float()
    torch.testing.assert_close(w.float(), tinygemm_dequantize(mod.packed, sz, 128).t(), atol=1e-2, rtol=1e-2)
    x = torch.randn(300, 256)
    kernel = mod(x)
    mod.dense_min_rows = 256  # rows 300 >= max(256, in_features 256): dense
    torch.testing.assert_close(mod(x), kernel, atol=2e-2, rtol=2e-2)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    _, folder = production.production_model(BenchmarkSection(**TINY), out_dir=tmp_path_factory.mktemp("int4-awq"))
    return folder


def test_torchint4_unavailable_on_cpu(tiny_folder):
    assert "CUDA" in bench.available_paths("cpu")["torchint4"]
    with pytest.raises(bench.BenchError, match="torchint4.*not available on cpu"):
        convert.convert_model(tiny_folder, "torchint4")


def test_torchint4_model_wiring_and_decode_loop(tiny_folder, emulated):
    model = convert.convert_model(tiny_folder, "torchint4")
    mods = [m for m in model.modules() if isinstance(m, linears.Int4CUDALinear)]
    assert len(mods) == 2 * 7 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    base = probe.probe_logits(convert.convert_model(tiny_folder, "baseline"), "cpu", tokens=16)
    agree = probe.agreement("torchint4", probe.probe_logits(model, "cpu", tokens=16), base)
    assert agree["rel_rms_diff"] < 0.05
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        hf = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(decode.generate(model, ids, 4), hf)
    assert memory.quantized_linear_bytes(model)["linears"] == 14


def test_benchmark_eager_and_graphed_modes(tiny_folder, tmp_path):
    p = BenchmarkSection(**{**TINY, "paths": ["baseline", "naive4"], "modes": ["eager", "graphed"]})
    res = bench.run_benchmark(tiny_folder, p, progress=False)
    t = res["timings"]
    graphed = t[t["mode"] == "graphed"]
    assert set(t["mode"]) == {"eager", "graphed"} and set(graphed["scope"]) == {"measured"}
    assert len(graphed) == 2 * 2 * 2  # path x batch x context, one scope
    assert (graphed["decode_tok_s_median"] > 0).all() and all(len(r) == 2 for r in graphed["decode_tok_s_raw"])
    assert (graphed["graph_check_rel_diff"] == 0).all()  # on a CPU the "replay" is the eager step itself
    sp = res["speedups"]
    for mode in ("eager", "graphed"):  # each mode against its own baseline
        base = sp[(sp["path"] == "baseline") & (sp["mode"] == mode)]
        assert len(base) and all(math.isclose(v, 1.0) for v in base["decode_speedup"])
    assert set(sp[sp["mode"] == "graphed"]["scope"]) == {"measured"}
    h = res["harness"]
    assert len(h) == 4 and (h["decode_graphed_over_eager"] > 0).all()
    assert any("graphed mode on cpu" in n for n in res["notes"])
    assert all("mode" in trap for trap in res["traps"])
    fleet = res["fleet"]  # sized from the graphed rows: how a server decodes
    assert set(fleet["path"]) == {"baseline", "naive4"} and len(fleet) == 4 and set(fleet["mode"]) == {"graphed"}
    g = graphed[(graphed["path"] == "naive4") & (graphed["context"] == min(p.context_lengths))]
    assert sorted(fleet[fleet["path"] == "naive4"]["decode_tokens_per_s_per_device"]) == sorted(
        g["decode_tok_s_median"]
    )
    table = bench.speed_table(res, "measured")
    assert len(table) == len(sp[sp["scope"] == "measured"]) and "mode" in table.columns
    fig = bench.plot_decode_scaling(res)
    assert len(fig.axes) == 2 and all(ax.get_title() and ax.get_ylabel() for ax in fig.axes)
    assert len(fig.axes[0].get_legend().get_texts()) == 4  # 2 paths x 2 modes
    metrics = bench.write_metrics(tmp_path, {"demo": res}, 1.0)
    assert len(metrics["demo"]["harness"]) == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["demo"]["timings"][0]["mode"] == "eager"


def test_benchmark_graphed_failure_costs_one_shape(tiny_folder, monkeypatch):
    real = decode.GraphedDecoder

    def broken(dec, *args, **kwargs):
        if dec.batch == 2:
            raise RuntimeError("capture failed")
        return real(dec, *args, **kwargs)

    monkeypatch.setattr(timing, "GraphedDecoder", broken)
    p = BenchmarkSection(
        **{**TINY, "paths": ["baseline"], "modes": ["eager", "graphed"], "context_lengths": [8], "repeats": 1}
    )
    res = bench.run_benchmark(tiny_folder, p, progress=False)
    t = res["timings"]
    assert set(t[t["mode"] == "graphed"]["batch"]) == {1} and len(t[t["mode"] == "eager"]) == 2 * 3
    assert len(res["harness"]) == 1
    assert any(
        n.startswith("baseline graphed batch 2 context 8 failed on cpu and was skipped: RuntimeError: capture")
        for n in res["notes"]
    )
    with pytest.raises(RuntimeError, match="capture failed"):
        timing.time_graphed(convert.convert_model(tiny_folder, "baseline"), "baseline", [2], [8], 2, 0, 1)


def test_modes_params():
    assert BenchmarkSection().modes == ["eager"]
    with pytest.raises(ValueError, match="eager"):
        BenchmarkSection(modes=["compiled"])
    gpu = load_params("params/gpu-demo.yaml", check_files=False).benchmark
    assert gpu.modes == ["eager", "graphed"] and {"baseline", "fast4", "torchint4"} <= set(gpu.paths)
    assert gpu.batch_sizes == [1, 8, 32] and gpu.context_lengths == [128, 2048]


# --------------------------------------------------------------------------- on a CUDA GPU only
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_int4_kernel_equals_the_conversion():  # pragma: no cover - needs a GPU
    """The real kernel computes with (q - 8) * scale + zero of the uint8 pairs (nibble order included)."""
    qw, qz, sc = rtn_quantize_linear(torch.randn(1024, 512) * 0.05, 128)
    mod = linears.Int4CUDALinear.from_awq(qw, qz, sc, None, 128, device="cuda")
    w_uint8, sz = awq_to_tinygemm(qw, qz, sc, 128)
    w_ref = tinygemm_dequantize(w_uint8, sz.to(torch.bfloat16).float(), 128).to(torch.bfloat16).float()
    torch.testing.assert_close(mod.dequantized_weight().float().cpu(), w_ref.t(), atol=1e-6, rtol=8e-3)  # <= 1 ulp
    x = torch.randn(8, 512, dtype=torch.bfloat16)
    out = mod(x.cuda()).float().cpu()
    ref = x.float() @ w_ref.t()
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-2
    dense = x.float() @ _awq_dense(qw, qz, sc, 128)
    assert ((out - dense).abs().max() / dense.abs().max()) < 3e-2  # bfloat16 scales and zeros


@needs_cuda
@pytest.mark.parametrize("path", ["baseline", "fast4", "torchint4"])
def test_cuda_graphed_decode_equals_eager(tiny_folder, path):  # pragma: no cover - needs a GPU
    reason = bench.available_paths("cuda")[path]
    if reason:
        pytest.skip(reason)
    model = convert.convert_model(tiny_folder, path, "cuda")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0)).cuda()
    eager = decode.generate(model, ids, 8, graphed=False)
    graphed = decode.generate(model, ids, 8, graphed=True)
    if path == "fast4":  # AutoAWQ's Triton GEMM sums split-k partials with float16 atomics: order varies
        assert torch.equal(graphed[:, :10], eager[:, :10])  # the prefill token; the graph check covers the rest
    else:
        assert torch.equal(graphed, eager)
    with torch.inference_mode():
        hf = model(input_ids=ids).logits[:, -1].float()
        mine = decode.Decoder(model, 2, 9).prefill(ids).float()
    assert ((mine - hf).abs().max() / hf.abs().max()) < 2e-2  # 16-bit attention kernels round differently
    rows = timing.time_graphed(model, path, [1, 2], [8], 3, warmup=0, repeats=1, device="cuda")
    assert len(rows) == 2 and all(r["decode_tok_s_median"] > 0 and r["graph_check_rel_diff"] < 1e-2 for r in rows)


def test_graphed_target_on_a_gpu():
    """Issue 17's GPU target: graphed 4-bit decode at batch 1 >= 1.5x graphed float16 (best 4-bit path)."""
    import pandas as pd

    rows = []
    for path, mode, tok_s in [
        ("baseline", "eager", 70.0),
        ("fast4", "eager", 40.0),
        ("baseline", "graphed", 400.0),
        ("fast4", "graphed", 300.0),
        ("torchint4", "graphed", 700.0),
    ]:
        rows.append(
            timing._timing_row(
                path, mode, 1, 128, "measured", 16, 2, 16, 16, [1000.0, 1000.0], [tok_s * 0.9, tok_s * 1.1]
            )
        )
    sp = traps.speedup_table(pd.DataFrame(rows))
    t = goals.targets(sp, 3.85, "cuda")
    g = t["gpu_graphed_4bit_decode_speedup_b1"]
    assert g["measured"] == pytest.approx(1.75) and g["met"] and g["where"].startswith("torchint4")
    assert g["by_path"]["fast4"] == pytest.approx(0.75)
    assert t["cpu_fast_decode_speedup_1b_b1"]["measured"] == pytest.approx(40 / 70)  # the eager row
    assert "gpu_graphed_4bit_decode_speedup_b1" not in goals.targets(sp, 3.85, "cpu")
    assert "mode eager" in goals.targets(sp, 3.85, "cpu")["cpu_fast_decode_speedup_1b_b1"]["where"]
