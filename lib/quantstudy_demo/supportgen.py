"""Seeded synthetic in-domain data for the offline demo.

One fictional company, Nimbus Home Networks (routers, mesh systems, cameras, accessories
and support plans), gives:

* a knowledge base of ~60 facts, each with a stable ``fact_id``, an exact ``value`` string
  and same-kind distractors (:func:`build_knowledge_base`);
* customer-support conversations over 10 intents and 5 customer styles, built from
  paraphrase banks (``[a|b|c]`` alternations, nested) with typos, digressions and planted
  personal data whose character offsets are recorded (:func:`generate_conversations`);
* help-centre articles restating the facts (:func:`help_articles`);
* multiple-choice task items scored by log-likelihood ranking (:func:`task_items`).

Everything is drawn from ``random.Random(seed)`` instances (no global state); the same seed
gives byte-identical files (:func:`write_demo_data`). The catalogue and every phrasing live in
the bank files of :mod:`quantstudy_demo.banks`; this module holds the generating logic.
"""

from __future__ import annotations

import json
import re
import statistics
import string
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from quantstudy.data import format_conversation
from quantstudy.paths import resolve
from quantstudy_demo import banks

_CATALOGUE = banks.load("catalogue")
_FACT_PHRASES = banks.load("facts")
_PEOPLE = banks.load("people")
_DIALOGUE = banks.load("dialogue")
_ARTICLES = banks.load("articles")

COMPANY = _CATALOGUE["company"]
SPLITS = ("train", "calib", "eval", "task")
INTENTS = (
    "refund",
    "return_rma",
    "warranty_claim",
    "billing_question",
    "plan_upgrade",
    "shipping_status",
    "tech_troubleshooting",
    "privacy_request",
    "account_change",
    "product_inquiry",
)
STYLES = ("terse", "polite", "angry", "chatty", "non_native")
PII_TYPES = ("NAME", "EMAIL", "PHONE", "ADDRESS", "ORDER_ID", "CARD")
TASKS = ("policy_closed_book", "policy_grounded", "retention")
DEFAULT_COUNTS = {
    "n_train": 7000,
    "n_calib": 600,
    "n_eval": 400,
    "n_task": 500,
    "n_articles": 400,
    "n_closed_book": 400,
    "n_grounded": 400,
    "n_retention": 400,
}
TYPO_RATE = {"terse": 0.04, "polite": 0.008, "angry": 0.03, "chatty": 0.02, "non_native": 0.045}
MAX_TURNS = 12
MIN_TURNS = 4

# Banks read by other modules and the tests.
STATEMENTS: dict[str, list[list[str]]] = _FACT_PHRASES["statements"]  # attribute -> [prefix, suffix] pairs
QUESTIONS: dict[str, list[str]] = _FACT_PHRASES["questions"]
ANSWER_OPENERS: list[str] = _FACT_PHRASES["answer_openers"]
_FIRST: list[str] = _PEOPLE["first_names"]
_LAST: list[str] = _PEOPLE["last_names"]


# =========================================================================== knowledge base
@dataclass(frozen=True)
class Fact:
    fact_id: str
    group: str  # product / plan / policy
    subject: str  # "Lumen X2", "Nimbus Shield", "" for policies
    attribute: str  # price, sku, warranty, plan_price, sla, clips, refund_window, ...
    kind: str  # price, sku, months, monthly_price, hours, days, percent, ...
    value: str
    distractors: tuple[str, ...]


@dataclass
class KnowledgeBase:
    company: str
    products: list[dict[str, Any]]
    plans: list[dict[str, Any]]
    facts: list[Fact]
    rules: list[str]
    _by_id: dict[str, Fact] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {f.fact_id: f for f in self.facts}

    def fact(self, fact_id: str) -> Fact:
        return self._by_id[fact_id]

    def to_json(self) -> dict[str, Any]:
        return {
            "company": self.company,
            "products": self.products,
            "plans": self.plans,
            "rules": self.rules,
            "facts": [{**asdict(f), "distractors": list(f.distractors)} for f in self.facts],
        }


# Which catalogue field each product or plan fact states: (attribute, kind, field).
_PRODUCT_FACTS = (("price", "price", "price"), ("sku", "sku", "sku"), ("warranty", "months", "warranty"))
_PLAN_FACTS = (
    ("plan_price", "monthly_price", "monthly_price"),
    ("sla", "hours", "support_sla"),
    ("clips", "days", "clip_history"),
)


def _money(v: str) -> float:
    return float(v.strip("$"))


def _distractors(kind: str, value: str, rng: Random, kb_values: list[str], n: int = 5) -> tuple[str, ...]:
    """Same-kind alternatives: close in magnitude for prices, other real SKUs for SKUs."""
    if kind == "sku":
        prefix = value[:2]
        same = [v for v in kb_values if v != value and v.startswith(prefix)]
        other = [v for v in kb_values if v != value and not v.startswith(prefix)]
        digits = value[3:]
        fakes = [
            f"{prefix}-{digits[1]}{digits[0]}{digits[2:]}",
            f"{prefix}-{digits[:2]}{digits[3]}{digits[2]}",
            f"{prefix}-{int(digits) + 100:04d}",
        ]
        pool = same + [f for f in fakes if f not in kb_values and f != value] + other
        return tuple(dict.fromkeys(pool))[:n]
    pool = [v for v in _CATALOGUE["value_pools"][kind] if v != value]
    if kind in ("price", "monthly_price"):
        pool.sort(key=lambda v: (abs(_money(v) - _money(value)) / _money(value), v))
        pool = pool[: max(n + 2, 7)]
    rng.shuffle(pool)
    return tuple(pool[:n])


def build_knowledge_base(seed: int = 0) -> KnowledgeBase:
    """The fictional company's catalogue, plans and policies as facts with distractors."""
    rng = Random(f"kb:{seed}")
    products = [dict(p) for p in _CATALOGUE["products"]]
    plans = [dict(p) for p in _CATALOGUE["plans"]]
    skus = [p["sku"] for p in products]
    facts = []
    for p in products:
        for attr, kind, key in _PRODUCT_FACTS:
            facts.append(
                Fact(
                    f"product.{p['sku']}.{attr}",
                    "product",
                    p["name"],
                    attr,
                    kind,
                    p[key],
                    _distractors(kind, p[key], rng, skus),
                )
            )
    for p in plans:
        for attr, kind, key in _PLAN_FACTS:
            facts.append(
                Fact(
                    f"plan.{p['key']}.{attr}",
                    "plan",
                    p["name"],
                    attr,
                    kind,
                    p[key],
                    _distractors(kind, p[key], rng, skus),
                )
            )
    for pol in _CATALOGUE["policies"]:
        attr, kind, value = pol["attribute"], pol["kind"], pol["value"]
        facts.append(Fact(f"policy.{attr}", "policy", "", attr, kind, value, _distractors(kind, value, rng, skus)))
    return KnowledgeBase(COMPANY, products, plans, facts, list(_CATALOGUE["rules"]))


# =========================================================================== text building
_ALT = re.compile(r"\[([^\[\]]*)\]")
_FMT = string.Formatter()


def expand(template: str, rng: Random) -> str:
    """Resolve ``[a|b|c]`` alternations (innermost first, so they nest)."""
    while True:
        m = _ALT.search(template)
        if m is None:
            return template
        template = template[: m.start()] + rng.choice(m.group(1).split("|")) + template[m.end() :]


@dataclass(frozen=True)
class Tag:
    """A slot value whose position is recorded: personal data, a quoted fact, a detail."""

    text: str
    pii: str | None = None
    fact: str | None = None
    detail: str | None = None


_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def _typo(word: str, rng: Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:
        return word[:i] + word[i + 1 :]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_KEYBOARD) + word[i + 1 :]


def _userize(text: str, style: str, rng: Random) -> str:
    rate = TYPO_RATE[style]
    parts = re.split(r"(\s+)", text)
    parts = [_typo(p, rng) if p and not p.isspace() and rng.random() < rate else p for p in parts]
    out = "".join(parts)
    if style == "terse" or (style == "non_native" and rng.random() < 0.2):
        out = out.lower()
    return out


class ConversationBuilder:
    """Builds one conversation, recording offsets of tagged slots."""

    def __init__(self, rng: Random, style: str) -> None:
        self.rng, self.style = rng, style
        self.turns: list[dict[str, str]] = []
        self.pii: list[dict[str, Any]] = []
        self.fact_spans: list[dict[str, Any]] = []
        self.given: dict[str, tuple[int, str]] = {}  # detail type -> (turn, text), user-given
        self.recall: dict[str, Any] | None = None
        self.slots: dict[str, Any] = {}

    def say(self, role: str, template: str, **slots: Any) -> None:
        template = expand(template, self.rng)
        values = {**self.slots, **slots}
        text = ""
        spans: list[tuple[int, int, Tag]] = []
        for literal, name, _spec, _conv in _FMT.parse(template):
            if literal:
                if role == "user":
                    literal = _userize(literal, self.style, self.rng)
                literal = re.sub(r" {2,}", " ", literal)
                if text.endswith(" ") and literal.startswith(" "):
                    literal = literal[1:]
                text += literal
            if name is not None:
                v = values[name]
                if isinstance(v, Tag):
                    spans.append((len(text), len(text) + len(v.text), v))
                    text += v.text
                else:
                    text += str(v)
        lead = len(text) - len(text.lstrip())
        text = text.strip()
        t = len(self.turns)
        self.turns.append({"role": role, "text": text})
        for s, e, tag in spans:
            s, e = s - lead, e - lead
            if tag.pii:
                self.pii.append({"turn": t, "start": s, "end": e, "type": tag.pii, "text": tag.text})
            if tag.fact:
                self.fact_spans.append({"turn": t, "start": s, "end": e, "fact_id": tag.fact})
            if not tag.detail:
                continue
            base, _, recall = tag.detail.partition("@")
            if role == "user" and not recall and base not in self.given:
                self.given[base] = (t, tag.text)
            elif role == "assistant" and recall:
                self.recall = {
                    "turn": t,
                    "start": s,
                    "end": e,
                    "type": base,
                    "text": tag.text,
                    "source_turn": self.given[base][0],
                }


def _pick(bank: dict[str, list[str]] | list[str], style: str, rng: Random) -> str:
    if isinstance(bank, list):
        return rng.choice(bank)
    if style in bank and (rng.random() < 0.6 or "*" not in bank):
        return rng.choice(bank[style])
    return rng.choice(bank["*"])


def statement(fact: Fact, rng: Random) -> tuple[str, str]:
    """(prefix, suffix) of one phrasing of the fact, subject filled, alternations resolved."""
    prefix, suffix = rng.choice(STATEMENTS[fact.attribute])
    return expand(prefix, rng).replace("{s}", fact.subject), expand(suffix, rng).replace("{s}", fact.subject)


def question(fact: Fact, rng: Random) -> str:
    return expand(rng.choice(QUESTIONS[fact.attribute]), rng).replace("{s}", fact.subject)


# =========================================================================== conversations
@dataclass
class _Ex:
    user: Callable[[ConversationBuilder], tuple[str, dict[str, Any]]]
    bot: Callable[[ConversationBuilder], tuple[str, dict[str, Any]]]
    ask: str = ""


def escape_template(text: str) -> str:
    """Text made literal for :meth:`ConversationBuilder.say`: no slots, no alternations."""
    return text.replace("{", "{{").replace("}", "}}").replace("[", "(").replace("]", ")")


def _fact_ex(fact: Fact, rng: Random, style: str) -> _Ex:
    def user(c: ConversationBuilder) -> tuple[str, dict[str, Any]]:
        lead = expand(_pick(_DIALOGUE["fact_follow"], style, rng), rng)
        q = question(fact, rng)
        if lead and not lead.endswith(": ") and q[:2] not in ("I ", "I'") and q[1:2].islower():
            q = q[0].lower() + q[1:]
        hedge = rng.choice(_DIALOGUE["hedges"][style]) if rng.random() < 0.3 else ""
        return lead + escape_template(q) + hedge, {}

    def bot(c: ConversationBuilder) -> tuple[str, dict[str, Any]]:
        prefix, suffix = statement(fact, rng)
        elab = " " + rng.choice(_FACT_PHRASES["elaborations"][fact.attribute]) if rng.random() < 0.4 else ""
        return (
            rng.choice(ANSWER_OPENERS) + escape_template(prefix) + " {v}" + escape_template(suffix) + elab,
            {"v": Tag(fact.value, fact=fact.fact_id)},
        )

    return _Ex(user, bot)


def _simple_ex(user_bank: Any, bot_bank: list[str], rng: Random, style: str, ask: str = "") -> _Ex:
    return _Ex(lambda c: (_pick(user_bank, style, rng), {}), lambda c: (rng.choice(bot_bank), {}), ask)


def _intent_facts(
    intent: str, kb: KnowledgeBase, product: dict, plan: dict, rng: Random
) -> tuple[list[str], list[str]]:
    """(required fact ids, optional fact ids) for a conversation."""
    sku = product["sku"]
    pf = lambda a: f"product.{sku}.{a}"  # noqa: E731
    pl = lambda a: f"plan.{plan['key']}.{a}"  # noqa: E731
    other_plan = rng.choice([p for p in kb.plans if p["key"] != plan["key"]])["key"]
    table = {
        "refund": (
            ["policy.refund_window"],
            ["policy.refund_processing", "policy.restocking_fee", "policy.price_match", pf("price")],
        ),
        "return_rma": (
            ["policy.rma_validity"],
            ["policy.restocking_fee", "policy.refund_processing", "policy.standard_shipping", pf("sku")],
        ),
        "warranty_claim": ([pf("warranty")], [pf("sku"), "policy.rma_validity", pl("sla")]),
        "billing_question": (
            ["policy.billing_day"],
            ["policy.late_fee", "policy.grace_period", pl("plan_price"), "policy.annual_discount"],
        ),
        "plan_upgrade": (
            [pl("plan_price")],
            [pl("sla"), pl("clips"), "policy.annual_discount", f"plan.{other_plan}.plan_price", "policy.billing_day"],
        ),
        "shipping_status": (
            [rng.choice(["policy.standard_shipping", "policy.express_shipping"])],
            ["policy.express_cost", "policy.free_shipping_threshold", pf("price")],
        ),
        "tech_troubleshooting": ([], [pf("sku"), pl("sla"), pf("warranty")]),
        "privacy_request": (["policy.privacy_response"], ["policy.data_retention", pl("clips")]),
        "account_change": ([], ["policy.billing_day", pl("sla"), "policy.data_retention"]),
        "product_inquiry": (
            [pf("price")],
            [
                pf("sku"),
                pf("warranty"),
                "policy.free_shipping_threshold",
                "policy.price_match",
                "policy.standard_shipping",
            ],
        ),
    }
    return table[intent]


def _persona(rng: Random, kb: KnowledgeBase) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    name = f"{first} {last}"
    sep = rng.choice([".", "_", ""])
    local = (
        rng.choice(
            [
                f"{first}{sep}{last}",
                f"{first[0]}{last}",
                f"{first}{rng.randint(1, 99)}",
                f"{last}{sep}{first[0]}{rng.randint(10, 999)}",
            ]
        )
        .lower()
        .replace("'", "")
    )
    email = f"{local}@{rng.choice(_PEOPLE['email_domains'])}"
    area = rng.randint(201, 989)
    line = rng.randint(100, 199)
    phone = rng.choice(
        [f"({area}) 555-0{line}", f"{area}-555-0{line}", f"+1 {area} 555 0{line}", f"{area}.555.0{line}"]
    )
    city, state = rng.choice(_PEOPLE["cities"])
    address = (
        f"{rng.randint(3, 9899)} {rng.choice(_PEOPLE['streets'])} {rng.choice(_PEOPLE['street_suffixes'])}, "
        f"{city}, {state} {rng.randint(10000, 99950)}"
    )
    order = f"ORD-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    card = f"{rng.randint(0, 9999):04d}"
    return {
        "name": name,
        "first": first,
        "email": email,
        "phone": phone,
        "address": address,
        "order": order,
        "card": card,
    }


def _conversation_slots(per: dict[str, Any], product: dict, plan: dict, plan_from: dict, agent: str) -> dict[str, Any]:
    """Template slots of one conversation; Tags record where personal data and recalled details land."""
    return {
        "name": Tag(per["name"], pii="NAME", detail="NAME"),
        "first": Tag(per["first"], pii="NAME"),
        "email": Tag(per["email"], pii="EMAIL"),
        "phone": Tag(per["phone"], pii="PHONE"),
        "address": Tag(per["address"], pii="ADDRESS"),
        "order": Tag(per["order"], pii="ORDER_ID", detail="ORDER_ID"),
        "card": Tag(per["card"], pii="CARD"),
        "product": Tag(product["name"], detail="PRODUCT"),
        "plan": plan["name"],
        "plan_from": plan_from["name"],
        "agent": agent,
        "name_rc": Tag(per["name"], pii="NAME", detail="NAME@recall"),
        "order_rc": Tag(per["order"], pii="ORDER_ID", detail="ORDER_ID@recall"),
        "product_rc": Tag(product["name"], detail="PRODUCT@recall"),
    }


def _opening_ex(intent: str, style: str, rng: Random) -> _Ex:
    """The customer's request and the agent's greeting and acknowledgement."""

    def user(c: ConversationBuilder) -> tuple[str, dict]:
        return rng.choice(_DIALOGUE["openers"][style]) + _pick(_DIALOGUE["requests"][intent], style, rng), {}

    def bot(c: ConversationBuilder) -> tuple[str, dict]:
        greet = rng.choice(_DIALOGUE["greet_bot"]) if rng.random() < 0.8 else ""
        complaint = intent in (
            "refund",
            "return_rma",
            "warranty_claim",
            "billing_question",
            "shipping_status",
            "tech_troubleshooting",
        )
        sorry = rng.choice(_DIALOGUE["sorry_bot"]) if style == "angry" or (complaint and rng.random() < 0.3) else ""
        bridge = rng.choice(_DIALOGUE["bridge_bot"]) if rng.random() < 0.35 else ""
        return f"{greet} {sorry}{rng.choice(_DIALOGUE['ack_bot'][intent])} {bridge}", {}

    return _Ex(user, bot)


def _detail_exs(intent: str, style: str, rng: Random) -> list[_Ex]:
    """Troubleshooting rounds and the personal details (email, address, phone, card) the intent asks for."""
    extra: list[_Ex] = []
    if intent == "tech_troubleshooting":
        extra.append(_simple_ex(_DIALOGUE["trouble_user"], _DIALOGUE["trouble_bot"], rng, style))
        if rng.random() < 0.5:
            extra.append(_simple_ex(_DIALOGUE["trouble_user"], _DIALOGUE["trouble_bot"], rng, style))
    pii_pool = {
        "privacy_request": ["email"],
        "account_change": ["address", "phone", "email"],
        "shipping_status": ["address"],
        "billing_question": ["card"],
        "refund": ["card", "email"],
        "warranty_claim": ["address", "phone"],
    }.get(intent, ["email", "phone"])
    n_pii = (
        1
        if intent in ("privacy_request", "account_change", "billing_question", "shipping_status")
        else rng.randint(0, 1)
    )
    n_pii += intent == "account_change" and rng.random() < 0.5  # sometimes a second detail
    for kind in rng.sample(pii_pool, k=min(n_pii, len(pii_pool))):
        extra.append(
            _simple_ex(_DIALOGUE[f"{kind}_user"], _DIALOGUE[f"{kind}_bot"], rng, style, _DIALOGUE["asks"][kind])
        )
    return extra


def _trim_middle(middle: list[_Ex], fact_exs: list[_Ex], n_required: int, max_middle: int) -> list[_Ex]:
    """At most ``max_middle`` exchanges: the first one and the required facts always, then the others in order."""
    if len(middle) <= max_middle:
        return middle
    must = {id(e) for e in fact_exs[:n_required]} | {id(middle[0])}
    rest = [id(e) for e in fact_exs if id(e) not in must] + [id(e) for e in middle if id(e) not in must]
    keep = must | set(rest[: max(0, max_middle - len(must))])
    return [e for e in middle if id(e) in keep]


def _middle_exs(
    intent: str, style: str, kb: KnowledgeBase, product: dict, plan: dict, rng: Random, coverage: Counter | None
) -> tuple[list[_Ex], list[_Ex]]:
    """(exchanges between opening and closing, the fact exchanges among them): identification,
    quoted facts (rarely stated ones favoured), personal details and maybe a digression."""
    middle: list[_Ex] = []
    if intent not in ("product_inquiry",) and rng.random() < 0.8:
        middle.append(
            _simple_ex(_DIALOGUE["identify_user"], _DIALOGUE["identify_bot"], rng, style, _DIALOGUE["asks"]["identify"])
        )
    required, optional = _intent_facts(intent, kb, product, plan, rng)
    k_opt = rng.randint(0 if required else 1, min(2, len(optional)))
    cov = coverage if coverage is not None else Counter()
    ranked = sorted(optional, key=lambda f: (cov[f] + 40 * rng.random(), f))  # favour rarely stated facts
    facts = list(required) + ranked[:k_opt]
    fact_exs = [_fact_ex(kb.fact(f), rng, style) for f in facts]
    extra = _detail_exs(intent, style, rng)
    body = extra + fact_exs
    if intent == "tech_troubleshooting":
        body = extra[:1] + fact_exs + extra[1:]
    else:
        rng.shuffle(body)
    middle += body
    if style == "chatty" and rng.random() < 0.7 or rng.random() < 0.08:
        middle.insert(
            rng.randint(1, len(middle)) if middle else 0,
            _simple_ex(_DIALOGUE["digression_user"], _DIALOGUE["digression_bot"], rng, style),
        )
    max_middle = min(MAX_TURNS // 2 - 2, rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
    return _trim_middle(middle, fact_exs, len(required), max_middle), fact_exs


def _closing_ex(style: str, rng: Random) -> _Ex:
    """The customer's thanks; the agent's goodbye, usually recalling a detail given 3+ turns earlier."""

    def user(c: ConversationBuilder) -> tuple[str, dict]:
        return _pick(_DIALOGUE["closings_user"], style, rng), {}

    def bot(c: ConversationBuilder) -> tuple[str, dict]:
        t_now = len(c.turns)
        options = sorted(d for d, (t, _) in c.given.items() if t_now - t >= 3)
        parts = []
        if options and rng.random() < 0.9:
            parts.append(rng.choice(_DIALOGUE["recall"][rng.choice(options)]))
        parts.append(rng.choice(_DIALOGUE["closings_bot"]))
        return " ".join(parts), {}

    return _Ex(user, bot)


def _play(c: ConversationBuilder, exs: list[_Ex], rng: Random) -> None:
    """Say every exchange; the agent's turn ends with the next exchange's question, if any."""
    for i, ex in enumerate(exs):
        ut, us = ex.user(c)
        c.say("user", ut, **us)
        bt, bs = ex.bot(c)
        if i + 1 < len(exs) and exs[i + 1].ask:
            bt = bt + " " + exs[i + 1].ask
        elif i + 1 < len(exs) and rng.random() < 0.3:
            bt = bt + " " + rng.choice(_DIALOGUE["anything_else"])
        c.say("assistant", bt, **bs)
    if len(c.turns) < MAX_TURNS and rng.random() < 0.15:
        c.say("user", rng.choice(_DIALOGUE["goodbyes"]))


def support_conversation(
    cid: str, split: str, rng: Random, kb: KnowledgeBase, coverage: Counter | None = None
) -> dict[str, Any]:
    """One seeded support conversation with its metadata (intent, style, quoted facts, personal data
    offsets, recall probe); ``coverage`` counts facts stated so far in the train split."""
    intent = rng.choice(INTENTS)
    style = rng.choice(STYLES)
    product = rng.choice(kb.products)
    plan = rng.choice(kb.plans)
    per = _persona(rng, kb)
    c = ConversationBuilder(rng, style)
    plan_from = rng.choice([p for p in kb.plans if p["key"] != plan["key"]])
    c.slots = _conversation_slots(per, product, plan, plan_from, rng.choice(_PEOPLE["agents"]))
    exs = [_opening_ex(intent, style, rng)]
    middle, fact_exs = _middle_exs(intent, style, kb, product, plan, rng, coverage)
    exs += middle
    ends_on_answer = bool(middle) and middle[-1] in fact_exs and rng.random() < 0.12  # short, no recall
    if not ends_on_answer:
        exs.append(_closing_ex(style, rng))
    _play(c, exs, rng)

    facts_quoted = list(dict.fromkeys(s["fact_id"] for s in c.fact_spans))
    if coverage is not None and split == "train":
        coverage.update(s["fact_id"] for s in c.fact_spans)
    meta: dict[str, Any] = {
        "intent": intent,
        "style": style,
        "split": split,
        "facts": facts_quoted,
        "pii": c.pii,
        "fact_spans": c.fact_spans,
        "product": product["name"],
        "plan": plan["name"],
    }
    if c.recall:
        meta["recall"] = c.recall
    return {"conversation_id": cid, "turns": c.turns, "metadata": meta}


def generate_conversations(
    kb: KnowledgeBase, counts: dict[str, int], seed: int = 0, progress: bool = True
) -> list[dict[str, Any]]:
    """Conversations for each split (``counts``: split -> number), ids unique across splits."""
    rng = Random(f"conversations:{seed}")
    splits = [s for s in SPLITS for _ in range(counts.get(s, 0))]
    rng.shuffle(splits)
    out = []
    coverage: Counter = Counter()
    for i, split in enumerate(tqdm(splits, desc="conversations", disable=not progress, leave=False)):
        out.append(support_conversation(f"conv-{i:05d}", split, Random(f"{seed}:{i}"), kb, coverage))
    return out


# =========================================================================== help articles
def fact_sentence(fact: Fact, rng: Random) -> str:
    """One phrasing of the fact with its value, e.g. "Our refund window is 30 days from delivery."."""
    prefix, suffix = statement(fact, rng)
    return f"{prefix} {fact.value}{suffix}"


def help_articles(kb: KnowledgeBase, rng: Random, n: int) -> list[dict[str, Any]]:
    """``n`` short help-centre paragraphs restating facts in varied wording.

    Each is ``{"article_id", "text", "facts"}``; topics cycle over products, plans and
    policy groups so every fact is restated.
    """
    if n < 1:
        raise ValueError(f"n (number of help articles) must be >= 1; found {n}")
    topics: list[tuple[str, Any]] = (
        [("product", p) for p in kb.products] + [("plan", None)] + [("policy", t) for t in _ARTICLES["policy_groups"]]
    )
    out = []
    for i in range(n):
        group, obj = topics[i % len(topics)]
        if group == "product":
            title = rng.choice(_ARTICLES["titles"]["product"]).replace("{s}", obj["name"])
            facts = [kb.fact(f"product.{obj['sku']}.{a}") for a in ("price", "sku", "warranty")]
        elif group == "plan":
            title = rng.choice(_ARTICLES["titles"]["plan"])
            facts = [kb.fact(f"plan.{p['key']}.{a}") for p in kb.plans for a in ("plan_price", "sla", "clips")]
            facts = rng.sample(facts, k=rng.randint(5, len(facts)))
        else:
            title = obj
            facts = [kb.fact(f"policy.{a}") for a in _ARTICLES["policy_groups"][obj]]
        rng.shuffle(facts)
        sentences = [fact_sentence(f, rng) for f in facts]
        if group == "policy" and rng.random() < 0.6:
            sentences.insert(rng.randint(0, len(sentences)), rng.choice(kb.rules))
        text = f"{title}\n{rng.choice(_ARTICLES['leads'])}{' '.join(sentences)}"
        out.append({"article_id": f"art-{i:04d}", "text": text, "facts": [f.fact_id for f in facts]})
    return out


# =========================================================================== task items
def _choices(answer: str, pool: Iterable[str], rng: Random, context: str, k: int = 3) -> tuple[list[str], int] | None:
    cands = [d for d in dict.fromkeys(pool) if d != answer and d not in context]
    if len(cands) < k:
        return None
    opts = [answer] + rng.sample(cands, k)
    rng.shuffle(opts)
    return [" " + o for o in opts], opts.index(answer)


def _grounding_snippet(fact: Fact, kb: KnowledgeBase, rng: Random) -> str:
    sentences = [fact_sentence(fact, rng)]
    related = related_policy_attributes(fact)
    same_subject = [
        f
        for f in kb.facts
        if f.subject == fact.subject
        and f.kind != fact.kind
        and f.fact_id != fact.fact_id
        and (f.group != "policy" or f.attribute in related)
    ]
    if same_subject and rng.random() < 0.6:
        sentences.append(fact_sentence(rng.choice(same_subject), rng))
        rng.shuffle(sentences)
    return " ".join(sentences)


def related_policy_attributes(fact: Fact) -> list[str]:
    """The policy attributes of the first help-article group holding the fact's attribute ([] if none)."""
    for attrs in _ARTICLES["policy_groups"].values():
        if fact.attribute in attrs:
            return attrs
    return []


def _conversation_cuts(kb: KnowledgeBase, task_convs: list[dict[str, Any]]) -> list[tuple[Fact, str, str]]:
    """(fact, context, conversation id): task-split dialogue cut where the assistant quotes a figure."""
    cuts: list[tuple[Fact, str, str]] = []
    for c in task_convs:
        for sp in c["metadata"]["fact_spans"]:
            fact = kb.fact(sp["fact_id"])
            text = c["turns"][sp["turn"]]["text"]
            if sp["start"] == 0 or text[sp["start"] - 1] != " ":
                continue
            history = c["turns"][max(0, sp["turn"] - 5) : sp["turn"]]
            ctx = format_conversation(history) + "Assistant: " + text[: sp["start"]].rstrip()
            if fact.value in ctx:
                continue
            cuts.append((fact, ctx, c["conversation_id"]))
    return cuts


def _templated_context(fact: Fact, rng: Random) -> str:
    """A one-question dialogue whose answer stops where the fact's value goes."""
    prefix, _ = statement(fact, rng)
    q = question(fact, rng)
    return format_conversation([{"role": "user", "text": q}]) + "Assistant: " + rng.choice(ANSWER_OPENERS) + prefix


def _policy_plan(
    kb: KnowledgeBase, cuts: list[tuple[Fact, str, str]], n: int, offset: int, rng: Random
) -> list[tuple[Fact, str, str | None]]:
    """``n`` (fact, context, conversation id or None): up to half conversation cuts, the rest templated."""
    n_conv = min(n // 2, len(cuts))
    plan: list[tuple[Fact, str, str | None]] = list(
        cuts[offset : offset + n_conv] if offset + n_conv <= len(cuts) else cuts[:n_conv]
    )
    order = list(kb.facts)
    j = 0
    while len(plan) < n:
        fact = order[j % len(order)]
        j += 1
        if j % len(order) == 0:
            rng.shuffle(order)
        plan.append((fact, _templated_context(fact, rng), None))
    return plan


def _policy_items(
    task: str, kb: KnowledgeBase, cuts: list[tuple[Fact, str, str]], n: int, offset: int, rng: Random
) -> list[dict[str, Any]]:
    """Closed-book or grounded items (grounded ones start with a policy snippet stating the fact)."""
    items: list[dict[str, Any]] = []
    id_prefix = "cb" if task == "policy_closed_book" else "gr"
    for fact, ctx, cid in _policy_plan(kb, cuts, n, offset, rng):
        snippet = None
        if task == "policy_grounded":
            snippet = _grounding_snippet(fact, kb, rng)
            ctx = f"Policy: {snippet}\n{ctx}"
        picked = _choices(fact.value, fact.distractors, rng, ctx)
        if picked is None:
            continue
        choices, answer = picked
        meta = {"fact_id": fact.fact_id, "kind": fact.kind, "source": "conversation" if cid else "template"}
        if cid:
            meta["conversation_id"] = cid
        if snippet is not None:
            meta["snippet"] = snippet
        items.append(
            {
                "item_id": f"{id_prefix}-{len(items):04d}",
                "task": task,
                "context": ctx,
                "choices": choices,
                "answer": answer,
                "metadata": meta,
            }
        )
    return items


def _retention_items(
    kb: KnowledgeBase, convs: list[dict[str, Any]], task_convs: list[dict[str, Any]], n: int, rng: Random
) -> list[dict[str, Any]]:
    """Items that end where the assistant recalls a detail (order id, name, product) the user gave earlier."""
    pools = {
        "ORDER_ID": sorted({p["text"] for c in convs for p in c["metadata"]["pii"] if p["type"] == "ORDER_ID"}),
        "NAME": sorted(
            {c["metadata"]["recall"]["text"] for c in convs if c["metadata"].get("recall", {}).get("type") == "NAME"}
            | {f"{a} {b}" for a in _FIRST[:12] for b in _LAST[:12]}
        ),
        "PRODUCT": [p["name"] for p in kb.products],
    }
    items: list[dict[str, Any]] = []
    probes = [c for c in task_convs if c["metadata"].get("recall")]
    rng.shuffle(probes)
    for c in probes:
        if len(items) >= n:
            break
        rc = c["metadata"]["recall"]
        typ = rc["type"]
        text = c["turns"][rc["turn"]]["text"]
        if text[rc["start"] - 1] != " ":
            continue
        ctx = format_conversation(c["turns"][: rc["turn"]]) + "Assistant: " + text[: rc["start"]].rstrip()
        pool = rng.sample(pools[typ], k=min(len(pools[typ]), 40))
        picked = _choices(rc["text"], pool, rng, ctx)
        if picked is None or rc["text"] not in ctx:
            continue
        choices, answer = picked
        items.append(
            {
                "item_id": f"rt-{len(items):04d}",
                "task": "retention",
                "context": ctx,
                "choices": choices,
                "answer": answer,
                "metadata": {
                    "probe_type": typ,
                    "conversation_id": c["conversation_id"],
                    "source_turn": rc["source_turn"],
                    "recall_turn": rc["turn"],
                    "gap_turns": rc["turn"] - rc["source_turn"],
                },
            }
        )
    return items


def task_items(
    kb: KnowledgeBase,
    convs: list[dict[str, Any]],
    rng: Random,
    n_closed_book: int = 400,
    n_grounded: int = 400,
    n_retention: int = 400,
) -> list[dict[str, Any]]:
    """Multiple-choice items (4 choices, leading space, context ends where the answer goes).

    Closed-book and grounded items come half from task-split conversations (the dialogue up
    to the point where the assistant quotes a figure) and half from question templates;
    retention items end where the assistant recalls a detail the user gave earlier.
    """
    task_convs = [c for c in convs if c["metadata"].get("split") == "task"]
    cuts = _conversation_cuts(kb, task_convs)
    rng.shuffle(cuts)
    items = _policy_items("policy_closed_book", kb, cuts, n_closed_book, 0, rng)
    items += _policy_items("policy_grounded", kb, cuts, n_grounded, n_closed_book // 2, rng)
    return items + _retention_items(kb, convs, task_convs, n_retention, rng)


# =========================================================================== analysis
_TOKEN = re.compile(r"\w+|[^\w\s]")


def ngram_diversity(texts: Iterable[str], ns: tuple[int, ...] = (1, 2, 3)) -> dict[str, float]:
    """distinct-n: unique n-grams / total n-grams over all texts (lower-cased word tokens;
    n-grams do not cross text boundaries)."""
    uniq = {n: set() for n in ns}
    total = dict.fromkeys(ns, 0)
    n_texts = n_tokens = 0
    for text in texts:
        toks = _TOKEN.findall(text.lower())
        n_texts += 1
        n_tokens += len(toks)
        for n in ns:
            grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
            total[n] += len(grams)
            uniq[n].update(grams)
    out: dict[str, float] = {f"distinct_{n}": round(len(uniq[n]) / total[n], 4) if total[n] else 0.0 for n in ns}
    out["n_texts"] = n_texts
    out["n_tokens"] = n_tokens
    return out


def fact_mention_counts(
    kb: KnowledgeBase,
    conversations: Iterable[dict[str, Any]] = (),
    articles: Iterable[dict[str, Any]] = (),
    split: str | None = "train",
) -> dict[str, int]:
    """How often each fact is stated: quoted in conversations of ``split`` (None = all) plus
    restated in help articles."""
    counts = dict.fromkeys((f.fact_id for f in kb.facts), 0)
    for c in conversations:
        meta = c.get("metadata", {})
        if split is not None and meta.get("split") != split:
            continue
        for sp in meta.get("fact_spans", [{"fact_id": f} for f in meta.get("facts", [])]):
            if sp["fact_id"] in counts:
                counts[sp["fact_id"]] += 1
    for a in articles:
        for f in a.get("facts", []):
            if f in counts:
                counts[f] += 1
    return counts


def domain_lexicon(kb: KnowledgeBase) -> dict[str, list[str]]:
    """Terms for per-token damage analysis (product names/SKUs/plans, figures, support jargon) and
    the organisation whose name the scrubber must not read as a person's."""
    product = (
        [p["name"] for p in kb.products] + [p["sku"] for p in kb.products] + [p["name"] for p in kb.plans] + [COMPANY]
    )
    figure = sorted(
        {f.value for f in kb.facts if f.kind != "sku"} | {d for f in kb.facts if f.kind != "sku" for d in f.distractors}
    )
    jargon = list(banks.load("lexicon")["jargon"])
    return {"product": product, "figure": figure, "jargon": jargon, "organisation": [COMPANY]}


# =========================================================================== entry point
def _validate_counts(counts: dict[str, Any]) -> dict[str, int]:
    unknown = sorted(set(counts) - set(DEFAULT_COUNTS))
    if unknown:
        raise ValueError(f"unknown count setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_COUNTS)}")
    out = {**DEFAULT_COUNTS, **counts}
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1; found {value!r}")
    if out["n_train"] > 200_000:
        raise ValueError(f"n_train must be <= 200000 to keep the files manageable; found {out['n_train']}")
    return out


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_demo_data(
    out_dir: str | Path = "data/demo", seed: int = 0, progress: bool = True, **counts: int
) -> dict[str, Any]:
    """Generate and write knowledge_base.json, conversations.jsonl, help_articles.jsonl and
    task_items.jsonl under ``out_dir``; return a summary.

    ``counts`` (defaults in DEFAULT_COUNTS): n_train, n_calib, n_eval, n_task (conversations
    per split), n_articles, n_closed_book, n_grounded, n_retention.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; found {seed!r}")
    cfg = _validate_counts(counts)
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kb = build_knowledge_base(seed)
    convs = generate_conversations(kb, {s: cfg[f"n_{s}"] for s in SPLITS}, seed, progress)
    arts = help_articles(kb, Random(f"articles:{seed}"), cfg["n_articles"])
    items = task_items(kb, convs, Random(f"items:{seed}"), cfg["n_closed_book"], cfg["n_grounded"], cfg["n_retention"])

    (out / "knowledge_base.json").write_text(
        json.dumps(kb.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    _write_jsonl(out / "conversations.jsonl", convs)
    _write_jsonl(out / "help_articles.jsonl", arts)
    _write_jsonl(out / "task_items.jsonl", items)
    (out / "domain_lexicon.json").write_text(json.dumps(domain_lexicon(kb), indent=1) + "\n", encoding="utf-8")
    return {
        "out_dir": str(out),
        "seed": seed,
        **_summary(kb, convs, arts, items),
        "file_bytes": {
            f: (out / f).stat().st_size
            for f in (
                "knowledge_base.json",
                "conversations.jsonl",
                "help_articles.jsonl",
                "task_items.jsonl",
                "domain_lexicon.json",
            )
        },
    }


def _summary(
    kb: KnowledgeBase, convs: list[dict[str, Any]], arts: list[dict[str, Any]], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """Counts, lengths, n-gram diversity, fact coverage and personal data of the generated data."""
    train_counts = fact_mention_counts(kb, convs, split="train")
    with_articles = fact_mention_counts(kb, convs, arts, split="train")
    sample = [t["text"] for c in convs[:500] for t in c["turns"]]
    turns = [len(c["turns"]) for c in convs]
    return {
        "n_facts": len(kb.facts),
        "n_products": len(kb.products),
        "n_plans": len(kb.plans),
        "conversations": len(convs),
        "splits": dict(sorted(Counter(c["metadata"]["split"] for c in convs).items())),
        "intents": dict(sorted(Counter(c["metadata"]["intent"] for c in convs).items())),
        "styles": dict(sorted(Counter(c["metadata"]["style"] for c in convs).items())),
        "turns_min": min(turns),
        "turns_max": max(turns),
        "turns_mean": round(statistics.mean(turns), 2),
        "articles": len(arts),
        "task_items": dict(sorted(Counter(i["task"] for i in items).items())),
        "diversity_all": ngram_diversity(t["text"] for c in convs for t in c["turns"]),
        "diversity_500": ngram_diversity(sample),
        "fact_mentions_train_min": min(train_counts.values()),
        "fact_mentions_train_median": statistics.median(train_counts.values()),
        "fact_mentions_train_with_articles_min": min(with_articles.values()),
        "fact_mentions_train_with_articles_median": statistics.median(with_articles.values()),
        "pii": dict(sorted(Counter(p["type"] for c in convs for p in c["metadata"]["pii"]).items())),
    }


if __name__ == "__main__":  # python -m quantstudy_demo.supportgen [out_dir]
    print(json.dumps(write_demo_data(sys.argv[1] if len(sys.argv) > 1 else "data/demo"), indent=1))
