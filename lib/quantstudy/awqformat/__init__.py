"""The AWQ checkpoint format: packing (pack, unpack, round-to-nearest) and checkpoints (load,
verify, dequantize). Depends on nothing else in the study but ``quantstudy.paths``."""

from quantstudy.awqformat.checkpoint import (
    CHECKSUMS,
    QUANT_META,
    CheckpointError,
    cast_model,
    checkpoint_kind,
    checkpoint_size,
    dequantize_awq_state,
    load_checkpoint,
    read_tensors,
    resolve_device,
    sha256_file,
    verify_archive,
)
from quantstudy.awqformat.packing import (
    PACK_ORDER,
    PackingError,
    pack_awq_gemm,
    pseudo_quantizer,
    rtn_quantize_linear,
    unpack_awq_gemm,
    vectorized_from_linear,
)

__all__ = [
    "CHECKSUMS",
    "QUANT_META",
    "CheckpointError",
    "cast_model",
    "checkpoint_kind",
    "checkpoint_size",
    "dequantize_awq_state",
    "load_checkpoint",
    "read_tensors",
    "resolve_device",
    "sha256_file",
    "verify_archive",
    "PACK_ORDER",
    "PackingError",
    "pack_awq_gemm",
    "pseudo_quantizer",
    "rtn_quantize_linear",
    "unpack_awq_gemm",
    "vectorized_from_linear",
]
