"""Demo model: tokenizer round trip, a seconds-long training run, and the committed model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quantstudy_demo import supportgen, train

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "demo-support-lm"


def test_tokenizer_round_trip():
    texts = ["User: My Lumen X2 (NX-2041) cost $149.\nAssistant: Refunds within 30 days!", "Café, naïve — 東京 ✓"]
    tok = train.train_tokenizer(texts * 10, 300)
    for t in texts + ["unseen words: zebra quokka 12345"]:
        ids = tok(t)["input_ids"]
        assert ids[0] == tok.bos_token_id  # BOS at the start of every text
        assert tok.decode(ids, skip_special_tokens=True) == t


def test_chat_template_matches_role_prefixed_text():
    from quantstudy.data import conversation_to_text, format_conversation

    tok = train.train_tokenizer(["hello there"] * 5, 280)
    turns = [{"role": "user", "text": "Hi"}, {"role": "assistant", "text": "Hello!"}]
    assert conversation_to_text({"turns": turns}, tok) == format_conversation(turns)


def test_tiny_training_run(tmp_path, monkeypatch):
    data = tmp_path / "demo"
    supportgen.write_demo_data(
        data,
        seed=1,
        progress=False,
        n_train=30,
        n_calib=5,
        n_eval=10,
        n_task=5,
        n_articles=5,
        n_closed_book=5,
        n_grounded=5,
        n_retention=5,
    )
    rec = train.train_demo_model("tiny", out_dir=tmp_path / "model", data_dir=data, max_wiki=200, max_conversations=30)
    assert rec["tokens_seen"] == 6 * 4 * 64 and len(rec["curve"]) == 2
    assert all(c["indomain_eval_ppl"] > 1 for c in rec["curve"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert torch.isfinite(model(**tok("User: hello", return_tensors="pt")).logits).all()
    for width in (model.config.hidden_size, model.config.intermediate_size):
        assert width % 128 == 0


def test_unknown_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown demo config 'huge'"):
        train.train_demo_model("huge", out_dir=tmp_path)


def test_committed_model_loads_with_finite_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tok = AutoTokenizer.from_pretrained(MODEL)
    out = model(**tok("User: How long is the refund window?\nAssistant:", return_tensors="pt"))
    assert torch.isfinite(out.logits.float()).all()
    cfg = json.loads((MODEL / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] % 128 == 0 and cfg["intermediate_size"] % 128 == 0
    assert sum(p.stat().st_size for p in MODEL.glob("*.safetensors")) <= 25 * 2**20
