"""Step 04 benchmark: memory and prefill/decode speed of each inference path, the
"quantized is slower than baseline" trap, and the fleet size / cost it implies.

Inference paths (``available_paths`` says which run here, and why not):

``baseline``
    Dense model: float32 on CPU, float16 on GPU. Built from an AWQ folder it is the
    dequantized model (same shapes, so the same speed and memory as the original dense one).
``naive4``
    :class:`NaiveAWQLinear` keeps AutoAWQ's packed GEMM tensors (``qweight`` int32 [in, out/8],
    ``qzeros`` int32 [in/g, out/8], ``scales`` float16 [in/g, out]) and unpacks them with
    ``awq.utils.packing_utils.dequantize_gemm`` on *every* forward call, then matmuls. This is
    what 4-bit weights cost without kernels.
``fast4``
    CPU: :class:`Int4CPULinear`, torch's int4 weight-only kernel
    ``aten._weight_int4pack_mm_for_cpu``. Torch's convention is ``w = (q - 8) * scale + zero``
    with a float ``zero`` per group and output column; AWQ's is ``w = (q - z) * s`` with
    ``q, z`` in 0..15, so the exact conversion is ``scale = s`` and ``zero = (8 - z) * s``.
    On this kind of CPU (AVX512-BF16/AMX) the kernel is only fast with bfloat16 activations and
    bfloat16 scales/zeros: float32 inputs take a slow path ~3-4x (1 token) to ~80x (128 tokens)
    slower than the dense float32 matmul, and float16 is ~13x slower than bfloat16. So the
    layer casts ``x`` to bfloat16, runs the kernel and casts back; scales and zeros are rounded
    to bfloat16 (8-bit mantissa), which costs ~0.3% relative error against the float16-scale
    dequantized weights. ``compute_dtype=torch.float32`` keeps an exact (slow) reference.
    GPU: AutoAWQ's own kernels via ``AutoAWQForCausalLM.from_quantized`` (needs ``awq_ext`` or
    triton; not exercisable on a CPU-only machine).
``torchint4`` (CUDA only)
    :class:`Int4CUDALinear`, torch's own CUDA int4 kernel ``aten._weight_int4pack_mm``
    (tinygemm) with bfloat16 activations; the AWQ weights are converted exactly as for the CPU
    kernel (:mod:`quantstudy.awqformat.tinygemm`). Its non-quantized modules run in bfloat16.
    Prefill-sized inputs (>= 1,024 rows and >= in_features) take the weight dequantized through
    the kernel and one dense matmul, as AutoAWQ does; decode steps always run the kernel.

Non-quantized modules (embeddings, norms, ``lm_head``) stay in the baseline dtype in every
path (bfloat16 for ``torchint4``), so speed differences come from the quantized linears alone.

Modes (``benchmark.modes``): ``eager`` is Hugging Face's forward with its dynamic cache;
``graphed`` is :mod:`.decode`: a static KV cache, eager prefill, and each decode step
replayed from a CUDA graph (on a CPU the same loop runs without a graph). Each (path, mode) is
compared with the baseline in the same mode; ``harness`` compares the two modes of the baseline.

Timing, its scopes (``measured``, ``layers``, ``full_model``) and the graphed mode: :mod:`.timing`.

Modules, lowest first: ``devices`` (device, paths available, dtype per path, ``BenchError``),
``section`` (the params section), ``linears`` (the quantized modules of each path),
``convert`` (checkpoint -> a path's model), ``probe`` (logits agreement with the baseline),
``production`` (the production-shaped model), ``memory``, ``decode`` (static-cache decode
loops), ``timing``, ``traps`` (speed-ups and the trap detector), ``fleet`` (devices and cost),
``goals`` (the targets), ``views`` (tables and figures) and ``run`` (the step's driver). This
package re-exports what the step-04 notebook, the report and ``quantstudy bench`` call.
"""

from quantstudy.steps.benchmark.devices import BenchError, available_paths
from quantstudy.steps.benchmark.run import (
    benchmark_checkpoint,
    pick_checkpoint,
    production_benchmark,
    run_benchmark,
    write_metrics,
)
from quantstudy.steps.benchmark.views import (
    agreement_table,
    fleet_table,
    plot_decode_scaling,
    plot_memory,
    plot_speedups,
    speed_table,
)

__all__ = [
    "BenchError",
    "available_paths",
    "benchmark_checkpoint",
    "pick_checkpoint",
    "production_benchmark",
    "run_benchmark",
    "write_metrics",
    "agreement_table",
    "fleet_table",
    "plot_decode_scaling",
    "plot_memory",
    "plot_speedups",
    "speed_table",
]
