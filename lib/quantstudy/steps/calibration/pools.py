"""The text pools calibration sets are drawn from: generic text, and in-domain conversations
(scrubbed of personal data first, the scrubber scored on an independent test set), rendered as
the model sees them; plus the domain lexicon and the model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from quantstudy import data, modelsource
from quantstudy.config.params import ModelSection
from quantstudy.paths import resolve
from quantstudy.steps.calibration.pii_eval import independent_pii_check
from quantstudy.steps.calibration.scrub import scrub_conversations, scrubber_for
from quantstudy.steps.calibration.sets import CalibrationError


def load_pools(P, tokenizer=None) -> dict:
    """Generic and in-domain text pools (in-domain scrubbed first), plus evaluation text and
    the scrub report. Nothing here touches the evaluation or task splits' text beyond reading it."""
    generic = data.load_generic_texts(P.data, "calib")
    calib_convs = data.load_in_domain(P.data, "calib", seed=P.study.seed)
    if not calib_convs:
        raise CalibrationError(f"{P.data.conversations}: no conversations in the calibration split")
    lexicon = domain_lexicon_for(P)
    report = {"scored": False, "replaced_by_type": {}, "survivors": [], "n_survivors": 0}
    independent = None
    if P.calibration.scrub:
        scrubber = scrubber_for(lexicon)
        calib_convs, report = scrub_conversations(calib_convs, scrubber)
        independent = independent_pii_check(scrubber)
    template = P.calibration.chat_template
    in_domain = [data.conversation_to_text(c, tokenizer, template) for c in calib_convs]
    eval_convs = data.load_in_domain(P.data, "eval", seed=P.study.seed)
    eval_text = [data.conversation_to_text(c, tokenizer, template) for c in eval_convs]
    return {
        "generic": generic,
        "in_domain": in_domain,
        "eval_in_domain": eval_text,
        "scrub": report,
        "lexicon": lexicon,
        "pii_independent": independent,
        "chat_template": bool(template and data.has_chat_template(tokenizer)),
    }


def load_lexicon(path: str | Path | None) -> dict[str, list[str]]:
    """{category: [terms]} from a JSON file; {} when there is no path or no file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        return {}
    obj = json.loads(p.read_text())
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise CalibrationError(f"{p}: expected a JSON object {{category: [terms, ...]}}")
    return {k: [str(t) for t in v] for k, v in obj.items()}


def domain_lexicon_for(P) -> dict[str, list[str]]:
    """Domain terms ({category: [terms]}) from data.domain_lexicon, for coverage and per-token damage."""
    return load_lexicon(resolve(P.data.domain_lexicon)) if P.data.domain_lexicon else {}


def load_tokenizer(model):
    """The model's tokenizer; ``model`` is the params' model section (or a local folder path)."""
    if isinstance(model, (str, Path)):
        model = ModelSection(source="embedded", path=str(model))
    return modelsource.load_tokenizer(model)
