"""AutoAWQ's GEMM packing: int4 values, eight per int32 in AutoAWQ's nibble order, with float16
scales and packed zeros per group; unpacking, a vectorised packer bit-identical to
``WQLinear_GEMM.from_linear``, and round-to-nearest with AutoAWQ's own pseudo-quantizer."""

from __future__ import annotations

import contextlib

import torch

from quantstudy.awqformat.autoawq import quiet_awq

PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ GEMM packing order of 8 nibbles in an int32


class PackingError(ValueError):
    """Weights that AutoAWQ's GEMM format cannot hold."""


def pseudo_quantizer(bits: int, group_size: int, zero_point: bool = True):
    """AutoAWQ's ``AwqQuantizer`` with only its quantization settings: its ``pseudo_quantize_tensor``
    and ``_apply_quant`` work; its ``__init__`` (which would run a calibration) is skipped."""
    quiet_awq()
    from awq.quantize.quantizer import AwqQuantizer  # AutoAWQ: seconds to import, loaded only where used

    q = AwqQuantizer.__new__(AwqQuantizer)
    q.w_bit, q.group_size, q.zero_point = bits, group_size, zero_point
    return q


def unpack_awq_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAWQ GEMM tensors -> (int weight [in, out], int zeros [in/g, out]), values 0..15,
    with AutoAWQ's own unpacking (same steps as ``dequantize_gemm``)."""
    quiet_awq()
    # AutoAWQ: seconds to import, loaded only where used
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq

    iweight, izeros = unpack_awq(qweight, qzeros, bits)
    iweight, izeros = reverse_awq_order(iweight, izeros, bits)
    mask = (1 << bits) - 1
    return torch.bitwise_and(iweight, mask).to(torch.int32), torch.bitwise_and(izeros, mask).to(torch.int32)


def _pack_columns(intvals: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """[rows, cols] ints 0..15 -> [rows, cols/8] int32 in AutoAWQ's GEMM nibble order
    (same int32 wrap-around as the `|=` loop in ``WQLinear_GEMM.from_linear``)."""
    pack_num = 32 // bits
    rows, cols = intvals.shape
    if cols % pack_num:
        raise PackingError(f"cannot pack {cols} columns: AWQ packs {pack_num} values per int32")
    v = intvals.to(torch.int32).reshape(rows, cols // pack_num, pack_num)
    out = torch.zeros(rows, cols // pack_num, dtype=torch.int32, device=intvals.device)
    for i, src in enumerate(PACK_ORDER):
        out |= v[:, :, src] << (i * bits)
    return out


def pack_awq_gemm(
    weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorized ``WQLinear_GEMM.from_linear``: bit-identical (qweight, qzeros, scales).

    `weight` is the linear's [out, in] weight (already quantized-dequantized, any dtype, as
    AutoAWQ passes it), `scales`/`zeros` are [in/g, out] as ``_apply_quant`` passes them.
    The arithmetic (dtype of every elementwise step, round, truncating ``.to(int)``) is
    AutoAWQ's; only the python loop over input features is gone.
    """
    if bits != 4:
        raise PackingError("only 4-bit packing is supported (AutoAWQ GEMM)")
    scales_h = scales.clone().half()
    scale_zeros = zeros * scales
    w_t = weight.t()  # [in, out]
    intweight = (
        torch.round((w_t + scale_zeros.repeat_interleave(group_size, 0)) / scales_h.repeat_interleave(group_size, 0))
        .to(torch.int)
        .to(torch.int32)
    )
    return _pack_columns(intweight, bits), _pack_columns(zeros.to(torch.int32), bits), scales_h


@contextlib.contextmanager
def vectorized_from_linear():
    """Within the block, AutoAWQ's ``WQLinear_GEMM.from_linear`` packs with :func:`pack_awq_gemm`.

    AutoAWQ's own packer loops in Python over every input feature and every output column
    (about 0.2 s per SmolLM2 layer on this CPU, 6-7 s per checkpoint); the result is the same
    module with bit-identical tensors (tests/test_bench.py checks both packers agree).
    """
    quiet_awq()
    from awq.modules.linear.gemm import WQLinear_GEMM  # AutoAWQ: seconds to import, loaded only where used

    original = WQLinear_GEMM.__dict__["from_linear"]

    def from_linear(cls, linear, w_bit, group_size, init_only=False, scales=None, zeros=None):
        if init_only or w_bit != 4:  # AutoAWQ's own path: nothing to pack, or its own error
            return original.__func__(cls, linear, w_bit, group_size, init_only, scales, zeros)
        module = cls(
            w_bit, group_size, linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device
        )
        module.qweight, module.qzeros, module.scales = pack_awq_gemm(
            linear.weight.data, scales, zeros, group_size, w_bit
        )
        if linear.bias is not None:
            module.bias = linear.bias.clone().half()
        return module

    WQLinear_GEMM.from_linear = classmethod(from_linear)
    try:
        yield
    finally:
        WQLinear_GEMM.from_linear = original


def rtn_quantize_linear(
    weight: torch.Tensor, group_size: int = 128, bits: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest exactly as AutoAWQ's ``_apply_quant`` (float16 weight, zero point),
    packed with :func:`pack_awq_gemm`. Returns (qweight, qzeros, scales)."""
    q = pseudo_quantizer(bits, group_size, zero_point=True)
    w, scales, zeros = q.pseudo_quantize_tensor(weight.detach().half())
    return pack_awq_gemm(w, scales.t().contiguous(), zeros.t().contiguous(), group_size, bits)
