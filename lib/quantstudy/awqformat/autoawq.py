"""AutoAWQ itself, imported once, quietly, where it is used, and the model types it quantizes.

AutoAWQ 0.2.9 (pinned knowingly, see README) prints a long deprecation notice on import and
resets the DeprecationWarning filter, and importing it costs seconds. Every use inside the
package calls :func:`quiet_awq` first, at the point of use, so the steps that never touch AWQ
and ``quantstudy validate`` start without it.
"""

from __future__ import annotations

import sys
import warnings


def quiet_awq():
    """Import ``awq`` (once) with its deprecation notice silenced and the warning filters
    restored; return the module."""
    if "awq" not in sys.modules:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore", DeprecationWarning)
            import awq  # noqa: F401
    return sys.modules["awq"]


# The model types AutoAWQ 0.2.9 quantizes (the keys of awq.models.auto.AWQ_CAUSAL_LM_MODEL_MAP),
# written out so that params validation does not import AutoAWQ (seconds, in every step); a
# test compares this list with the installed package's map.
AWQ_MODEL_TYPES = (
    "RefinedWeb",
    "RefinedWebModel",
    "Yi",
    "aquila",
    "baichuan",
    "bloom",
    "cohere",
    "deepseek_v2",
    "deepseek_v3",
    "exaone",
    "falcon",
    "gemma",
    "gemma2",
    "gpt_bigcode",
    "gpt_neox",
    "gptj",
    "internlm2",
    "llama",
    "llava",
    "llava_next",
    "minicpm",
    "minicpm3",
    "mistral",
    "mixtral",
    "mpt",
    "opt",
    "phi3",
    "phi3_v",
    "qwen",
    "qwen2",
    "qwen2_5_omni",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3",
    "qwen3_moe",
    "stablelm",
    "starcoder2",
)


def supported_model_types() -> list[str]:
    return sorted(AWQ_MODEL_TYPES)
