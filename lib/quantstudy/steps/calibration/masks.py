"""Assistant-token masks for a calibration set: which of its tokens the assistant wrote.

A support assistant is judged on what it writes, so one way to calibrate is to let only the
assistant's tokens count in AWQ's objective (llm-compressor's ``use_loss_mask``). The set stores
token samples and the conversations they were cut from; the mask is rebuilt from those texts
with character offsets and cut exactly as :func:`~quantstudy.steps.calibration.sets.draw_set`
cut the samples, and the token ids are checked to match before any mask is returned.
"""

from __future__ import annotations

from pathlib import Path

from quantstudy.data import encode_with_offsets, has_chat_template
from quantstudy.steps.calibration.sets import CalibrationError, load_set, split_long

_PROBE_USER, _PROBE_REPLY = "\x00probe-user\x00", "\x00probe-reply\x00"


def role_markers(tokenizer) -> tuple[str, str]:
    """(header, footer): the text the chat template writes before and after an assistant
    message; the ``Assistant: ... \\n`` layout for a tokenizer without a template."""
    if not has_chat_template(tokenizer):
        return "Assistant:", "\n"
    user = [{"role": "user", "content": _PROBE_USER}]
    plain = tokenizer.apply_chat_template(user, tokenize=False)
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _PROBE_REPLY}], tokenize=False)
    header = prompt[len(plain) :] if prompt.startswith(plain) else ""
    footer = full[full.index(_PROBE_REPLY) + len(_PROBE_REPLY) :]
    if not header.strip() or not footer:
        raise CalibrationError(
            "quantize.assistant_only: the tokenizer's chat template does not mark assistant turns "
            f"(header {header!r}, footer {footer!r}); set assistant_only: false"
        )
    return header.strip(), footer.rstrip() or footer


def assistant_spans(text: str, header: str, footer: str) -> list[tuple[int, int]]:
    """Character spans of the assistant's messages, each up to and including its end marker
    (the model writes that token too)."""
    spans, pos = [], 0
    while (start := text.find(header, pos)) >= 0:
        start += len(header)
        end = text.find(footer, start)
        end = len(text) if end < 0 else end + len(footer)
        spans.append((start, end))
        pos = end
    return spans


def _text_mask(text: str, tokenizer, header: str, footer: str) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the token lies inside an assistant message) of one text."""
    enc = encode_with_offsets(tokenizer, text)
    spans = assistant_spans(text, header, footer)
    mask = [int(b > a and any(s <= a and b <= e for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def assistant_masks(
    texts: list[str], samples: list[list[int]], tokenizer, max_seq_len: int, mode: str = "split"
) -> list[list[int]]:
    """One 0/1 list per sample, aligned token for token with ``samples`` (the set as
    :func:`draw_set` built it from ``texts``, in that order)."""
    header, footer = role_markers(tokenizer)
    budget = sum(map(len, samples))
    ids_out, masks_out, tokens = [], [], 0
    for text in texts:
        ids, mask = _text_mask(text, tokenizer, header, footer)
        for p_ids, p_mask in zip(split_long(ids, max_seq_len, mode), split_long(mask, max_seq_len, mode)):
            take = budget - tokens
            ids_out.append(p_ids[:take])
            masks_out.append(p_mask[:take])
            tokens += len(ids_out[-1])
            if tokens >= budget:
                break
        if tokens >= budget:
            break
    if ids_out != [list(s) for s in samples]:
        raise CalibrationError(
            "assistant mask: the set's texts do not re-tokenize to its samples (was it built with "
            "another tokenizer or max_seq_len?); re-run step 01_calibration"
        )
    return masks_out


def set_assistant_masks(folder: str | Path, tokenizer) -> list[list[int]]:
    """The assistant masks of a saved in-domain set (step 01's folder ``sets/<name>``)."""
    from datasets import load_from_disk  # ~1.3 s to import; only a masked calibration needs it

    samples, meta = load_set(folder)
    if meta.get("source") != "in_domain":
        raise CalibrationError(
            f"{folder}: assistant masks are built for in-domain sets (conversations); this set's "
            f"source is {meta.get('source')!r}"
        )
    texts = list(load_from_disk(str(Path(folder) / "texts"))["text"])
    return assistant_masks(texts, samples, tokenizer, meta["max_seq_len"], meta.get("long_samples", "split"))
