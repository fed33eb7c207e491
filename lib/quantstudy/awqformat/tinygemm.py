"""AWQ GEMM tensors -> the input of torch's CUDA int4 kernel (tinygemm), exactly.

``torch.ops.aten._convert_weight_to_int4pack(w_uint8, inner_k_tiles)`` takes the weight as
uint8 [N, K/2] (N = out features, K = in features), two 4-bit values per byte, the **even**
k in the high nibble: ``byte = (q[:, 0::2] << 4) | q[:, 1::2]`` (aten/src/ATen/native/cuda/
int4mm.cu, ``matrix_to_m16n8k16_Bint4_layout``: int32 input v0..v7 equals uint8 input
v0H, v0L, v1H, ...). ``_weight_int4pack_mm(x_bf16, packed, group_size, scales_and_zeros)``
dequantizes ``w = (q - 8) * scale + zero`` with ``scales_and_zeros`` bfloat16 [K/g, N, 2].
AWQ's convention is ``w = (q - z) * s`` with q, z in 0..15, so ``scale = s`` and
``zero = (8 - z) * s`` reproduce it exactly (in float32; the kernel rounds them to bfloat16).

Everything here is plain tensor arithmetic and runs on a CPU; the kernel itself needs CUDA.
"""

from __future__ import annotations

import torch

from quantstudy.awqformat.packing import PackingError, unpack_awq_gemm

GROUP_SIZES = (32, 64, 128, 256)  # the groups _weight_int4pack_mm handles
INNER_K_TILES = (2, 4, 8)


def shape_problem(in_features: int, out_features: int, group_size: int, inner_k_tiles: int = 8) -> str | None:
    """Why the CUDA int4 kernel cannot hold a [out, in] weight (None when it can)."""
    if group_size not in GROUP_SIZES:
        return f"group_size {group_size}: the kernel handles {', '.join(map(str, GROUP_SIZES))}"
    if inner_k_tiles not in INNER_K_TILES:
        return f"inner_k_tiles {inner_k_tiles}: expected one of {INNER_K_TILES}"
    if in_features % group_size:
        return f"in_features {in_features} is not a multiple of group_size {group_size}"
    if in_features % (16 * inner_k_tiles):
        return (
            f"in_features {in_features} is not a multiple of 16 x inner_k_tiles = {16 * inner_k_tiles}; "
            "use a smaller inner_k_tiles"
        )
    if out_features % 8:
        return f"out_features {out_features} is not a multiple of 8 (the kernel's n-tile)"
    return None


def awq_to_tinygemm(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int, inner_k_tiles: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAWQ GEMM (qweight [K, N/8], qzeros [K/g, N/8], scales [K/g, N]) ->
    (uint8 [N, K/2] for ``_convert_weight_to_int4pack``, float32 scales_and_zeros [K/g, N, 2]).

    Raises :class:`PackingError` naming the shape the kernel cannot take.
    """
    iweight, izeros = unpack_awq_gemm(qweight, qzeros, 4)  # [K, N], [K/g, N] in 0..15
    k, n = iweight.shape
    problem = shape_problem(k, n, group_size, inner_k_tiles)
    if problem:
        raise PackingError(problem)
    if scales.shape != (k // group_size, n):
        raise PackingError(f"scales {tuple(scales.shape)}: expected {(k // group_size, n)} for group_size {group_size}")
    q = iweight.t().contiguous()  # [N, K]
    w_uint8 = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()
    s = scales.float()
    scales_and_zeros = torch.stack([s, (8 - izeros).float() * s], dim=-1).contiguous()
    return w_uint8, scales_and_zeros


def tinygemm_dequantize(w_uint8: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The weight [N, K] the kernel computes with: ``(q - 8) * scale + zero`` (float32 reference)."""
    n = w_uint8.shape[0]
    q = torch.stack([w_uint8 >> 4, w_uint8 & 15], dim=-1).reshape(n, -1).float()  # even k: high nibble
    sz = scales_and_zeros.float()
    scale = sz[..., 0].t().repeat_interleave(group_size, dim=1)  # [N, K]
    zero = sz[..., 1].t().repeat_interleave(group_size, dim=1)
    return (q - 8) * scale + zero
