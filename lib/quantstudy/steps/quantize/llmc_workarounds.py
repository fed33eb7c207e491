"""The one workaround llm-compressor needs on a machine without an accelerator, kept here alone.

llm-compressor 0.14.0.1's AWQ pins its cached activations in page-locked memory before every
grid search (``IntermediatesCache.pin_memory``), for faster host-to-device copies. With no
accelerator present, ``Tensor.pin_memory()`` raises "Cannot access accelerator device when none
is available", so AWQ cannot run on a CPU-only machine at all. Pinning only speeds up copies to
an accelerator that is not there; skipping it changes no number.

``tests/test_llmcompressor.py`` calls the upstream method on a CPU-only machine and fails once it
no longer raises: then this module can go.
"""

from __future__ import annotations

_PATCHED = "_quantstudy_cpu_no_pin"


def pin_memory_fails_here() -> bool:
    """True when pinning a CPU tensor raises here (a machine without an accelerator)."""
    import torch  # the caller has imported it already

    try:
        torch.zeros(1).pin_memory()
    except RuntimeError:
        return True
    return False


def skip_pinning_without_accelerator() -> bool:
    """Make ``IntermediatesCache.pin_memory`` a no-op where pinning cannot work; True when
    patched (idempotent)."""
    from llmcompressor.pipelines.cache import IntermediatesCache  # llm-compressor: seconds to import

    if getattr(IntermediatesCache.pin_memory, _PATCHED, False):
        return True
    if not pin_memory_fails_here():
        return False

    def pin_memory(self, batch_index: int, input_names: list[str] | None = None) -> None:
        return None  # nothing to pin for: there is no accelerator to copy to

    setattr(pin_memory, _PATCHED, True)
    pin_memory.upstream = IntermediatesCache.pin_memory  # the test calls it to see if it still fails
    IntermediatesCache.pin_memory = pin_memory
    return True


def upstream_pin_memory():
    """llm-compressor's own ``IntermediatesCache.pin_memory``, patched or not."""
    from llmcompressor.pipelines.cache import IntermediatesCache  # llm-compressor: seconds to import

    return getattr(IntermediatesCache.pin_memory, "upstream", IntermediatesCache.pin_memory)
