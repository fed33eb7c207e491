"""The quantized linear modules each inference path puts in place of ``nn.Linear``:
``NaiveAWQLinear`` (naive4), ``Int4CPULinear`` (fast4 on a CPU), ``Int4CUDALinear``
(torchint4) and AutoAWQ's own ``WQLinear_GEMM`` (fast4 on a GPU)."""

from __future__ import annotations

import torch
from torch import nn

from quantstudy.awqformat import PackingError, unpack_awq_gemm
from quantstudy.awqformat.autoawq import quiet_awq
from quantstudy.awqformat.tinygemm import awq_to_tinygemm
from quantstudy.steps.benchmark.devices import BenchError


def _int4_cuda_ops():
    """(convert, matmul) of torch's CUDA int4 kernel; tests swap in a CPU emulation."""
    return torch.ops.aten._convert_weight_to_int4pack, torch.ops.aten._weight_int4pack_mm


class NaiveAWQLinear(nn.Module):
    """Packed AWQ GEMM tensors, unpacked with ``dequantize_gemm`` on every call (no kernel)."""

    def __init__(
        self,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        bits: int = 4,
    ):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[0], qweight.shape[1] * (32 // bits)
        self.group_size, self.bits = group_size, bits
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("qzeros", qzeros.contiguous())
        self.register_buffer("scales", scales.half().contiguous())
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quiet_awq()
        from awq.utils.packing_utils import dequantize_gemm  # lazy: awq costs seconds to import

        w = dequantize_gemm(self.qweight, self.qzeros, self.scales.to(x.dtype), self.bits, self.group_size)
        out = torch.matmul(x, w)  # w is [in, out]
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class Int4CPULinear(nn.Module):
    """torch's int4 weight-only CPU kernel with AWQ's weights converted exactly.

    Buffers: ``packed`` uint8 [out_padded, in/2] (from ``_convert_weight_to_int4pack_for_cpu``)
    and ``scales_and_zeros`` [in/g, out_padded, 2] = (s, (8 - z) * s) in `compute_dtype`.
    The kernel needs out % 16 == 0; other widths are zero-padded and the output sliced.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        group_size: int,
        compute_dtype: torch.dtype,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.compute_dtype = group_size, compute_dtype
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_awq(
        cls,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        bits: int = 4,
        inner_k_tiles: int = 2,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> "Int4CPULinear":
        if bits != 4:
            raise BenchError("fast4 supports 4-bit AWQ weights only")
        iweight, izeros = unpack_awq_gemm(qweight, qzeros, bits)  # [in, out], [in/g, out]
        in_f, out_f = iweight.shape
        s = scales.float()
        zero_f = (8 - izeros).float() * s  # torch: w = (q - 8) * s + zero_f  ==  (q - z) * s
        pad = (-out_f) % 16
        w_int = iweight.t().contiguous()  # [out, in]
        if pad:
            w_int = torch.cat([w_int, torch.full((pad, in_f), 8, dtype=torch.int32)])
            s = torch.cat([s, torch.zeros(s.shape[0], pad)], 1)
            zero_f = torch.cat([zero_f, torch.zeros(s.shape[0], pad)], 1)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w_int, inner_k_tiles)
        sz = torch.stack([s, zero_f], dim=-1).to(compute_dtype).contiguous()
        return cls(packed, sz, None if bias is None else bias.float(), in_f, out_f, group_size, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        out = out[:, : self.out_features].to(x.dtype).reshape(*shape[:-1], self.out_features)
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, compute_dtype={self.compute_dtype}"
        )


class Int4CUDALinear(nn.Module):
    """torch's CUDA int4 kernel (tinygemm) with AWQ's weights converted exactly.

    Buffers: ``packed`` int32 (from ``_convert_weight_to_int4pack``) and ``scales_and_zeros``
    bfloat16 [in/g, out, 2] = (s, (8 - z) * s). Activations are cast to bfloat16 (the only
    dtype the kernel takes) and the output back to the input dtype.

    tinygemm is a decode kernel: its cost grows with the rows of `x` at a fraction of a dense
    GEMM's rate. From ``dense_min_rows`` rows (and at least ``in_features``: a prefill), the
    layer dequantizes its weight through the same kernel (an identity times the weight, so
    the very bfloat16 values it computes with) and runs one dense bfloat16 matmul, as AutoAWQ
    does from 1,024 rows. Decode steps (rows = batch) always use the kernel.
    """

    dense_min_rows = 1024

    def __init__(
        self,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        group_size: int,
    ):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_awq(
        cls,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        bits: int = 4,
        inner_k_tiles: int | None = None,
        device: str | torch.device = "cuda",
    ) -> "Int4CUDALinear":
        """`inner_k_tiles` (2, 4 or 8: k-tiles per load) defaults to the largest that divides in_features / 16."""
        if bits != 4:
            raise BenchError("torchint4 supports 4-bit AWQ weights only")
        if inner_k_tiles is None:
            inner_k_tiles = next((t for t in (8, 4, 2) if qweight.shape[0] % (16 * t) == 0), 8)
        try:
            w_uint8, sz = awq_to_tinygemm(
                qweight.to(device), qzeros.to(device), scales.to(device), group_size, inner_k_tiles
            )
        except PackingError as exc:
            raise BenchError(f"torchint4: torch's int4 CUDA kernel cannot hold this layer: {exc}") from None
        convert, _ = _int4_cuda_ops()
        packed = convert(w_uint8, inner_k_tiles)
        in_f, out_f = qweight.shape[0], w_uint8.shape[0]
        bias = None if bias is None else bias.to(device=device, dtype=torch.bfloat16)
        return cls(packed, sz.to(torch.bfloat16), bias, in_f, out_f, group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """[in, out] bfloat16: the weight exactly as the kernel computes with it."""
        _, mm = _int4_cuda_ops()
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.scales_and_zeros.device)
        return mm(eye, self.packed, self.group_size, self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, mm = _int4_cuda_ops()
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if x2.shape[0] >= max(self.dense_min_rows, self.in_features):
            out = x2 @ self.dequantized_weight()
        else:
            out = mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        out = out.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return out + self.bias.to(x.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def wqlinear_gemm(qweight, qzeros, scales, bias, group_size: int, bits: int):  # pragma: no cover - GPU
    """AutoAWQ's own GEMM module (its awq_ext or triton kernels) holding the packed tensors."""
    quiet_awq()
    from awq.modules.linear.gemm import WQLinear_GEMM  # lazy: awq costs seconds to import

    in_f, out_f = qweight.shape[0], qweight.shape[1] * (32 // bits)
    mod = WQLinear_GEMM(bits, group_size, in_f, out_f, bias is not None, "cpu")
    mod.qweight.copy_(qweight)
    mod.qzeros.copy_(qzeros)
    mod.scales.copy_(scales.half())
    if bias is not None:
        mod.bias.copy_(bias.half())
    return mod
