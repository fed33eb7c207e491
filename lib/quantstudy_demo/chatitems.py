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

Every setting lives in a YAML file (``params/demo-data/task-items-chat.yaml``), validated
here (unknown keys are rejected); the same settings give byte-identical items.
``python -m quantstudy_demo.chatitems [settings.yaml [out.jsonl]]`` regenerates the file.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from random import Random
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantstudy_demo import supportgen as sg
from quantstudy.data import validate_task_item
from quantstudy.paths import resolve

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
    confusable_distractor: float = Field(0.5, ge=0.0, le=1.0)  # share of items whose choices include same-kind figures of the excerpt

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


def _choose(answer: str, confusables: list[str], pool: Iterable[str], rng: Random, context: str,
            k: int) -> tuple[list[str], int] | None:
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
        conv = sg._conversation(cid, "task", Random(f"chat-conv:{seed}:{i}"), kb)
        i += 1
        for sp in conv["metadata"]["fact_spans"]:
            fact = kb.fact(sp["fact_id"])
            text = conv["turns"][sp["turn"]]["text"]
            if sp["start"] == 0 or text[sp["start"] - 1] != " ":
                continue
            turns = conv["turns"][max(0, sp["turn"] - history):sp["turn"]]
            if turns and turns[0]["role"] != "user":
                turns = turns[1:]
            prefix = text[:sp["start"]].rstrip()
            if not turns or fact.value in _text_of(turns, prefix):
                continue
            out.append((fact, [dict(t) for t in turns], prefix, cid))
    return out


def _policy_excerpt(fact: sg.Fact, kb: sg.KnowledgeBase, rng: Random, n_facts: int,
                    same_kind_first: bool) -> tuple[str, list[sg.Fact]]:
    """A policy excerpt of ``n_facts`` sentences: the asked fact plus others (same kind first,
    then same subject or policy group), shuffled."""
    others = [f for f in kb.facts if f.fact_id != fact.fact_id]
    same_kind = [f for f in others if f.kind == fact.kind and f.value != fact.value]
    related = [f for f in others if f not in same_kind and
               ((fact.subject and f.subject == fact.subject) or
                (fact.group == "policy" and f.attribute in sg._related(fact)) or
                (fact.group == f.group and fact.group != "policy"))]
    rng.shuffle(same_kind)
    rng.shuffle(related)
    ordered = (same_kind + related) if same_kind_first else (related + same_kind)
    rest = [f for f in others if f not in ordered]
    rng.shuffle(rest)
    picked = [fact] + (ordered + rest)[:n_facts - 1]
    rng.shuffle(picked)
    return " ".join(sg._fact_sentence(f, rng) for f in picked), [f for f in picked if f is not fact]


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
        plan: list[tuple] = list(cands[offset:offset + n_conv[task]])
        offset += n_conv[task]
        order = list(kb.facts)
        rng.shuffle(order)
        j = 0
        while len(plan) < n + 20:  # a few spare plans in case one cannot get enough distractors
            fact = order[j % len(order)]
            j += 1
            if j % len(order) == 0:
                rng.shuffle(order)
            prefix, _ = sg.statement(fact, rng)
            q = sg.question(fact, rng)
            plan.append((fact, [{"role": "user", "text": q}], rng.choice(sg.ANSWER_OPENERS) + prefix, None))
        made = 0
        for fact, turns, prefix, cid in plan:
            if made >= n:
                break
            meta: dict[str, Any] = {"fact_id": fact.fact_id, "kind": fact.kind,
                                    "source": "conversation" if cid else "template"}
            if cid:
                meta["conversation_id"] = cid
            confusables: list[str] = []
            system = s.system_prompt
            if task == "policy_grounded":
                k = rng.randint(*s.grounded.policy_facts)
                excerpt, other = _policy_excerpt(fact, kb, rng, k, s.grounded.same_kind_first)
                system = f"{s.system_prompt} Relevant policy: {excerpt}"
                if rng.random() < s.grounded.confusable_distractor:
                    confusables = [f.value for f in other if f.kind == fact.kind and f.value != fact.value]
                meta.update({"snippet": excerpt, "policy_facts": [fact.fact_id] + [f.fact_id for f in other],
                             "confusables_in_context": list(dict.fromkeys(confusables))[:s.n_choices - 1]})
            all_turns = [{"role": "system", "text": system}] + turns
            picked = _choose(fact.value, confusables, fact.distractors, rng, _text_of(all_turns, prefix), s.n_choices)
            if picked is None:
                continue
            choices, answer = picked
            items.append({"item_id": f"chat-{tag}-{made:04d}", "task": task, "turns": all_turns,
                          "assistant_prefix": prefix, "choices": choices, "answer": answer, "metadata": meta})
            made += 1
    return items


# =========================================================================== retention
# Phrase banks for the retention conversations ([a|b] alternations, {slot} values).
_ISSUE = ["arrived with a cracked case", "won't power on", "is the wrong model", "keeps rebooting",
          "has a dead port", "stopped working after two days", "arrived damaged"]
_FINE = ["arrived fine", "works great", "is perfect, no problems there", "is working fine", "is all good"]
_DEVICE_ISSUE = ["keeps dropping the connection", "keeps rebooting", "won't turn on anymore",
                 "has a blinking red light", "won't show up in the app", "overheats"]
_DEVICE_FINE = ["works fine", "is fine though", "has been great", "has no problems", "is working perfectly"]
_ECHO_ACK = ["[Got it|Thanks|Noted|Okay]", "[Thanks for that|Perfect|Great]"]
_ASK_MORE = ["[Anything else I should know?|Go on.|What else?|And the other one?|Okay, continue.]"]
_FINAL_USER = ["[Okay, thanks.|Great, so what happens now?|Alright, what's next?|Perfect. Can you confirm everything?|"
               "ok so where are we|Thanks. Can you sum up?|So is everything sorted now?|Okay, what happens next?]"]
_SMALL_TALK = [  # (user, assistant)
    ("[Sorry,|Oh,|Hold on,] my dog just knocked over my coffee.",
     "[No worries,|Oh no,] take your time. [I hope the coffee survived!|]"),
    ("[Haha|Lol|Ah], sorry, [I got distracted|the doorbell rang|my cat walked across the keyboard]. [Where were we?|Okay, I'm back.]",
     "[No problem at all.|All good!|Happens to the best of us.] [Let's get back to it.|]"),
    ("By the way, is your chat open on weekends?", "[Yes,|It is!] [our chat team is here seven days a week.|We're here every day.]"),
    ("By the way, [I saw your ad on a podcast.|my neighbour has the same router and loves it.|I love the little light on the router.]",
     "[Ha, glad to hear it!|Thanks for the kind words.] [I'll pass that on to the team.|]"),
    ("[Sorry,|Oh,] [is it just me or has the weather been wild lately?|I'm also moving next month, so things are hectic.]",
     "[Ha,|Oh,] [that sounds hectic!|I completely understand.] [Let's get back to your request.|Whenever you're ready, we can continue.]"),
    ("[Sorry,|Random, but] my kids keep asking why the internet is slow during their games.",
     "[Ha, I hear that a lot!|Gamers are tough critics!] [We can look at that another time.|]"),
]
_TROUBLE = [  # (user, assistant): a side question and its fix
    ("[While I have you,|Also,|Oh, and|Unrelated, but] my Wi-Fi [drops every evening|is slow upstairs|keeps "
     "disconnecting on my laptop|is patchy in the garden]. [Any tips?|What should I try?|Is that normal?]",
     "[Try|Please try] [restarting the router|moving the router away from the microwave|updating the firmware "
     "in the Nimbus app|switching that device to the 5 GHz band|adding a mesh node nearby]. [That usually "
     "helps.|Let me know if it persists.|If it doesn't help, we can escalate.]"),
    ("[By the way,|Also,] the app [keeps logging me out|is really slow to load|crashed twice today]. "
     "[Is that a known issue?|Any idea why?|What can I do?]",
     "[Sorry about that.|That's annoying, I know.] [Please update the app and sign in again.|Clearing the "
     "app cache usually fixes it.|Reinstalling the app should sort it out.] [Tell me if it happens again.|"
     "It's a known glitch we're fixing.|]"),
]


def _order_id(rng: Random) -> str:
    return f"ORD-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def _address(rng: Random) -> str:
    city, state = rng.choice(sg._CITIES)
    return (f"{rng.randint(3, 9899)} {rng.choice(sg._STREETS)} {rng.choice(sg._STREET_SUFFIX)}, "
            f"{city}, {state} {rng.randint(10000, 99950)}")


def _email(rng: Random, first: str | None = None, last: str | None = None) -> str:
    first = first or rng.choice(sg._FIRST)
    last = last or rng.choice(sg._LAST)
    sep = rng.choice([".", "_", ""])
    local = rng.choice([f"{first}{sep}{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}",
                        f"{last}{sep}{first[0]}{rng.randint(10, 999)}", f"{first}.{rng.choice(['home', 'work', 'mail'])}"])
    return f"{local.lower().replace(chr(39), '')}@{rng.choice(sg._DOMAINS)}"


def _card(rng: Random) -> str:
    return f"{rng.randint(0, 9999):04d}"


def _name(rng: Random, last: str | None = None) -> str:
    return f"{rng.choice(sg._FIRST)} {last or rng.choice(sg._LAST)}"


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
        self.opening: tuple[str, dict] = ("", {})      # user's first request (no entity)
        self.opening_bot: str = ""
        self.mentions: list[tuple[str, str, dict]] = []  # (user template, bot template, slots)
        self.values: list[str] = []                      # entities, in order of first mention
        self.answer: int = 0
        self.role: str = ""
        self.prefix: str = ""
        self.pool: list[str] = []                        # out-of-context distractor candidates
        self.corrected: bool = False
        self.extra: dict[str, Any] = {}


def _echo(rng: Random, p: float, text: str) -> str:
    return text if rng.random() < p else sg.expand(rng.choice(_ECHO_ACK), rng) + "."


def _scene_order(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    prods = rng.sample(kb.products, n)
    orders = _distinct(_order_id, n + 12, rng)
    sc.values, sc.pool = orders[:n], orders[n:]
    t = rng.randrange(n)
    word = {2: "two", 3: "three"}[n]
    sc.opening = (f"[I have|I placed] {word} orders [with you|recently] and [one of them has a problem|I need help with one "
                  f"of them]. [Let me give you both|Here are the details|I'll list them].", {})
    if n == 3:
        sc.opening = (sc.opening[0].replace("both", "all three"), {})
    sc.opening_bot = "[Sure, go ahead.|Of course, send them over.|Okay, I'm listening.]"
    statuses = []
    for i in range(n):
        status = rng.choice(_ISSUE) if i == t else rng.choice(_FINE)
        statuses.append(status)
        user = rng.choice(["[Order|The order] {o} [is|was] the {p}[, and it|. It] {s}.",
                           "{o} is [for|for my] {p}[. It|, which] {s}.",
                           "[The|My] {p} [is|was] [order|on order] {o}[ and it|. It] {s}."])
        bot = _echo(rng, echo, "[Noted|Got it|Thanks]: order {o} for the {p}.")
        if i < n - 1:
            bot += " " + sg.expand(rng.choice(_ASK_MORE), rng)
        sc.mentions.append((user, bot, {"o": orders[i], "p": prods[i]["name"], "s": status}))
    sc.answer, sc.role = t, "order_with_issue"
    sc.prefix = sg.expand(rng.choice([
        "[Okay|Alright|Thanks for waiting][.|!] I've [started|set up] a return for the {p} [on|under] order",
        "[To recap|So], the {p} [is|was] [on|shipped under] order",
        "[Sure|Of course]. The return label for the {p} is linked to order"] if not cue else [
        "[I'm sorry the|Sorry that the] {p} {s}. [I've started a return for it under|The return for it is logged under] order"]),
        rng).replace("{p}", prods[t]["name"]).replace("{s}", statuses[t])
    sc.extra = {"products": [p["name"] for p in prods], "answer_product": prods[t]["name"]}
    return sc


def _scene_product(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    prods = [p["name"] for p in rng.sample(kb.products, n)]
    t = rng.randrange(n)
    sc.values = prods
    sc.pool = [p["name"] for p in kb.products if p["name"] not in prods]
    word = {2: "two", 3: "three"}[n]
    sc.opening = (f"[I have|I've got|We have] {word} Nimbus devices [at home|in the house] and one of them [is acting "
                  f"up|has a problem|is giving me trouble].", {})
    sc.opening_bot = "[Sorry to hear that.|Let's sort that out.|I can help with that.] [Which devices do you have?|Tell me about them.|What's going on?]"
    statuses = []
    for i in range(n):
        status = rng.choice(_DEVICE_ISSUE) if i == t else rng.choice(_DEVICE_FINE)
        statuses.append(status)
        user = rng.choice(["[The|My] {p} {s}.", "[There's|There is] [the|a] {p}[, it|, which] {s}.",
                           "[Then|Also] the {p}: it {s}."])
        bot = _echo(rng, echo, "[Noted|Okay|Thanks], the {p}.")
        if i < n - 1:
            bot += " " + sg.expand(rng.choice(["[And the other one?|What else do you have?|Go on.]"]), rng)
        sc.mentions.append((user, bot, {"p": prods[i], "s": status}))
    sc.answer, sc.role = t, "faulty_device"
    sc.prefix = sg.expand(rng.choice([
        "[Okay|Alright|Thanks]. I've [opened|started] a warranty claim for your",
        "[To recap|So], we'll replace your",
        "[Good news|Okay]: a technician will look at your"] if not cue else [
        "[I'm sorry|Sorry] [it|that it] {s}. I've [opened|started] a warranty claim for your"]), rng).replace("{s}", statuses[t])
    return sc


def _scene_address(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    addrs = _distinct(_address, n + 12, rng)
    sc.pool = addrs[n:]
    product = rng.choice(kb.products)["name"]
    sc.opening = ("[My|The] {prod} [arrived damaged|is faulty|died] and [you're sending|I was promised] a replacement.",
                  {"prod": product})
    sc.opening_bot = "[I'm sorry about that.|Sorry for the trouble.] [Let's get the replacement out.|I'll arrange the replacement.] [Where should it go?|What address should we use?]"
    # roles: ship (possibly corrected) and bill; entities in mention order
    if n == 2:
        layout = rng.choice(["correction", "ship_bill", "bill_ship"])
    else:
        layout = rng.choice(["ship_bill_fix", "bill_ship_fix", "ship_fix_bill"])
    ship_first = ["[Ship it to|Please send it to|Send the replacement to] {a}.", "[It should go to|Use] {a}[, please|]."]
    bill = ["[The invoice|Billing] [should stay on|goes to] my home address, {a}.",
            "[Keep|Please keep] my home address, {a}, as the billing address[ for invoices|]."]
    fix = ["[Oh wait|Sorry|Actually], [that's my old address|I gave you the wrong address]. [I moved last month|We just "
           "moved]; [please use|the right one is] {a}.", "[Wait|Hold on], [scratch that|correction]: ship it to {a} "
           "instead[, that's my new place|]."]
    steps = {"correction": ["ship", "fix"], "ship_bill": ["ship", "bill"], "bill_ship": ["bill", "ship"],
             "ship_bill_fix": ["ship", "bill", "fix"], "bill_ship_fix": ["bill", "ship", "fix"],
             "ship_fix_bill": ["ship", "fix", "bill"]}[layout]
    bank = {"ship": ship_first, "bill": bill, "fix": fix}
    bot_bank = {"ship": "[Thanks|Got it], {a} [for the shipment|as the delivery address].",
                "bill": "[Noted|Okay], invoices go to {a}.", "fix": "[Updated|No problem]: {a} [it is|is the new delivery address]."}
    roles = {}
    for i, step in enumerate(steps):
        sc.mentions.append((rng.choice(bank[step]), _echo(rng, echo, bot_bank[step]), {"a": addrs[i]}))
        roles[step] = i
    ship = roles.get("fix", roles.get("ship"))
    targets = ["ship"] + (["bill"] if "bill" in roles else [])
    target = rng.choice(targets)
    sc.values = addrs[:n]
    if target == "ship":
        sc.answer, sc.role = ship, "shipping_address"
        sc.corrected = "fix" in roles
        bank = ["[Great|Perfect|All set]. Your replacement {p} will ship to",
                "[Okay|Done]. The new {p} [goes|is going] out to",
                "[To recap|So], we'll deliver the replacement to"]
        if cue:
            bank = (["[Got it|Noted], [you've moved|you just moved]. The replacement will ship to your new address,"]
                    if sc.corrected else ["[Okay|Done]. As you asked, [we'll ship it to|we'll send the replacement to]"])
        sc.prefix = sg.expand(rng.choice(bank), rng).replace("{p}", product)
    else:
        sc.answer, sc.role = roles["bill"], "billing_address"
        sc.prefix = sg.expand(rng.choice(["[Great|Perfect|All set]. Invoices will [still |]go to",
                                          "[To recap|So], the billing address stays",
                                          "[Okay|Done]. We'll keep billing you at"] if not cue else [
                                          "[Okay|Done]. Invoices stay on your home address,"]), rng)
    sc.extra = {"layout": layout}
    return sc


def _scene_card(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    cards = _distinct(_card, n + 12, rng)
    sc.pool = cards[n:]
    product = rng.choice(kb.products)["name"]
    sc.opening = ("[I'm returning|I sent back] the {prod} and need [a refund|my money back]. [Also a billing change.|"
                  "And I want to update my card.]", {"prod": product})
    sc.opening_bot = "[I can help with both.|Sure, let's do both.|No problem.] [Which card did you pay with?|Tell me about the cards.]"
    charged = ["[I paid with|I paid for it with] [my|the] card ending in {c}.",
               "I paid [with|using] the card ending in {c}[, which has since expired|]."]
    new = ["[From now on|Going forward], please bill my plan to my new card ending in {c}.",
           "[Please switch|Switch] my subscription to my new card ending in {c}."]
    declined = ["[I also tried|I first tried] [my debit card|another card] ending in {c} but it was declined.",
                "[Ignore|Don't use] the card ending in {c}; [it's my partner's|it's cancelled]."]
    bot_bank = {"charged": "[Thanks|Got it]: paid with the card ending in {c}.",
                "new": "[Noted|Okay], future bills go to the card ending in {c}.",
                "declined": "[Noted|Okay], not the card ending in {c}."}
    steps = rng.sample(["charged", "new"], 2)
    if n == 3:
        steps.insert(rng.randrange(3), "declined")
    bank = {"charged": charged, "new": new, "declined": declined}
    roles = {}
    for i, step in enumerate(steps):
        sc.mentions.append((rng.choice(bank[step]), _echo(rng, echo, bot_bank[step]), {"c": cards[i]}))
        roles[step] = i
    sc.values = cards[:n]
    if rng.random() < 0.5:
        sc.answer, sc.role = roles["charged"], "refund_card"
        sc.prefix = sg.expand(rng.choice(["[Done|All set]. The refund goes back to the original payment method, the card ending in",
                                          "[Okay|Great]. You'll see the refund on the card ending in",
                                          "[To recap|So], the refund is issued to the card ending in"] if not cue else [
                                          "[Done|All set]. The refund goes back to the card you paid with, ending in"]), rng)
    else:
        sc.answer, sc.role = roles["new"], "billing_card"
        sc.prefix = sg.expand(rng.choice(["[Done|All set]. From the next billing cycle, your plan is charged to the card ending in",
                                          "[Okay|Great]. Your subscription now bills to the card ending in",
                                          "[To recap|So], future invoices go to the card ending in"] if not cue else [
                                          "[Done|All set]. Your plan now bills to your new card ending in"]), rng)
    sc.extra = {"layout": "_".join(steps)}
    return sc


def _scene_email(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    first, last = rng.choice(sg._FIRST), rng.choice(sg._LAST)
    emails = _distinct(lambda r: _email(r, first if r.random() < 0.7 else None, last if r.random() < 0.7 else None),
                       n + 12, rng)
    sc.pool = emails[n:]
    sc.opening = ("[I need to|I'd like to|Can you] [update|change] the email on my account[, please|]?", {})
    sc.opening_bot = "[Sure, I can update that.|Of course.|No problem.] [What's the current email, and the new one?|Which addresses?]"
    old = ["[The old one is|My old email is|The old address is] {e}[ but I don't use it anymore|].",
           "[It's under|The account is under] my old email, {e}, [at the moment|for now]."]
    new = ["[The new one is|My new email is|Please change it to my new one,] {e}.",
           "[Use|Switch it to] my new email, {e}, from now on."]
    work = ["[Oh, and|Also,] [invoices|receipts] should go to my work email, {e}.",
            "[Keep|Please send] [invoices|receipts] to my work email, {e}[, please|]."]
    bot_bank = {"old": "[Found it|Got it]: {e}.", "new": "[Noted|Okay], {e} [it is|will be the new email].",
                "work": "[Sure|Noted], invoices to {e}."}
    steps = ["old", "new"] if rng.random() < 0.6 else ["new", "old"]
    if n == 3:
        steps.insert(rng.randrange(3), "work")
    bank = {"old": old, "new": new, "work": work}
    roles = {}
    for i, step in enumerate(steps):
        sc.mentions.append((rng.choice(bank[step]), _echo(rng, echo, bot_bank[step]), {"e": emails[i]}))
        roles[step] = i
    sc.values = emails[:n]
    target = rng.choice(["new", "old"] + (["work"] if n == 3 else []))
    sc.answer = roles[target]
    sc.role = {"new": "new_email", "old": "old_email", "work": "invoice_email"}[target]
    sc.corrected = target == "new"
    cued = {"new": ["[Done|All set]. I've sent a confirmation code to your new email,"],
            "old": ["[Done|All set]. For security, a notice about this change went to your old email,"],
            "work": ["[Done|All set]. Invoices will keep going to your work email,"]}
    sc.prefix = sg.expand(rng.choice(cued[target] if cue else {
        "new": ["[Done|All set]. I've sent a confirmation code to", "[Okay|Great]. Your login email is now",
                "[To recap|So], from now on we'll email you at"],
        "old": ["[Done|All set]. For security, a notice about this change went to your previous address,",
                "[Okay|Great]. We've retired the address", "[To recap|So], we removed"],
        "work": ["[Done|All set]. Invoices will keep going to", "[Okay|Great]. Receipts will be sent to",
                 "[To recap|So], billing emails go to"]}[target]), rng)
    sc.extra = {"layout": "_".join(steps)}
    return sc


def _scene_name(rng: Random, n: int, kb: sg.KnowledgeBase, echo: float, cue: bool) -> _Scene:
    sc = _Scene()
    family = rng.random() < 0.6
    last = rng.choice(sg._LAST)
    names = _distinct(lambda r: _name(r, last if family else None), n, rng)
    sc.pool = _distinct(lambda r: _name(r, last if family and r.random() < 0.5 else None), 12, rng, avoid=names)
    rel = rng.choice(["parent", "partner", "grandparent", "spouse", "sibling"])
    sc.opening = (f"[I'm calling|I'm writing] about my {rel}'s account[, I help with the tech stuff|; they asked me to "
                  f"handle it].", {})
    sc.opening_bot = "[Happy to help.|Sure.|Thanks for helping them out.] [Who is the account holder, and who am I speaking with?|Can I get the names?]"
    holder = [f"The account holder is my {rel}, {{n}}.", f"[It's|The account is] in my {rel}'s name: {{n}}, the account holder."]
    caller = ["[And I'm|I'm|My name is] {n}.", "[This is|You're talking to] {n}."]
    tech = ["[My cousin|Another relative,|My nephew] {n}[,|] set it all up originally[, if that matters|]."]
    bot_bank = {"holder": "[Thanks|Noted]: the account holder is {n}.", "caller": "[Nice to meet you|Hi], {n}.",
                "tech": "[Okay|Noted], {n} did the setup."}
    steps = rng.sample(["holder", "caller"], 2)
    if n == 3:
        steps.insert(rng.randrange(3), "tech")
    bank = {"holder": holder, "caller": caller, "tech": tech}
    roles = {}
    for i, step in enumerate(steps):
        sc.mentions.append((rng.choice(bank[step]), _echo(rng, echo, bot_bank[step]), {"n": names[i]}))
        roles[step] = i
    sc.values = names
    target = rng.choice(["holder", "caller"])
    sc.answer, sc.role = roles[target], {"holder": "account_holder", "caller": "caller"}[target]
    cued = {"holder": [f"[Done|All set]. I've noted that the account holder, your {rel}, is"],
            "caller": [f"[Thank you|Thanks] for writing in for your {rel},"]}
    sc.prefix = sg.expand(rng.choice(cued[target] if cue else {
        "holder": ["[Done|All set]. I've noted that the account holder is", "[To recap|So], the account stays in the name of",
                   "[Okay|Great]. The confirmation letter is addressed to"],
        "caller": ["[Done|All set]. I've added you as an authorized helper,", "[Thanks for your patience|Thank you so much],",
                   "[Okay|Great]. I've noted that this request was made by"]}[target]), rng)
    sc.extra = {"relation": rel, "shared_last_name": family}
    return sc


_SCENES = {"order_id": _scene_order, "product": _scene_product, "address": _scene_address, "card": _scene_card,
           "email": _scene_email, "name": _scene_name}
_MENTION_ORDINAL = ("first", "second", "third")


def _digression(kind: str, rng: Random, kb: sg.KnowledgeBase) -> tuple[str, str, dict]:
    if kind == "small_talk":
        user, bot = rng.choice(_SMALL_TALK)
        return user, bot, {}
    if kind == "troubleshooting":
        user, bot = rng.choice(_TROUBLE)
        return user, bot, {}
    facts = [f for f in kb.facts if f.group in ("policy", "plan")]
    fact = rng.choice(facts)
    lead = sg.expand(rng.choice(["[Also,|One more thing:|Oh, and|Another question:] ", "", "By the way, "]), rng)
    q = sg.question(fact, rng)
    if lead and not lead.endswith(": ") and q[1:2].islower() and q[:2] not in ("I ", "I'"):
        q = q[0].lower() + q[1:]
    return sg._esc(lead + q), sg._esc(rng.choice(sg.ANSWER_OPENERS) + sg._fact_sentence(fact, rng)), {"fact": fact.fact_id}


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

    c = sg._Conv(rng, style)
    c.slots = {"agent": rng.choice(sg._AGENTS)}
    opener = rng.choice(sg.OPENERS[style])
    c.say("user", opener + sc.opening[0], **sc.opening[1])
    greet = rng.choice(sg.GREET_BOT) + " " if rng.random() < 0.5 else ""
    c.say("assistant", greet + sc.opening_bot)
    # digressions between mentions go after a random mention other than the last
    between_at = sorted(rng.randrange(len(sc.mentions) - 1) for _ in range(n_between))
    mention_turn: list[int] = []
    digs: list[dict[str, Any]] = []

    def digress() -> None:
        kind = _weighted(r.digression_mix, rng)
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
    last_mention_turns = {v: max(t for t, turn in enumerate(c.turns) if v in turn["text"]) for v in sc.values}
    c.say("user", rng.choice(_FINAL_USER))
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
    ans_last = last_mention_turns[answer_value]
    latest = max(sc.values, key=lambda v: (last_mention_turns[v], sc.values.index(v)))
    meta = {"probe_type": probe, "role": sc.role, "style": style, "n_entities": n_ent, "restated_cue": cue,
            "answer_mention": _MENTION_ORDINAL[sc.answer], "answer_is_latest_mention": latest == answer_value,
            "answer_is_correction": sc.corrected, "n_digressions": n_after, "n_digressions_between": n_between,
            "digressions": [d["type"] for d in digs], "gap_turns": probe_turn - ans_last,
            "source_turn": mention_turn[sc.answer], "recall_turn": probe_turn, "n_turns": len(c.turns) + 1,
            "answer_echoed": any(answer_value in t["text"] for t in c.turns if t["role"] == "assistant"),
            "confusables_in_context": [v for v in confusables if v in context], **sc.extra}
    return {"item_id": f"chat-rt-{i:04d}", "task": "retention", "turns": turns, "assistant_prefix": prefix,
            "choices": choices, "answer": answer, "metadata": meta}


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
    return {"out": str(dest), "settings": str(settings_path), "seed": settings.seed, **summarize(items),
            "bytes": dest.stat().st_size}


if __name__ == "__main__":  # python -m quantstudy_demo.chatitems [settings.yaml [out.jsonl]]
    import sys

    args = sys.argv[1:]
    try:
        summary = write_chat_items(*(args[:2] or [DEFAULT_SETTINGS]))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=1))
