"""Structured (chat) task items: settings validation, determinism, schema, the committed file,
retention confusables and rendering through a chat template. No model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from quantstudy import data as qd
from quantstudy_demo import chatitems as ci

REPO = Path(__file__).resolve().parents[1]
SETTINGS = REPO / ci.DEFAULT_SETTINGS
COMMITTED = REPO / ci.DEFAULT_OUT
SMALL = {"counts": {"policy_closed_book": 30, "policy_grounded": 30, "retention": 60}}
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def small_items() -> list[dict]:
    return ci.generate_items(ci.parse_settings(SMALL))


@pytest.fixture(scope="module")
def three_entities() -> list[dict]:
    raw = {
        "counts": {"policy_closed_book": 0, "policy_grounded": 0, "retention": 60},
        "retention": {"entities": [3, 3], "restate_cue": 0.5, "digressions_between": [1, 2]},
    }
    return ci.generate_items(ci.parse_settings(raw))


@pytest.fixture(scope="module")
def committed() -> list[dict]:
    return qd.read_task_items(COMMITTED)


def _context(item: dict) -> str:
    return "\n".join(t["text"] for t in item["turns"]) + "\n" + item["assistant_prefix"]


def test_same_settings_same_items_other_seed_differs(small_items):
    again = ci.generate_items(ci.parse_settings(json.loads(json.dumps(SMALL))))
    assert again == small_items
    other = ci.generate_items(ci.parse_settings({**SMALL, "seed": 1}))
    assert other != small_items
    counts = {t: sum(it["task"] == t for it in small_items) for t in qd.TASKS}
    assert counts == SMALL["counts"]


def test_every_item_validates(small_items, three_entities, committed):
    for it in small_items + three_entities + committed:
        qd.validate_task_item(it, "test")
        assert "context" not in it and it["assistant_prefix"] == it["assistant_prefix"].rstrip()
        assert all(c.startswith(" ") for c in it["choices"]) and len(set(it["choices"])) == len(it["choices"])
    ids = [it["item_id"] for it in committed]
    assert len(ids) == len(set(ids))


def test_committed_file_matches_committed_settings(tmp_path):
    out = tmp_path / "items.jsonl"
    summary = ci.write_chat_items(SETTINGS, out)
    assert out.read_bytes() == COMMITTED.read_bytes(), (
        "data/demo/task_items_chat.jsonl drifted from its settings: run `quantstudy-demo items`"
    )
    raw = yaml.safe_load(SETTINGS.read_text())
    assert summary["task_items"] == {t: raw["counts"][t] for t in sorted(qd.TASKS)}


def test_policy_items(committed):
    grounded = [it for it in committed if it["task"] == "policy_grounded"]
    closed = [it for it in committed if it["task"] == "policy_closed_book"]
    for it in grounded:
        system = it["turns"][0]
        assert system["role"] == "system" and "Relevant policy:" in system["text"]
        assert it["choices"][it["answer"]].strip() in system["text"]  # the figure is given
        for c in it["metadata"]["confusables_in_context"]:
            assert " " + c in it["choices"] and c in system["text"]
    assert any(it["metadata"]["confusables_in_context"] for it in grounded)
    for it in closed:
        assert "Relevant policy" not in _context(it)
        assert it["choices"][it["answer"]].strip() not in _context(it)  # the figure is not in the context
        assert not any(c.strip() in _context(it) for c in it["choices"])
    assert {it["metadata"]["source"] for it in closed} == {"conversation", "template"}


def test_retention_answer_and_confusables_in_context(small_items, three_entities, committed):
    retention = [it for it in small_items + three_entities + committed if it["task"] == "retention"]
    assert retention
    for it in retention:
        ctx, meta = _context(it), it["metadata"]
        answer = it["choices"][it["answer"]].strip()
        wrong = [c.strip() for i, c in enumerate(it["choices"]) if i != it["answer"]]
        assert answer in ctx, it["item_id"]
        in_ctx = [c for c in wrong if c in ctx]
        assert in_ctx == [c for c in wrong if c in meta["confusables_in_context"]]
        assert len(in_ctx) == min(meta["n_entities"] - 1, len(it["choices"]) - 1) >= 1, it["item_id"]
        assert answer not in it["assistant_prefix"] and it["turns"][-1]["role"] == "user"
        assert meta["gap_turns"] >= 2 and meta["n_turns"] == len(it["turns"])
    assert {it["metadata"]["answer_mention"] for it in retention} == {"first", "second", "third"}
    assert {len(it["metadata"]["confusables_in_context"]) for it in three_entities} == {2}
    assert {it["metadata"]["restated_cue"] for it in three_entities} == {True, False}
    assert {it["metadata"]["answer_is_latest_mention"] for it in retention} == {True, False}
    assert {it["metadata"]["probe_type"] for it in retention} == set(ci.PROBE_TYPES)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"colour": 1}, "colour"),
        ({"retention": {"entitys": [2, 3]}}, "retention.entitys"),
        ({"retention": {"probe_mix": {"zip_code": 1}}}, "retention.probe_mix.zip_code"),
        ({"counts": {"retention": 10, "policy": 3}}, "counts.policy"),
    ],
)
def test_unknown_key_names_file_and_key(tmp_path, raw, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ci.SettingsError) as err:
        ci.load_settings(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"unknown key '{key}'" in msg


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"retention": {"entities": [3, 2]}}, "retention.entities"),
        ({"retention": {"entities": [2, 5]}}, "retention.entities"),
        ({"counts": {"retention": -1}}, "counts.retention"),
        ({"grounded": {"confusable_distractor": 2}}, "grounded.confusable_distractor"),
        (
            {"retention": {"probe_mix": {"order_id": 0, "product": 0, "address": 0, "card": 0, "email": 0, "name": 0}}},
            "retention.probe_mix",
        ),
    ],
)
def test_bad_value_names_key(tmp_path, raw, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ci.SettingsError, match=rf"bad\.yaml: {key}: "):
        ci.load_settings(path)


def test_missing_settings_file(tmp_path):
    with pytest.raises(ci.SettingsError, match="settings file not found"):
        ci.load_settings(tmp_path / "nope.yaml")


def _retention_item() -> dict:
    return ci.generate_items(
        ci.parse_settings({"counts": {"policy_closed_book": 0, "policy_grounded": 0, "retention": 1}})
    )[0]


def test_renders_through_chatml_with_prefix_at_the_end():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / "models" / "demo-support-lm"))
    item = _retention_item()
    demo = qd.item_context(item, tok)  # the demo model's own template: User:/Assistant: lines
    assert demo == qd.format_conversation(item["turns"]) + "Assistant: " + item["assistant_prefix"]
    assert demo == qd.item_context(item)  # same as the fallback layout without a tokenizer
    tok.chat_template = CHATML
    rendered = qd.item_context(item, tok)
    expected = (
        "".join(f"<|im_start|>{t['role']}\n{t['text']}<|im_end|>\n" for t in item["turns"])
        + "<|im_start|>assistant\n"
        + item["assistant_prefix"]
    )
    assert rendered == expected
    assert rendered.startswith("<|im_start|>system\nYou are the support assistant of Nimbus Home Networks.<|im_end|>\n")
    assert rendered.endswith(item["assistant_prefix"]) and not rendered.endswith(" ")
