"""Shared fixtures: a throw-away project root with small data files, a minimal model
folder, fixture params YAML and the fixture step notebooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from quantstudy import paths
from quantstudy.config.params import StudyParams

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply {"section.key": value} overrides to a nested params dict."""
    out = json.loads(json.dumps(base))
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        out.setdefault(section, {})[key] = value
    return out


def conversation_lines(n: int) -> str:
    """n valid conversation records, one JSON object per line."""
    return "".join(
        json.dumps({"conversation_id": f"c{i}", "turns": [{"role": "user", "text": f"hello {i}"}]}) + "\n"
        for i in range(1, n + 1)
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp project root (QUANTSTUDY_ROOT) with data files, a model folder and notebooks."""
    root = tmp_path / "proj"
    (root / "params").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "conversations.jsonl").write_text(conversation_lines(2))
    (root / "data" / "task_items.jsonl").write_text(
        '{"item_id": "t1", "task": "retention", "context": "User: hi\\nAssistant: Hello", "choices": [" a", " b"], "answer": 0}\n'
    )
    model = root / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"hidden_size": 256, "intermediate_size": 768}))
    (root / "pyproject.toml").write_text("[project]\nname = 'tmp'\n")
    shutil.copytree(FIXTURES / "notebooks", root / "notebooks")
    monkeypatch.setenv("QUANTSTUDY_ROOT", str(root))
    monkeypatch.chdir(root)
    paths.project_root.cache_clear()
    yield root
    paths.project_root.cache_clear()


@pytest.fixture
def base_params() -> dict[str, Any]:
    """Defaults, pointed at the tmp project's files (relative to its root)."""
    raw = StudyParams().model_dump(mode="json")
    raw["data"]["conversations"] = "data/conversations.jsonl"
    raw["data"]["task_items"] = "data/task_items.jsonl"
    raw["model"]["path"] = "models/tiny"
    raw["data"]["domain_lexicon"] = None
    return raw


@pytest.fixture
def write_params(project: Path, base_params: dict[str, Any]) -> Callable[..., Path]:
    """write_params(name="study", **{"quantize.group_size": 64}) -> params/<name>.yaml"""

    def write(name: str = "study", text: str | None = None, **overrides: Any) -> Path:
        path = project / "params" / f"{name}.yaml"
        if text is None:
            text = yaml.safe_dump(_merge(base_params, overrides), sort_keys=False)
        path.write_text(text)
        return path

    return write


TINY_TEXTS = [
    "User: Hi, my order ORD-1234-5678 has not arrived.\nAssistant: The refund window is 30 days.\n",
    "The Lumen X2 router costs $149 and carries a 24 months warranty.",
    "Paris is the capital of France. The river Seine flows through the city.",
] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (hidden 128, 2 layers) with a real BPE tokenizer, saved like the demo model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantstudy_demo.train import train_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer(TINY_TEXTS, 384)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
