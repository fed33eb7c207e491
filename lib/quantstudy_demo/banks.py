"""The demo generators' phrase banks and catalogue, read from ``quantstudy_demo/banks/*.json``.

The generators keep only logic; every wording, name and figure they draw from lives in these
files (the order of list entries matters: the seeded draws index into them, so reordering or
editing an entry changes the generated data):

* ``catalogue.json``: the fictional company, its products, plans, policies, business rules and
  the same-kind value pools that distractors are drawn from;
* ``facts.json``: how a fact is stated (``statements``: ``[prefix, suffix]`` pairs; a statement
  is prefix + " " + value + suffix, so a task item's context can end exactly where the figure
  goes; ``{s}`` is the fact's subject) and asked (``questions``), follow-up ``elaborations``
  per attribute and ``answer_openers``;
* ``people.json``: names, e-mail domains, streets, cities and support agents for personas;
* ``dialogue.json``: the customer-support conversation phrasings, per intent and customer style
  (``"*"``: any style);
* ``articles.json``: help-article titles, policy groups and leads;
* ``lexicon.json``: support jargon for the domain lexicon;
* ``retention.json``: the phrasings of the structured (chat) retention conversations, per scene.

Templates use ``[a|b|c]`` alternations (nestable, see :func:`quantstudy_demo.supportgen.expand`)
and ``{slot}`` placeholders.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

BANKS_DIR = Path(__file__).resolve().parent / "banks"


@cache
def load(name: str) -> dict[str, Any]:
    """The bank ``banks/<name>.json`` (read once; treat it as read-only)."""
    path = BANKS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in BANKS_DIR.glob("*.json"))
        raise FileNotFoundError(f"{path}: no such phrase bank; known: {', '.join(known)}")
    return json.loads(path.read_text(encoding="utf-8"))
