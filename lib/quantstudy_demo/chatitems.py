"""Task items in the structured (chat) form for a real chat model.

The demo's ``task_items.jsonl`` holds plain ``context`` strings in the ``User:/Assistant:``
layout of the tiny demo model. This module writes the same three tasks as structured items
(``turns`` plus ``assistant_prefix``, see ``data/demo/README.md``), rendered by the subject
model's own chat template (:func:`quantstudy.data.item_context`):

* ``policy_closed_book`` and ``policy_grounded``: the facts, phrasings and distractor logic of
  :func:`quantstudy_demo.supportgen.task_items`; grounded items carry a policy excerpt in a first
  ``system`` turn, closed-book items only the assistant's role.
* ``retention``: multi-turn conversations with several entities of one type (two orders for
  two products, an address the customer corrects, an old and a new card, ...), digressions
  between the last mention and the question, and an answer prefix that ends where the
  recalled detail goes. Distractors include the confusable entities that are in the context.
  Their phrasings, per scene, are in ``banks/retention.json`` (:mod:`quantstudy_demo.banks`).

Every setting lives in a YAML file (``params/demo-data/task-items-chat.yaml``), validated
here (unknown keys are rejected); the same settings give byte-identical items.
``python -m quantstudy_demo.chatitems [settings.yaml [out.jsonl]]`` regenerates the file.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from random import Random
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantstudy.data import validate_task_item
from quantstudy.paths import resolve
from quantstudy_demo import banks
from quantstudy_demo import supportgen as sg

DEFAULT_SETTINGS = "params/demo-data/task-items-chat.yaml"
DEFAULT_OUT = "data/demo/task_items_chat.jsonl"
PROBE_TYPES = ("order_id", "product", "address", "card", "email", "name")
DIGRESSION_TYPES = ("small_talk", "troubleshooting", "policy_question")


class SettingsError(ValueError):
    """A bad settings file. ``str(err)`` is the one-line message for the user."""


# =========================================================================== settings
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _range(v: Any) -> tuple[int, int]:
    lo, hi = v
    if lo > hi:
        raise ValueError(f"expected [min, max] with min <= max; found [{lo}, {hi}]")
    return lo, hi


class Counts(_Model):
    policy_closed_book: int = Field(400, ge=0, le=100_000)
    policy_grounded: int = Field(400, ge=0, le=100_000)
    retention: int = Field(400, ge=0, le=100_000)


class PolicySettings(_Model):
    conversation_share: float = Field(0.5, ge=0.0, le=1.0)
    history_turns: int = Field(5, ge=1, le=11)


class GroundedSettings(_Model):
    policy_facts: tuple[int, int] = (2, 3)
    same_kind_first: bool = True
    confusable_distractor: float = Field(
        0.5, ge=0.0, le=1.0
    )  # share of items whose choices include same-kind figures of the excerpt

    @field_validator("policy_facts")
    @classmethod
    def _ok(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] > 6:
            raise ValueError(f"expected 1 <= min <= max <= 6; found {list(v)}")
        return _range(v)


class _Weights(_Model):
    """Relative weights of a mix: each >= 0, at least one > 0."""

    @model_validator(mode="after")
    def _positive(self):
        if sum(self.model_dump().values()) <= 0:
            raise ValueError(f"at least one {self._what} needs a weight > 0")
        return self


class ProbeMix(_Weights):
    _what = "probe type"
    order_id: float = Field(1.0, ge=0.0)
    product: float = Field(1.0, ge=0.0)
    address: float = Field(1.0, ge=0.0)
    card: float = Field(1.0, ge=0.0)
    email: float = Field(1.0, ge=0.0)
    name: float = Field(1.0, ge=0.0)


class DigressionMix(_Weights):
    _what = "digression type"
    small_talk: float = Field(1.0, ge=0.0)
    troubleshooting: float = Field(1.0, ge=0.0)
    policy_question: float = Field(1.0, ge=0.0)


class RetentionSettings(_Model):
    entities: tuple[int, int] = (2, 2)
    digressions: tuple[int, int] = (1, 3)
    digressions_between: tuple[int, int] = (0, 1)
    assistant_echo: float = Field(1.0, ge=0.0, le=1.0)
    restate_cue: float = Field(1.0, ge=0.0, le=1.0)
    probe_mix: ProbeMix = Field(default_factory=ProbeMix)
    digression_mix: DigressionMix = Field(default_factory=DigressionMix)

    @field_validator("entities")
    @classmethod
    def _entities(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 2 or v[1] > 3:
            raise ValueError(f"expected 2 <= min <= max <= 3; found {list(v)}")
        return _range(v)

    @field_validator("digressions", "digressions_between")
    @classmethod
    def _digressions(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 0 or v[1] > 8:
            raise ValueError(f"expected 0 <= min <= max <= 8; found {list(v)}")
        return _range(v)


class ChatItemSettings(_Model):
    seed: int = Field(0, ge=0)
    n_choices: int = Field(4, ge=2, le=6)
    system_prompt: str = Field("You are the support assistant of Nimbus Home Networks.", min_length=1)
    counts: Counts = Field(default_factory=Counts)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    grounded: GroundedSettings = Field(default_factory=GroundedSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)


def _known_keys(model: Any, loc: tuple) -> list[str]:
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if isinstance(part, str) and part in fields:
            model = fields[part].annotation
    return list(getattr(model, "model_fields", {}))


def parse_settings(raw: Any, source: str = "settings") -> ChatItemSettings:
    """Validated settings from a dict; SettingsError with one line naming ``source`` and the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping of settings; found {type(raw).__name__}")
    try:
        return ChatItemSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            known = _known_keys(ChatItemSettings, first["loc"][:-1])
            raise SettingsError(f"{source}: unknown key {loc!r}; known keys here: {', '.join(known)}") from None
        msg = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{source}: {loc}: {msg}; found {first.get('input')!r}") from None


def load_settings(path: str | Path = DEFAULT_SETTINGS) -> ChatItemSettings:
    """Read and validate the YAML settings file."""
    p = resolve(path)
    if not p.is_file():
        raise SettingsError(f"{p}: settings file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SettingsError(f"{p}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_settings(raw, str(path))


# =========================================================================== helpers
def _weighted(mix: BaseModel, rng: Random) -> str:
    names, weights = zip(*mix.model_dump().items())
    return rng.choices(names, weights=weights)[0]


def _text_of(turns: Iterable[dict[str, str]], prefix: str) -> str:
    return "\n".join(t["text"] for t in turns) + "\n" + prefix


def _choose(
    answer: str, confusables: list[str], pool: Iterable[str], rng: Random, context: str, k: int
) -> tuple[list[str], int] | None:
    """``k`` choices: the answer, the confusables (in the context, up to k-1), then values of
    ``pool`` that are not in the context; shuffled, each with a leading space."""
    opts = [answer]
    for c in confusables:
        if c not in opts and len(opts) < k:
            opts.append(c)
    fill = [d for d in dict.fromkeys(pool) if d not in opts and d not in context]
    need = k - len(opts)
    if len(fill) < need:
        return None
    opts += rng.sample(fill, need)
    rng.shuffle(opts)
    return [" " + o for o in opts], opts.index(answer)


# =========================================================================== policy items
def _conversation_candidates(kb: sg.KnowledgeBase, seed: int, history: int, needed: int) -> list[tuple]:
    """(fact, history turns, assistant prefix, conversation id) cut from freshly generated
    support conversations at the point where the assistant states a figure."""
    out: list[tuple] = []
    i = 0
    while len(out) < needed and i < 20 * needed + 100:
        cid = f"chat-conv-{i:05d}"
        conv = sg.support_conversation(cid, "task", Random(f"chat-conv:{seed}:{i}"), kb)
        i += 1
        for sp in conv["metadata"]["fact_spans"]:
            fact = kb.fact(sp["fact_id"])
            text = conv["turns"][sp["turn"]]["text"]
            if sp["start"] == 0 or text[sp["start"] - 1] != " ":
                continue
            turns = conv["turns"][max(0, sp["turn"] - history) : sp["turn"]]
            if turns and turns[0]["role"] != "user":
                turns = turns[1:]
            prefix = text[: sp["start"]].rstrip()
            if not turns or fact.value in _text_of(turns, prefix):
                continue
            out.append((fact, [dict(t) for t in turns], prefix, cid))
    return out


def _policy_excerpt(
    fact: sg.Fact, kb: sg.KnowledgeBase, rng: Random, n_facts: int, same_kind_first: bool
) -> tuple[str, list[sg.Fact]]:
    """A policy excerpt of ``n_facts`` sentences: the asked fact plus others (same kind first,
    then same subject or policy group), shuffled."""
    others = [f for f in kb.facts if f.fact_id != fact.fact_id]
    same_kind = [f for f in others if f.kind == fact.kind and f.value != fact.value]
    related = [
        f
        for f in others
        if f not in same_kind
        and (
            (fact.subject and f.subject == fact.subject)
            or (fact.group == "policy" and f.attribute in sg.related_policy_attributes(fact))
            or (fact.group == f.group and fact.group != "policy")
        )
    ]
    rng.shuffle(same_kind)
    rng.shuffle(related)
    ordered = (same_kind + related) if same_kind_first else (related + same_kind)
    rest = [f for f in others if f not in ordered]
    rng.shuffle(rest)
    picked = [fact] + (ordered + rest)[: n_facts - 1]
    rng.shuffle(picked)
    return " ".join(sg.fact_sentence(f, rng) for f in picked), [f for f in picked if f is not fact]


def _add_template_plans(plan: list[tuple], size: int, kb: sg.KnowledgeBase, rng: Random) -> None:
    """Fill ``plan`` up to ``size`` with one-question plans over the facts (no conversation)."""
    order = list(kb.facts)
    rng.shuffle(order)
    j = 0
    while len(plan) < size:
        fact = order[j % len(order)]
        j += 1
        if j % len(order) == 0:
            rng.shuffle(order)
        prefix, _ = sg.statement(fact, rng)
        q = sg.question(fact, rng)
        plan.append((fact, [{"role": "user", "text": q}], rng.choice(sg.ANSWER_OPENERS) + prefix, None))


def _ground(
    fact, kb: sg.KnowledgeBase, rng: Random, s: ChatItemSettings, meta: dict[str, Any]
) -> tuple[str, list[str]]:
    """A grounded item's system turn (the prompt with a policy excerpt) and the confusable values in
    that excerpt; records both in ``meta``."""
    confusables: list[str] = []
    k = rng.randint(*s.grounded.policy_facts)
    excerpt, other = _policy_excerpt(fact, kb, rng, k, s.grounded.same_kind_first)
    system = f"{s.system_prompt} Relevant policy: {excerpt}"
    if rng.random() < s.grounded.confusable_distractor:
        confusables = [f.value for f in other if f.kind == fact.kind and f.value != fact.value]
    meta.update(
        {
            "snippet": excerpt,
            "policy_facts": [fact.fact_id] + [f.fact_id for f in other],
            "confusables_in_context": list(dict.fromkeys(confusables))[: s.n_choices - 1],
        }
    )
    return system, confusables


def _policy_items(kb: sg.KnowledgeBase, s: ChatItemSettings) -> list[dict[str, Any]]:
    n_cb, n_gr = s.counts.policy_closed_book, s.counts.policy_grounded
    share = s.policy.conversation_share
    n_conv = {"policy_closed_book": round(n_cb * share), "policy_grounded": round(n_gr * share)}
    cands = _conversation_candidates(kb, s.seed, s.policy.history_turns, sum(n_conv.values()) + 50)
    Random(f"chat-conv-order:{s.seed}").shuffle(cands)
    items: list[dict[str, Any]] = []
    offset = 0
    for task, n, tag in (("policy_closed_book", n_cb, "cb"), ("policy_grounded", n_gr, "gr")):
        rng = Random(f"chat-{tag}:{s.seed}")
        plan: list[tuple] = list(cands[offset : offset + n_conv[task]])
        offset += n_conv[task]
        _add_template_plans(plan, n + 20, kb, rng)  # a few spare plans in case one cannot get enough distractors
        made = 0
        for fact, turns, prefix, cid in plan:
            if made >= n:
                break
            meta: dict[str, Any] = {
                "fact_id": fact.fact_id,
                "kind": fact.kind,
                "source": "conversation" if cid else "template",
            }
            if cid:
                meta["conversation_id"] = cid
            confusables: list[str] = []
            system = s.system_prompt
            if task == "policy_grounded":
                system, confusables = _ground(fact, kb, rng, s, meta)
            all_turns = [{"role": "system", "text": system}] + turns
            picked = _choose(fact.value, confusables, fact.distractors, rng, _text_of(all_turns, prefix), s.n_choices)
            if picked is None:
                continue
            choices, answer = picked
            items.append(
                {
                    "item_id": f"chat-{tag}-{made:04d}",
                    "task": task,
                    "turns": all_turns,
                    "assistant_prefix": prefix,
                    "choices": choices,
                    "answer": answer,
                    "metadata": meta,
                }
            )
            made += 1
    return items


# =========================================================================== retention
# Phrasings of the retention conversations ([a|b] alternations, {slot} values): banks/retention.json.
_RETENTION = banks.load("retention")
_PEOPLE = banks.load("people")
_DIALOGUE = banks.load("dialogue")
_COUNT_WORD = {2: "two", 3: "three"}


def _order_id(rng: Random) -> str:
    return f"ORD-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def _address(rng: Random) -> str:
    city, state = rng.choice(_PEOPLE["cities"])
    return (
        f"{rng.randint(3, 9899)} {rng.choice(_PEOPLE['streets'])} {rng.choice(_PEOPLE['street_suffixes'])}, "
        f"{city}, {state} {rng.randint(10000, 99950)}"
    )


def _email(rng: Random, first: str | None = None, last: str | None = None) -> str:
    first = first or rng.choice(_PEOPLE["first_names"])
    last = last or rng.choice(_PEOPLE["last_names"])
    sep = rng.choice([".", "_", ""])
    local = rng.choice(
        [
            f"{first}{sep}{last}",
            f"{first[0]}{last}",
            f"{first}{rng.randint(1, 99)}",
            f"{last}{sep}{first[0]}{rng.randint(10, 999)}",
            f"{first}.{rng.choice(['home', 'work', 'mail'])}",
        ]
    )
    return f"{local.lower().replace(chr(39), '')}@{rng.choice(_PEOPLE['email_domains'])}"


def _card(rng: Random) -> str:
    return f"{rng.randint(0, 9999):04d}"


def _name(rng: Random, last: str | None = None) -> str:
    return f"{rng.choice(_PEOPLE['first_names'])} {last or rng.choice(_PEOPLE['last_names'])}"


def _distinct(make, n: int, rng: Random, avoid: Iterable[str] = ()) -> list[str]:
    seen = set(avoid)
    out: list[str] = []
    while len(out) < n:
        v = make(rng)
        if v not in seen and not any(v in s or s in v for s in seen):
            seen.add(v)
            out.append(v)
    return out


class _Scene:
    """One retention conversation plan: mention exchanges, the probe and its answer."""

    def __init__(self) -> None:
        self.opening: tuple[str, dict] = ("", {})  # user's first request (no entity)
        self.opening_bot: str = ""
        self.mentions: list[tuple[str, str, dict]] = []  # (user template, bot template, slots)
        self.values: list[str] = []  # entities, in order of first mention
        self.answer: int = 0
        self.role: str = ""
        self.prefix: str = ""
        self.pool: list[str] = []  # out-of-context distractor candidates
        self.corrected: bool = False
        self.extra: dict[str, Any] = {}


def _echo(rng: Random, p: float, text: str) -> str:
    return text if rng.random() < p else sg.expand(rng.choice(_RETENTION["echo_acks"]), rng) + "."


def _fill(template: str, words: dict[str, str]) -> str:
    """The template with fixed words (not slots: they are part of the customer's typed text) put in."""
    for key, word in words.items():
        template = template.replace("{" + key + "}", word)
    return template


def _mention_roles(
    sc: _Scene,
    scene: dict[str, Any],
    steps: list[str],
    slot: str,
    values: list[str],
    rng: Random,
    echo: float,
    words: dict[str, str] | None = None,
) -> dict[str, int]:
    """One mention exchange per step (the customer gives ``values[i]`` in the role ``steps[i]``);
    returns role -> index of its value."""
    roles = {}
    for i, step in enumerate(steps):
        bank = scene["mentions"][step]
        sc.mentions.append(
            (_fill(rng.choice(bank["user"]), words or {}), _echo(rng, echo, bank["bot"]), {slot: values[i]})
        )
        roles[step] = i
    return roles


def _probe_prefix(probes: dict[str, list[str]], cue: bool, rng: Random, words: dict[str, str] | None = None) -> str:
    """The assistant's answer prefix (restating the customer's words for the wanted entity when ``cue``)."""
    return sg.expand(_fill(rng.choice(probes["cued"] if cue else probes["plain"]), words or {}), rng)


def _scene_order(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["order_id"], _Scene()
    prods = rng.sample(kb.products, n)
    orders = _distinct(_order_id, n + 12, rng)
    sc.values, sc.pool = orders[:n], orders[n:]
    t = rng.randrange(n)
    sc.opening = (_fill(scene["opening"], {"count": _COUNT_WORD[n], "both": "all three" if n == 3 else "both"}), {})
    sc.opening_bot = scene["opening_bot"]
    statuses = []
    for i in range(n):
        status = rng.choice(_RETENTION["order_issues"]) if i == t else rng.choice(_RETENTION["order_fine"])
        statuses.append(status)
        user = rng.choice(scene["mention_user"])
        bot = _echo(rng, echo, scene["mention_bot"])
        if i < n - 1:
            bot += " " + sg.expand(rng.choice(_RETENTION["ask_more"]), rng)
        sc.mentions.append((user, bot, {"o": orders[i], "p": prods[i]["name"], "s": status}))
    sc.answer, sc.role = t, "order_with_issue"
    sc.prefix = (
        sg.expand(rng.choice(scene["probe_cued"] if cue else scene["probe"]), rng)
        .replace("{p}", prods[t]["name"])
        .replace("{s}", statuses[t])
    )
    sc.extra = {"products": [p["name"] for p in prods], "answer_product": prods[t]["name"]}
    return sc


def _scene_product(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["product"], _Scene()
    prods = [p["name"] for p in rng.sample(kb.products, n)]
    t = rng.randrange(n)
    sc.values = prods
    sc.pool = [p["name"] for p in kb.products if p["name"] not in prods]
    sc.opening = (_fill(scene["opening"], {"count": _COUNT_WORD[n]}), {})
    sc.opening_bot = scene["opening_bot"]
    statuses = []
    for i in range(n):
        status = rng.choice(_RETENTION["device_issues"]) if i == t else rng.choice(_RETENTION["device_fine"])
        statuses.append(status)
        user = rng.choice(scene["mention_user"])
        bot = _echo(rng, echo, scene["mention_bot"])
        if i < n - 1:
            bot += " " + sg.expand(rng.choice(scene["ask_next"]), rng)
        sc.mentions.append((user, bot, {"p": prods[i], "s": status}))
    sc.answer, sc.role = t, "faulty_device"
    sc.prefix = sg.expand(rng.choice(scene["probe_cued"] if cue else scene["probe"]), rng).replace("{s}", statuses[t])
    return sc


# Address mentions in order, per layout: a shipping address (maybe corrected by "fix") and a billing one.
_ADDRESS_LAYOUTS = {
    2: {"correction": ["ship", "fix"], "ship_bill": ["ship", "bill"], "bill_ship": ["bill", "ship"]},
    3: {
        "ship_bill_fix": ["ship", "bill", "fix"],
        "bill_ship_fix": ["bill", "ship", "fix"],
        "ship_fix_bill": ["ship", "fix", "bill"],
    },
}


def _scene_address(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["address"], _Scene()
    addrs = _distinct(_address, n + 12, rng)
    sc.pool = addrs[n:]
    product = rng.choice(kb.products)["name"]
    sc.opening = (scene["opening"], {"prod": product})
    sc.opening_bot = scene["opening_bot"]
    layout = rng.choice(list(_ADDRESS_LAYOUTS[n]))
    roles = _mention_roles(sc, scene, _ADDRESS_LAYOUTS[n][layout], "a", addrs, rng, echo)
    target = rng.choice(["ship"] + (["bill"] if "bill" in roles else []))
    sc.values = addrs[:n]
    if target == "ship":
        sc.answer, sc.role = roles.get("fix", roles.get("ship")), "shipping_address"
        sc.corrected = "fix" in roles
        probes = scene["probes"]["ship"]
        bank = (probes["cued_corrected"] if sc.corrected else probes["cued"]) if cue else probes["plain"]
        sc.prefix = sg.expand(rng.choice(bank), rng).replace("{p}", product)
    else:
        sc.answer, sc.role = roles["bill"], "billing_address"
        sc.prefix = _probe_prefix(scene["probes"]["bill"], cue, rng)
    sc.extra = {"layout": layout}
    return sc


def _scene_card(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["card"], _Scene()
    cards = _distinct(_card, n + 12, rng)
    sc.pool = cards[n:]
    sc.opening = (scene["opening"], {"prod": rng.choice(kb.products)["name"]})
    sc.opening_bot = scene["opening_bot"]
    steps = rng.sample(["charged", "new"], 2)
    if n == 3:
        steps.insert(rng.randrange(3), "declined")
    roles = _mention_roles(sc, scene, steps, "c", cards, rng, echo)
    sc.values = cards[:n]
    target = "charged" if rng.random() < 0.5 else "new"
    sc.answer, sc.role = roles[target], {"charged": "refund_card", "new": "billing_card"}[target]
    sc.prefix = _probe_prefix(scene["probes"][target], cue, rng)
    sc.extra = {"layout": "_".join(steps)}
    return sc


def _scene_email(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["email"], _Scene()
    first, last = rng.choice(_PEOPLE["first_names"]), rng.choice(_PEOPLE["last_names"])
    emails = _distinct(
        lambda r: _email(r, first if r.random() < 0.7 else None, last if r.random() < 0.7 else None), n + 12, rng
    )
    sc.pool = emails[n:]
    sc.opening = (scene["opening"], {})
    sc.opening_bot = scene["opening_bot"]
    steps = ["old", "new"] if rng.random() < 0.6 else ["new", "old"]
    if n == 3:
        steps.insert(rng.randrange(3), "work")
    roles = _mention_roles(sc, scene, steps, "e", emails, rng, echo)
    sc.values = emails[:n]
    target = rng.choice(["new", "old"] + (["work"] if n == 3 else []))
    sc.answer = roles[target]
    sc.role = {"new": "new_email", "old": "old_email", "work": "invoice_email"}[target]
    sc.corrected = target == "new"
    sc.prefix = _probe_prefix(scene["probes"][target], cue, rng)
    sc.extra = {"layout": "_".join(steps)}
    return sc


def _scene_name(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    scene, sc = _RETENTION["scenes"]["name"], _Scene()
    family = rng.random() < 0.6
    last = rng.choice(_PEOPLE["last_names"])
    names = _distinct(lambda r: _name(r, last if family else None), n, rng)
    sc.pool = _distinct(lambda r: _name(r, last if family and r.random() < 0.5 else None), 12, rng, avoid=names)
    rel = rng.choice(_RETENTION["relations"])
    sc.opening = (_fill(scene["opening"], {"rel": rel}), {})
    sc.opening_bot = scene["opening_bot"]
    steps = rng.sample(["holder", "caller"], 2)
    if n == 3:
        steps.insert(rng.randrange(3), "tech")
    roles = _mention_roles(sc, scene, steps, "n", names, rng, echo, {"rel": rel})
    sc.values = names
    target = rng.choice(["holder", "caller"])
    sc.answer, sc.role = roles[target], {"holder": "account_holder", "caller": "caller"}[target]
    sc.prefix = _probe_prefix(scene["probes"][target], cue, rng, {"rel": rel})
    sc.extra = {"relation": rel, "shared_last_name": family}
    return sc


_SCENES = {
    "order_id": _scene_order,
    "product": _scene_product,
    "address": _scene_address,
    "card": _scene_card,
    "email": _scene_email,
    "name": _scene_name,
}
_MENTION_ORDINAL = ("first", "second", "third")


def _digression(kind: str, rng: Random, kb: sg.KnowledgeBase) -> tuple[str, str, dict]:
    """(user turn, assistant turn, metadata) of a side exchange: small talk, a troubleshooting
    question or a policy question answered with a fact."""
    if kind in ("small_talk", "troubleshooting"):
        user, bot = rng.choice(_RETENTION["digressions"][kind])
        return user, bot, {}
    facts = [f for f in kb.facts if f.group in ("policy", "plan")]
    fact = rng.choice(facts)
    lead = sg.expand(rng.choice(_RETENTION["digressions"]["policy_question_leads"]), rng)
    q = sg.question(fact, rng)
    if lead and not lead.endswith(": ") and q[1:2].islower() and q[:2] not in ("I ", "I'"):
        q = q[0].lower() + q[1:]
    answer = rng.choice(sg.ANSWER_OPENERS) + sg.fact_sentence(fact, rng)
    return sg.escape_template(lead + q), sg.escape_template(answer), {"fact": fact.fact_id}


def _play_scene(
    sc: _Scene, style: str, n_between: int, n_after: int, mix: DigressionMix, kb: sg.KnowledgeBase, rng: Random
) -> tuple[sg.ConversationBuilder, list[int], list[dict[str, Any]]]:
    """(conversation, turn of each mention, digressions): the opening, the mentions with digressions
    between them, then ``n_after`` digressions; the customer's final line is not said yet."""
    c = sg.ConversationBuilder(rng, style)
    c.slots = {"agent": rng.choice(_PEOPLE["agents"])}
    opener = rng.choice(_DIALOGUE["openers"][style])
    c.say("user", opener + sc.opening[0], **sc.opening[1])
    greet = rng.choice(_DIALOGUE["greet_bot"]) + " " if rng.random() < 0.5 else ""
    c.say("assistant", greet + sc.opening_bot)
    # digressions between mentions go after a random mention other than the last
    between_at = sorted(rng.randrange(len(sc.mentions) - 1) for _ in range(n_between))
    mention_turn: list[int] = []
    digs: list[dict[str, Any]] = []

    def digress() -> None:
        kind = _weighted(mix, rng)
        u, b, meta = _digression(kind, rng, kb)
        c.say("user", u)
        c.say("assistant", b)
        digs.append({"type": kind, **meta})

    for m, (user, bot, slots) in enumerate(sc.mentions):
        c.say("user", user, **slots)
        mention_turn.append(len(c.turns) - 1)
        c.say("assistant", bot, **slots)
        for _ in range(between_at.count(m)):
            digress()
    for _ in range(n_after):
        digress()
    return c, mention_turn, digs


def _retention_item(i: int, kb: sg.KnowledgeBase, s: ChatItemSettings) -> dict[str, Any]:
    r = s.retention
    rng = Random(f"chat-rt:{s.seed}:{i}")
    probe = _weighted(r.probe_mix, rng)
    n_ent = rng.randint(*r.entities)
    n_between = rng.randint(*r.digressions_between)
    n_after = rng.randint(*r.digressions)
    style = rng.choice(sg.STYLES)
    cue = rng.random() < r.restate_cue
    sc = _SCENES[probe](rng, n_ent, kb, r.assistant_echo, cue)
    c, mention_turn, digs = _play_scene(sc, style, n_between, n_after, r.digression_mix, kb, rng)
    last_mention_turns = {v: max(t for t, turn in enumerate(c.turns) if v in turn["text"]) for v in sc.values}
    c.say("user", rng.choice(_RETENTION["final_user"]))
    turns = [{"role": "system", "text": s.system_prompt}] + c.turns
    prefix = sc.prefix.rstrip()
    answer_value = sc.values[sc.answer]
    confusables = [v for k, v in enumerate(sc.values) if k != sc.answer]
    context = _text_of(turns, prefix)
    picked = _choose(answer_value, confusables, sc.pool, rng, context, s.n_choices)
    if picked is None:  # pools hold 12 fresh values; cannot happen with n_choices <= 6
        raise RuntimeError(f"retention item {i}: not enough distractors")
    choices, answer = picked
    probe_turn = len(c.turns)  # the open assistant turn (without the system turn)
    latest = max(sc.values, key=lambda v: (last_mention_turns[v], sc.values.index(v)))
    meta = {
        "probe_type": probe,
        "role": sc.role,
        "style": style,
        "n_entities": n_ent,
        "restated_cue": cue,
        "answer_mention": _MENTION_ORDINAL[sc.answer],
        "answer_is_latest_mention": latest == answer_value,
        "answer_is_correction": sc.corrected,
        "n_digressions": n_after,
        "n_digressions_between": n_between,
        "digressions": [d["type"] for d in digs],
        "gap_turns": probe_turn - last_mention_turns[answer_value],
        "source_turn": mention_turn[sc.answer],
        "recall_turn": probe_turn,
        "n_turns": len(c.turns) + 1,
        "answer_echoed": any(answer_value in t["text"] for t in c.turns if t["role"] == "assistant"),
        "confusables_in_context": [v for v in confusables if v in context],
        **sc.extra,
    }
    return {
        "item_id": f"chat-rt-{i:04d}",
        "task": "retention",
        "turns": turns,
        "assistant_prefix": prefix,
        "choices": choices,
        "answer": answer,
        "metadata": meta,
    }


# =========================================================================== entry points
def generate_items(settings: ChatItemSettings | None = None) -> list[dict[str, Any]]:
    """All structured items for the settings (deterministic)."""
    s = settings or ChatItemSettings()
    kb = sg.build_knowledge_base(s.seed)
    items = _policy_items(kb, s)
    items += [_retention_item(i, kb, s) for i in range(s.counts.retention)]
    for it in items:
        validate_task_item(it, f"generated item {it['item_id']}")
    return items


def summarize(items: list[dict[str, Any]]) -> dict[str, Any]:
    rt = [it["metadata"] for it in items if it["task"] == "retention"]
    out: dict[str, Any] = {"task_items": dict(sorted(Counter(it["task"] for it in items).items()))}
    if rt:
        out["retention"] = {
            "probe_types": dict(sorted(Counter(m["probe_type"] for m in rt).items())),
            "entities": dict(sorted(Counter(m["n_entities"] for m in rt).items())),
            "answer_mention": dict(sorted(Counter(m["answer_mention"] for m in rt).items())),
            "answer_is_latest_mention": round(statistics.mean(m["answer_is_latest_mention"] for m in rt), 3),
            "digressions_mean": round(statistics.mean(m["n_digressions"] + m["n_digressions_between"] for m in rt), 2),
            "gap_turns_mean": round(statistics.mean(m["gap_turns"] for m in rt), 2),
            "turns_mean": round(statistics.mean(m["n_turns"] for m in rt), 2),
        }
    return out


def write_chat_items(settings_path: str | Path = DEFAULT_SETTINGS, out: str | Path = DEFAULT_OUT) -> dict[str, Any]:
    """Generate the structured task items from the settings file and write them as JSONL;
    return a summary (counts per task, retention mix)."""
    settings = load_settings(settings_path)
    items = generate_items(settings)
    dest = resolve(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8", newline="\n") as fh:
        for it in items:
            fh.write(json.dumps(it, ensure_ascii=False) + "\n")
    return {
        "out": str(dest),
        "settings": str(settings_path),
        "seed": settings.seed,
        **summarize(items),
        "bytes": dest.stat().st_size,
    }


if __name__ == "__main__":  # python -m quantstudy_demo.chatitems [settings.yaml [out.jsonl]]
    args = sys.argv[1:]
    try:
        summary = write_chat_items(*(args[:2] or [DEFAULT_SETTINGS]))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=1))
