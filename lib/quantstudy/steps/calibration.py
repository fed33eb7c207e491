"""Calibration sets: scrub personal data, format conversations, draw equal-token sets per
source and seed, split over-long samples (AutoAWQ would silently drop them), save as Arrow.

Sets are compared at equal size: each holds ``n_samples`` blocks of ``max_seq_len`` tokens,
which is exactly what AutoAWQ feeds its search (it concatenates the samples and re-cuts them
into blocks of ``max_calib_seq_len``).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from quantstudy import contracts
from quantstudy.data import encode

PLACEHOLDER = "[{}]"  # typed placeholder, e.g. [EMAIL]


class CalibrationError(ValueError):
    """A calibration set that cannot be built as asked; the message names the set."""


# --------------------------------------------------------------------------- scrubbing
# Project recognizers for what generic PII libraries do not know: this company's
# identifiers, card fragments in prose, street addresses, and names introduced in dialogue.
# They were first written for the demo generator's formats and then widened against an
# independent hand-written test set (tests/fixtures/pii, scored by quantstudy.steps.pii_eval):
# international and national phone numbers, other order/account shapes, addresses of
# several countries, non-English and lowercase names.


def _letters(upper: bool) -> str:
    """Upper- or lowercase letters of the Latin, Greek, Cyrillic and Vietnamese blocks, for a
    character class (Python's re has no \\p{Lu})."""
    blocks = ((0x41, 0x5B), (0x61, 0x7B), (0xC0, 0x250), (0x370, 0x530), (0x1E00, 0x1F00))
    return "".join(chr(c) for a, b in blocks for c in range(a, b)
                   if (chr(c).isupper() if upper else chr(c).islower()) and chr(c).isalpha())


_UP, _LO = _letters(True), _letters(False)
_STREET = r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Court|Ct|Boulevard|Blvd|Way|Place|Pl|Terrace|Tce|Circle|Parkway|Pkwy|Square|Sq|Crescent|Cres|Close|Grove|Gardens|Mews|Row|Highway|Hwy|Quay|Parade|Esplanade|Prospekt|Park|Hill)\.?"
# A capitalised name word: O'Brien, D'Arcy, McAllister, Zoë, Saldaña-Pérez, Hyun-woo, Haruto-san.
_CAP = rf"(?:[{_UP}]['’][{_UP}][{_LO}]+|(?:Mc|Mac)?[{_UP}][{_LO}]+(?:-[{_UP}]?[{_LO}]+)*)"
_PARTICLE = r"(?:van|von|der|den|de|del|della|di|da|das|dos|du|la|le|ten|ter|bin|binti|al|el|ibn|zu)"
# One to four name words on one line, particles between them: "Pieter van der Berg".
_NAME = rf"{_CAP}(?:[ ](?:{_PARTICLE}[ ]){{0,2}}{_CAP}){{0,3}}"
# After a cue that can only introduce a name, any casing: "my name is jürgen weiß", "MARIA JOSÉ".
_LOWSTOP = (r"(?:and|or|but|the|a|an|i|im|is|was|not|still|wrong|correct|incorrect|misspelled|spelled|spelt|missing|"
            r"different|changed|showing|shown|displayed|blank|empty|here|there|please|thanks|from|at|in|on|with|for|"
            r"to|of|by|if|so|just|who|that|this|my|your|also|too|because|when|then|as|it|its|now|again|only)")
_ANYWORD = rf"(?:{_CAP}|[{_UP}]{{2,}}(?:-[{_UP}]{{2,}})?|(?!{_LOWSTOP}\b)[{_LO}][{_LO}'’-]+)"
_ANYNAME = rf"{_ANYWORD}(?:[ ](?:{_PARTICLE}[ ]){{0,2}}{_ANYWORD}){{0,3}}"
_EXT = r"(?:[ \t]*,?[ \t]*(?i:ext\.?|extension|x)[ \t]*\d{1,5}\b)?"
# Postcodes: UK, Canada, Netherlands, Sweden, Poland/Portugal/Japan/ZIP+4, and 4-6 digit ones.
_PC = (r"(?:[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|\d{4}[ ]?[A-Z]{2}\b|\d{3}[ ]\d{2}\b|"
       r"\d{2,5}-\d{3,4}\b|\d{4,6}\b)")
_CITYW = rf"[{_UP}][{_UP}{_LO}]*(?:['’.-][{_UP}{_LO}]+)*(?!\w)"
_CITY = rf"{_CITYW}(?:[ -](?:{_PARTICLE}[ ])?{_CITYW}){{0,3}}(?:[ ]\d{{1,2}}\b)?"
_ELEM = rf"(?:(?:{_PC}[ ]+)?{_CITY}(?:[ ]+[A-Z]{{2,3}}\b)?(?:[ ]+{_PC})?|[A-Z]{{2,3}}[ ]+{_PC}|{_PC})"
_TAIL = rf"(?:,?[ ]+(?i:Apt|Unit|Suite|Flat|#)\.?[ ]*\w+)?(?:,[ ]*{_ELEM}){{0,4}}"
_SWORD = rf"(?:[{_UP}][\w'’.-]*|\d{{1,3}}(?:st|nd|rd|th))"
_NUM = r"\d{1,5}[A-Za-z]?(?:[-/]\d{1,5}[A-Za-z]?)?"
_DIR = r"(?:[ ]+(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West|Lower|Upper)\b\.?)?"
_UNIT = r"(?i:\b(?:apt|apartment|flat|unit|suite|ste|plot|floor|level|room|building|bldg|lot)\.?[ ]*#?[\w/-]{0,5}\d[\w/-]{0,4},?[ ]+)"
_FR_TYPE = r"(?i:rue|avenue|av\.|boulevard|bd|place|chemin|all[ée]e|impasse|quai|cours|route|passage)"
_STREET_SUFFIX = (r"(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ring|ufer|laan|straat|gracht|plein|kade|singel|"
                  r"vägen|gatan|gränd|vej|gade|veien|gata|katu|utca|ulica)")
_STREET_PREFIX = (r"(?:Calle|Carrer|Avenida|Avinguda|Avda\.|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Rua|Travessa|"
                  r"Praça|Plaza|Paseo|Camino|Ronda|Rambla|ul\.|al\.|Rue|Chaussée)")
_ORDER_CUE = (r"(?i:\b(?:order|ord|acct|account|invoice|inv|ticket|case|booking|reservation|confirmation|reference|ref|"
              r"rma|return authori[sz]ation|tracking|customer|member|membership|subscription|claim|purchase order|"
              r"sales order|kundennummer|bestellung|bestellnummer|rechnung|commande|pedido)"
              r"(?:[ ]+(?:no\.?|number|num|nr\.?|#|id|code|ref\.?|reference))?(?:[ ]*[:#=][ ]*|[ ]+(?:is|was)[ ]+|[ ]+))")
PROJECT_PATTERNS: dict[str, list[str]] = {
    "ORDER_ID": [
        r"\b(?:ORD|ORDER|RMA|INV|TKT)[- ]?\d{3,6}(?:[- ]\d{3,6})?\b", r"\b[A-Z]{2,4}-\d{4}-\d{4}\b",
        # after a cue ("order no.", "acct", "Kundennummer", "booking ref"): a token with >= 2 digits and
        # >= 4 letters/digits; a digits-only token needs >= 5 digits; dates are left alone
        rf"{_ORDER_CUE}((?:[A-Z]{{1,4}}[ -])?#?(?=(?:[#/_-]*[A-Za-z0-9]){{4}})(?=[\w/#-]*\d[\w/#-]*\d)"
        r"(?!#?\d{1,4}\b(?![/-]|[ ]\d{3}))(?!\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?\b)(?!\d{4}-\d{1,2}-\d{1,2}\b)"
        r"[A-Za-z0-9][\w/-]*(?:[ ]\d{3,}\b)*)",
        # shapes without a cue: #100234981, PO-88213, RMA#77120, W849302 (>= 5 digits), 112-7765432-1123345,
        # long digit runs, mixed letter-digit codes with >= 4 digits (7f3e9a1c, 1Z999AA10123456784)
        r"(?<![\w&#])#(?=[A-Za-z0-9-]*\d)[A-Za-z0-9][A-Za-z0-9-]{3,}\b",
        r"\b(?=[A-Z]{1,5}[-#]?(?:[A-Z-]*\d){5})[A-Z]{1,5}[-#]?\d[\dA-Z-]*[\dA-Z]\b",
        r"\b(?=[\d-]*\d{5})(?=(?:-?\d){8})\d{2,}(?:-\d{2,}){1,3}\b",
        r"(?<![\w.,:/+-])\d{7,}(?![\w:/-]|[.,]\d)",
        r"\b(?=[A-Za-z0-9]*[A-Za-z])(?=(?:[A-Za-z]*\d){4})[A-Za-z0-9]{7,}\b",
    ],
    "CARD": [
        r"(?i:\b(?:card|visa|mastercard|master card|amex|american express|maestro|discover|debit|credit|cc|"
        r"last (?:four|4)(?: digits)?|last digits|final (?:four |4 )?digits)\b[^.\n\d]{0,25})(\d{4})\b",
        # without a card word: "the one ending in 2051" (typos too: "endong in"), "ending '2231'";
        # a bare "ending 2025" may be a year
        r"(?i:\b(?:end[a-z]{1,4})[ ]+(?:in|with)(?:[ ]+(?:the[ ]+)?digits)?)[ :'\"(…*-]*(\d{4})\b",
        r"(?i:\b(?:ending|ends|ended))[ :'\"(…*-]*(?!(?:19|20)\d\d\b)(\d{4})\b",
        r"(?<![\w*•·…])(?:[*xX•·…][ -]?){2,24}(\d{4})\b",  # **** **** **** 0005, XXXX-XXXX-XXXX-7311, ••••4444
        r"\b(?:\d{4}[ -]){3}\d{4}\b|\b\d{4}[ -]\d{6}[ -]\d{5}\b",  # full numbers, Amex 4-6-5
    ],
    "EMAIL": [
        r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+'-]{0,62}[A-Za-z0-9_%+-])?@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b",
        r"(?i:\b[a-z0-9][\w.+-]*[ ]?(?:\(at\)|\[at\])[ ]?[a-z0-9-]+(?:[ ]?(?:\.|\(dot\)|\[dot\])[ ]?[a-z0-9-]+)+)",
    ],
    "ADDRESS": [
        # number first (US, UK, CA, AU...): [unit,] 221B Baker Street[ W][, city][, ST] [postcode]
        rf"(?:{_UNIT})?\b{_NUM}[ ]+(?:{_SWORD}[ ]+){{1,4}}{_STREET}{_DIR}{_TAIL}",
        rf"{_UNIT}(?:{_SWORD}[ ]+){{1,3}}{_STREET}{_DIR}{_TAIL}",  # Plot 14, Admiralty Way, ...
        rf"(?i:\b{_NUM}[ ]+(?:[a-z][a-z'’-]*[ ]+){{1,3}}{_STREET}),[ ]*(?:[a-z]+[ ]+){{1,3}}\d{{4,5}}\b",  # all lowercase
        # French style: 12 rue de la Paix, 75002 Paris
        rf"(?:{_UNIT})?\b{_NUM}(?:[ ]?(?:bis|ter))?,?[ ]+{_FR_TYPE}(?:[ ]+(?:{_PARTICLE}[ ]+|[dl]['’])*{_SWORD}){{1,4}}{_TAIL}",
        # street name first, number after (DE, NL, ES, IT, PT, PL, SE...)
        rf"\b[{_UP}][\w'’-]*{_STREET_SUFFIX}[ ]+{_NUM}{_TAIL}",
        rf"\b{_STREET_PREFIX}(?:[ ]+(?:{_PARTICLE}[ ]+)*{_SWORD}){{1,4}}[ ]+{_NUM}{_TAIL}",
        rf"\b{_SWORD}(?:[ ]+(?:{_PARTICLE}[ ]+)*{_SWORD}){{0,3}}[ ]+{_NUM},[ ]*(?:{_PC}[ ]+{_CITY}|{_CITY}[ ]+{_PC}){_TAIL}",
        # Japanese block numbers: 2-21-1 Shibuya, 1-chome-1-2 Oshiage
        rf"\b\d{{1,2}}-(?:chome-\d{{1,3}}(?:-\d{{1,3}})?|\d{{1,3}}-\d{{1,3}})[ ]+{_SWORD}{_TAIL}",
        rf"(?i:\b(?:P\.?[ ]?O\.?[ ]?Box|Post Office Box|Postfach|Apartado|Casilla|GPO Box|Locked Bag|Private Bag))[ ]*\d{{1,6}}{_TAIL}",
    ],
    "PHONE": [
        rf"(?<![\w-])(?:\+1[ .-]?)?(?:\(\d{{3}}\)|\d{{3}})[ .-]?\d{{3}}[ .-]\d{{4}}\b{_EXT}",
        # international: +44 20 7946 0958, 0044 20 ..., 00 31 20 123 4567, +1 (415) 876-2671 ext. 204
        rf"(?<![\w+])(?:\+|\b00[ ]?)(?=(?:[ .()-]*\d){{8}})[1-9]\d{{0,3}}(?:[ .-]?(?:\(\d{{1,4}}\)|\d{{1,5}})){{2,7}}\b{_EXT}",
        # national with a trunk 0: (03) 9555 1234, 020 7946 0123, 06 12 34 56 78 (9-12 digits, not a date)
        rf"(?<![\w+.-])(?=(?:[ .()-]*\d){{9}})(?!(?:[ .()-]*\d){{13}})(?!0\d?[./]\d{{1,2}}[./]\d)"
        rf"(?:\(0\d{{1,4}}\)|0\d{{1,4}})(?:[ .-]?\d{{2,8}}){{1,5}}(?![\w:-]){_EXT}",
    ],
    "NAME": [
        # introduced: "my name is X", "it's X and", "under X", "Name: X"
        rf"(?i:\b(?:my name is|name's|name:|this is|i am|i'm|call me|speaking with|it's|it is|under|in the name of|"
        rf"account holder is|attn:?|attention:|contact person:|from:|on behalf of(?: my \w+,?)?|signed(?: for)? by|"
        rf"placed by|opened by|addressed to|ask for|tell|je m'appelle|me llamo|mi chiamo|ich heiße|ich bin)\s+)({_NAME})",
        # cues only a name can follow, any casing: "my name is jürgen weiß", "name on the card is MARIA JOSÉ"
        rf"(?i:\b(?:my name is|my name's|registered to|registered under|in the name of|"
        rf"account holder(?: is|:)|card ?holder(?: is|:)|name on the (?:card|account|order|booking) is|"
        rf"je m'appelle|me llamo|mi chiamo|ich heiße)[ ]+)({_ANYNAME})",
        # salutations and sign-offs: "Thanks, X", "Got it, X.", "Cheers, X Y!", "Regards,\nX"
        rf"\b(?:[A-Z][a-z]+(?:\s[a-z]+){{0,3}}),\s+({_NAME})(?=[ \t]*(?:[.!?,\n]|$))",
        rf"(?i:\b(?:hi|hello|hey|dear|thanks|thank you|cheers|bye|ciao|bonjour|hola|hallo)(?:[ ]+(?:so|very)[ ]+much)?)"
        rf"[ ,]+({_NAME})(?=[ \t]*(?:[,!.?\n]|$))",
        r"(?i:\b(?:thanks|thank you|thx|ty|cheers)[ ,]+)((?!(?:so|again|everyone|guys|all|team|anyway|though|tho|much|lot|"
        r"alot|you|mate|heaps|tons|folks|both|man|bro|buddy|dude|a|for|very|ok|okay|sir|madam|maam|agent|support|"
        r"everybody|y'all|yall|in|again)\b)[a-z]{3,})(?=[ \t]*(?:[,!.\n]|$))",  # "thanks ahmad, that fixed it"
        rf"\b(?:Mr|Mrs|Ms|Miss|Dr|Mx|Prof)\.?\s+({_NAME})",
        # "Rahul here, ...", "Ingeborg here again"
        rf"(?:^|(?<=[,.!?] )|(?<=\n))({_NAME})[ ]+here(?=[ \t]*[,.!;:-]|[ ]+(?:again|from|with|speaking|calling|writing)\b)",
        # relations: "my son Anatoly", "your colleague Priyanka", "my neighbour Mr O'Sullivan"
        rf"(?i:\b(?:(?:my|our|his|her|their)[ ]+(?:son|daughter|wife|husband|partner|sister|brother|mother|mom|mum|"
        rf"father|dad|friend|colleague|neighbour|neighbor|landlord|landlady|flatmate|roommate|housemate|boss|manager|"
        rf"assistant|grandmother|grandfather|grandma|grandpa|uncle|aunt|cousin|niece|nephew|fianc[eé]e?|tenant)|"
        rf"(?:your|the)[ ]+(?:colleague|agent|technician|rep|representative|courier|driver|engineer))[ ,]+)({_NAME})",
        rf"(?m:^[ \t]*(?:--|—|–|~)[ \t]*({_NAME})[ \t]*$)",  # "-- Tomás" under a message
        # a full name anywhere: two or more capitalised words that are not a known product or phrase
        # (every start position is tried, so "Could Hyun-woo Park" still yields "Hyun-woo Park")
        rf"(?=\b(?P<full>{_CAP}(?:[ ](?:{_PARTICLE}[ ]){{0,2}}{_CAP}){{1,3}})\b)",
    ],
}
# Capitalised words that the NAME cues must never swallow (generic English; the domain's own
# words come from the lexicon: see scrubber_for).
_NOT_NAMES = {"I", "The", "This", "That", "Thanks", "Thank", "Hi", "Hello", "Hey", "Yes", "No", "Sure", "Okay",
              "Great", "Sorry", "Please", "Team", "Support", "Agent", "There", "Everyone", "All", "Again", "So",
              "Just", "Well", "Also", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
              "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December", "Order", "Orders", "Account", "Email", "Phone", "Address", "Name", "Card",
              "Assistant", "User", "Customer", "Home", "Wi", "Fi", "Got", "It", "Perfect",
              "Cheers", "Best", "Regards", "Sincerely", "Welcome", "Good", "Morning", "Afternoon", "Evening",
              "Happy", "Of", "Course", "Absolutely", "Right", "Alright", "Here", "You", "Go", "What", "How",
              "When", "Where", "Why", "Which", "Can", "Could", "Would", "Will", "Do", "Does", "Is", "Are", "My",
              "Your", "Our", "We", "Not", "Any", "And", "But", "Or", "If", "One", "Another", "Quick", "Question",
              "Hmm", "Oh", "Ah", "Ugh", "Wow", "Cool", "Nice", "Awesome", "Appreciate", "Confirming", "Reaching",
              "Out", "Dear", "Under", "Settings", "Wi-Fi", "For", "To", "In", "On", "At", "By", "With", "From", "As", "Ok", "Yeah", "Yep", "Nope",
              # titles, and common capitalised words of support text that are not names (places,
              # holidays, app and store names, UI labels)
              "Mr", "Mrs", "Ms", "Miss", "Dr", "Mx", "Prof", "Sir", "Madam", "Attn", "Signed", "Subject",
              "New", "North", "South", "East", "West", "Northern", "Southern", "Eastern", "Western", "Central",
              "Saint", "San", "Santa", "Los", "Las", "Day", "Days", "Week", "Weekend", "Month", "Year", "Holiday",
              "Christmas", "Easter", "Black", "Cyber", "Store", "Play", "Music", "Service", "Services", "Policy",
              "Center", "Centre", "Office", "Desk", "Help", "Smart", "Connect", "Open", "Close", "Click", "Tap",
              "Select", "Press", "Turn", "Update", "Reset", "Advanced", "Plus", "Pro", "Max", "Mini", "Ultra", "App",
              "Apps", "Portal", "Returns", "Refund", "Refunds", "Billing", "Shipping", "Delivery", "Customers",
              "Kind", "Wishes", "Yours", "Bonjour", "Hola", "Hallo", "Ciao", "Bye", "Contact", "Person", "Ask",
              "Tell", "Should", "Kindly", "Dispatch", "Warehouse", "Street", "Road", "City", "Town", "Hotel"}


@dataclass
class ScrubResult:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, type) in the original


class Scrubber:
    """scrubadub's detectors (email, phone, credit card, url...) plus project recognizers."""

    def __init__(self, extra_patterns: dict[str, list[str]] | None = None, product_terms: Iterable[str] = (),
                 organisation_terms: Iterable[str] = ()):
        import scrubadub

        self._scrubadub = scrubadub.Scrubber()
        patterns = {k: list(v) for k, v in PROJECT_PATTERNS.items()}
        for k, v in (extra_patterns or {}).items():
            patterns.setdefault(k, []).extend(v)
        self.patterns = {k: [re.compile(p) for p in v] for k, v in patterns.items()}
        # Product names look like person names ("Lumen Max") and SKUs like order ids: never scrub them.
        self.keep = {t.lower() for t in product_terms}
        # The domain's organisations (the company itself): none of their words is a name on its own.
        self.not_names = _NOT_NAMES | {w for t in organisation_terms for w in t.split()}

    _TYPES = {"email": "EMAIL", "phone": "PHONE", "credit_card": "CARD", "url": "URL", "twitter": "HANDLE",
              "social_security_number": "ID", "credential": "CREDENTIAL", "skype": "HANDLE"}
    _AT_DOMAIN = re.compile(r"(?i)\sat\s+[\w-]+(?:\.|\s+dot\s+)\w")  # "anna.k at example dot com"

    def find(self, text: str) -> list[tuple[int, int, str]]:
        spans: list[tuple[int, int, str]] = []
        for f in self._scrubadub.iter_filth(text):
            if f.type == "email" and "@" not in f.text and not self._AT_DOMAIN.search(f.text):
                continue  # scrubadub reads "x at y." as an e-mail: "here at Nimbus.", "outage at 7am."
            spans.append((f.beg, f.end, self._TYPES.get(f.type, f.type.upper())))
        lower = text.lower()
        protected = [(m.start(), m.end()) for term in self.keep for m in re.finditer(re.escape(term), lower)]
        for kind, regexes in self.patterns.items():
            for rx in regexes:
                # a full-name pattern (group "full") needs two name words left after trimming cue words
                min_words = 2 if "full" in rx.groupindex else 1
                for m in rx.finditer(text):
                    g = 1 if m.groups() and m.group(1) else 0
                    start, end = m.span(g)
                    if start == end:
                        continue
                    if kind == "NAME":
                        span = self._name_span(text, start, end, protected, min_words)
                        if span is None:
                            continue
                        start, end = span
                    elif kind == "ORDER_ID" and any(a < end and start < b for a, b in protected):
                        continue  # a product SKU after "order" ("order NX-2041")
                    spans.append((start, end, kind))
        return _merge(spans)

    def _name_span(self, text: str, start: int, end: int, protected: list[tuple[int, int]],
                   min_words: int = 1) -> tuple[int, int] | None:
        """Trim cue words off a NAME candidate; None when fewer than min_words name-like words are
        left or it overlaps a protected term (a product or plan name such as "Halo Mesh Node")."""
        words = [(m.start() + start, m.end() + start, m.group()) for m in re.finditer(r"\S+", text[start:end])]
        while words and words[0][2] in self.not_names:
            words = words[1:]
        while words and words[-1][2] in self.not_names:
            words = words[:-1]
        if len(words) < max(1, min_words):
            return None
        start, end = words[0][0], words[-1][1]
        if any(a < end and start < b for a, b in protected):
            return None
        return start, end

    def scrub(self, text: str) -> ScrubResult:
        spans = self.find(text)
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(PLACEHOLDER.format(kind))
            pos = end
        out.append(text[pos:])
        return ScrubResult("".join(out), spans)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping detections become one span (the longer one's type)."""
    spans = sorted(spans, key=lambda s: (s[0], -(s[1] - s[0])))
    merged: list[tuple[int, int, str]] = []
    for s in spans:
        if merged and s[0] < merged[-1][1]:
            last = merged[-1]
            kind = last[2] if (last[1] - last[0]) >= (s[1] - s[0]) else s[2]
            merged[-1] = (last[0], max(last[1], s[1]), kind)
        else:
            merged.append(s)
    return merged


def scrub_conversations(convs: list[dict], scrubber: Scrubber) -> tuple[list[dict], dict]:
    """Scrubbed copies + report: counts by type, and recall against planted PII when recorded.

    A planted instance survives when any of its characters is left unscrubbed.
    """
    out, counts = [], Counter()
    planted, caught = Counter(), Counter()
    survivors: list[dict] = []
    for conv in tqdm(convs, desc="scrub", leave=False):
        turns = []
        pii = conv.get("metadata", {}).get("pii", [])
        for i, turn in enumerate(conv["turns"]):
            res = scrubber.scrub(turn["text"])
            counts.update(kind for _, _, kind in res.spans)
            for inst in (p for p in pii if p["turn"] == i):
                planted[inst["type"]] += 1
                covered = all(any(s <= c < e for s, e, _ in res.spans) for c in range(inst["start"], inst["end"]))
                if covered:
                    caught[inst["type"]] += 1
                else:
                    survivors.append({"conversation_id": conv["conversation_id"], "turn": i, "type": inst["type"],
                                      "text": inst["text"]})
            turns.append({**turn, "text": res.text})
        meta = {k: v for k, v in conv.get("metadata", {}).items() if k != "pii"}
        out.append({"conversation_id": conv["conversation_id"], "turns": turns, "metadata": meta})
    recall = {t: round(caught[t] / n, 4) for t, n in sorted(planted.items())}
    report = {"replaced_by_type": dict(sorted(counts.items())), "planted_by_type": dict(sorted(planted.items())),
              "recall_by_type": recall, "survivors": survivors, "n_survivors": len(survivors),
              "scored": bool(planted)}
    return out, report


# --------------------------------------------------------------------------- samples
def split_long(ids: list[int], max_len: int, mode: str = "split") -> list[list[int]]:
    """Cut a token list into pieces of at most max_len (mode 'split'), or keep its head ('truncate')."""
    if max_len < 1:
        raise CalibrationError("max_seq_len must be >= 1")
    if len(ids) <= max_len:
        return [list(ids)] if ids else []
    if mode == "truncate":
        return [list(ids[:max_len])]
    return [list(ids[i:i + max_len]) for i in range(0, len(ids), max_len)]


def autoawq_kept_tokens(samples: list[list[int]], max_seq_len: int) -> int:
    """Tokens AutoAWQ's get_calib_dataset actually uses: samples longer than max_seq_len are
    dropped, the rest concatenated and cut into whole blocks of max_seq_len."""
    total = sum(len(s) for s in samples if 0 < len(s) <= max_seq_len)
    return (total // max_seq_len) * max_seq_len


def draw_set(texts: list[str], tokenizer, n_blocks: int, max_seq_len: int, seed: int, name: str,
             mode: str = "split") -> dict:
    """Draw texts at random until n_blocks * max_seq_len tokens are collected.

    Returns {"texts", "samples" (token lists, each <= max_seq_len), "n_texts", "tokens", ...}.
    """
    if not texts:
        raise CalibrationError(f"calibration set {name!r} is empty after filtering: no text to draw from")
    budget = n_blocks * max_seq_len
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    chosen, samples, tokens, n_split_texts = [], [], 0, 0
    for idx in order:
        ids = encode(tokenizer, texts[idx])
        pieces = split_long(ids, max_seq_len, mode)
        n_split_texts += len(pieces) > 1
        if not pieces:
            continue
        chosen.append(texts[idx])
        for p in pieces:
            take = p[: budget - tokens]
            samples.append(take)
            tokens += len(take)
            if tokens >= budget:
                break
        if tokens >= budget:
            break
    if tokens < budget:
        raise CalibrationError(f"calibration set {name!r}: the pool holds only {tokens} tokens, fewer than the "
                               f"{budget} asked ({n_blocks} samples x {max_seq_len}); lower calibration.n_samples")
    return {"name": name, "texts": chosen, "samples": samples, "n_texts": len(chosen), "tokens": tokens,
            "texts_split": n_split_texts, "kept_by_autoawq": autoawq_kept_tokens(samples, max_seq_len),
            "seed": seed}


def save_set(calib: dict, folder: Path) -> Path:
    """Arrow (Hugging Face datasets) with one row per token sample and the source texts."""
    from datasets import Dataset

    folder = Path(folder)
    Dataset.from_dict({"input_ids": calib["samples"], "length": [len(s) for s in calib["samples"]]}).save_to_disk(
        str(folder / "samples"))
    Dataset.from_dict({"text": calib["texts"]}).save_to_disk(str(folder / "texts"))
    meta = {k: v for k, v in calib.items() if k not in ("texts", "samples")}
    (folder / "set.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_set(folder: str | Path) -> tuple[list[list[int]], dict]:
    from datasets import load_from_disk

    folder = Path(folder)
    if not (folder / "set.json").is_file():
        raise CalibrationError(f"{folder}: not a calibration set (no set.json); run step 01_calibration first")
    ds = load_from_disk(str(folder / "samples"))
    return [list(x) for x in ds["input_ids"]], json.loads((folder / "set.json").read_text())


# --------------------------------------------------------------------------- statistics
_WORD = re.compile(r"[A-Za-z0-9$%.\-]+")


def ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = [w.lower().strip(".") for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(texts: list[str], reference: set[tuple[str, ...]], n: int = 3) -> float:
    """Share of a set's distinct n-grams that also occur in the reference text."""
    grams: set[tuple[str, ...]] = set()
    for t in texts:
        grams |= ngrams(t, n)
    return round(len(grams & reference) / max(1, len(grams)), 4)


def term_coverage(texts: list[str], lexicon: dict[str, list[str]]) -> dict[str, dict]:
    """Per lexicon category: distinct terms present, of how many, and total mentions."""
    blob = "\n".join(texts).lower()
    out = {}
    for cat, terms in lexicon.items():
        uniq = sorted({t for t in terms if t})
        hits = {t: blob.count(t.lower()) for t in uniq}
        present = sum(1 for v in hits.values() if v)
        out[cat] = {"present": present, "of": len(uniq), "share": round(present / max(1, len(uniq)), 4),
                    "mentions": int(sum(hits.values()))}
    return out


def load_lexicon(path: str | Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CalibrationError(f"{p}: expected a JSON object {{category: [terms, ...]}}")
    return {k: [str(t) for t in v] for k, v in data.items()}


# --------------------------------------------------------------------------- the step
SOURCES = ("generic", "in_domain", "mixed")


def set_name(source: str, draw: int, n_samples: int | None = None, default_n: int | None = None) -> str:
    """generic-d0, in_domain-d2, in_domain-n16-d0 (sweep sets carry their sample count)."""
    size = f"-n{n_samples}" if n_samples is not None and n_samples != default_n else ""
    return f"{source}{size}-d{draw}"


def load_pools(P, tokenizer=None) -> dict:
    """Generic and in-domain text pools (in-domain scrubbed first), plus evaluation text and
    the scrub report. Nothing here touches the evaluation or task splits' text beyond reading it."""
    from quantstudy import data

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
    return {"generic": generic, "in_domain": in_domain, "eval_in_domain": eval_text,
            "scrub": report, "lexicon": lexicon, "pii_independent": independent,
            "chat_template": bool(template and data.has_chat_template(tokenizer))}


def scrubber_for(lexicon: dict[str, list[str]]) -> Scrubber:
    """The scrubber for a domain: its lexicon's products are never scrubbed, and the words of its
    organisations (category ``organisation``, e.g. the company name) are never names."""
    return Scrubber(product_terms=lexicon.get("product", []), organisation_terms=lexicon.get("organisation", []))


def domain_lexicon_for(P) -> dict[str, list[str]]:
    """Domain terms ({category: [terms]}) from data.domain_lexicon, for coverage and per-token damage."""
    from quantstudy.paths import resolve

    return load_lexicon(resolve(P.data.domain_lexicon)) if P.data.domain_lexicon else {}


def plan_sets(P) -> list[dict]:
    """Every calibration set the params ask for: source x draw, plus the sample-count sweep
    on in-domain draw 0."""
    c = P.calibration
    plan = []
    for source in c.sources:
        for d in range(c.draws):
            plan.append({"name": set_name(source, d), "source": source, "draw": d, "n_samples": c.n_samples})
    for n in c.sample_sweep:
        if n != c.n_samples:
            plan.append({"name": set_name("in_domain", 0, n, c.n_samples), "source": "in_domain", "draw": 0,
                         "n_samples": n, "sweep": True})
    return plan


def _seed(base: int, source: str, draw: int, n: int) -> int:
    return (base * 1_000_003 + SOURCES.index(source) * 10_007 + draw * 101 + n) % (2**31)


def build_sets(P, pools: dict, tokenizer, output_dir: str | Path) -> list[dict]:
    """Draw, split and save every planned set under output_dir/sets/<name>; return their records."""
    c = P.calibration
    if not pools["generic"] and any(s in ("generic", "mixed") for s in c.sources):
        raise CalibrationError("calibration set 'generic' is empty after filtering: the generic pool has no text")
    if not pools["in_domain"] and any(s in ("in_domain", "mixed") for s in c.sources):
        raise CalibrationError("calibration set 'in_domain' is empty after filtering: no in-domain conversations")
    out = Path(output_dir) / "sets"
    records = []
    for spec in tqdm(plan_sets(P), desc="calibration sets"):
        seed = _seed(P.study.seed, spec["source"], spec["draw"], spec["n_samples"])
        if spec["source"] == "mixed":
            n_in = round(spec["n_samples"] * c.mixed_in_domain_fraction)
            parts = [draw_set(pools["in_domain"], tokenizer, n_in, c.max_seq_len, seed, spec["name"], c.long_samples),
                     draw_set(pools["generic"], tokenizer, spec["n_samples"] - n_in, c.max_seq_len, seed + 1,
                              spec["name"], c.long_samples)]
            calib = {"name": spec["name"], "texts": parts[0]["texts"] + parts[1]["texts"],
                     "samples": parts[0]["samples"] + parts[1]["samples"],
                     "n_texts": parts[0]["n_texts"] + parts[1]["n_texts"], "tokens": parts[0]["tokens"] + parts[1]["tokens"],
                     "texts_split": parts[0]["texts_split"] + parts[1]["texts_split"], "seed": seed}
            calib["kept_by_autoawq"] = autoawq_kept_tokens(calib["samples"], c.max_seq_len)
        else:
            calib = draw_set(pools[spec["source"]], tokenizer, spec["n_samples"], c.max_seq_len, seed, spec["name"],
                             c.long_samples)
        calib.update({k: spec[k] for k in ("source", "draw", "n_samples")}, sweep=spec.get("sweep", False),
                     max_seq_len=c.max_seq_len, long_samples=c.long_samples)
        save_set(calib, out / spec["name"])
        records.append({k: v for k, v in calib.items() if k not in ("samples",)})
    return records


def set_statistics(records: list[dict], pools: dict, tokenizer) -> dict:
    """Token lengths per set, domain-term coverage, and 3-gram overlap with in-domain evaluation text."""
    reference: set[tuple[str, ...]] = set()
    for t in pools["eval_in_domain"]:
        reference |= ngrams(t)
    lengths, coverage, overlap = {}, {}, {}
    for r in records:
        lengths[r["name"]] = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in r["texts"]]
        coverage[r["name"]] = term_coverage(r["texts"], pools["lexicon"]) if pools["lexicon"] else {}
        overlap[r["name"]] = ngram_overlap(r["texts"], reference)
    return {"lengths": lengths, "coverage": coverage, "overlap_3gram": overlap}


# --------------------------------------------------------------------------- tables, figures, metrics
def load_tokenizer(model):
    """The model's tokenizer; ``model`` is the params' model section (or a local folder path)."""
    from quantstudy import modelsource
    from quantstudy.config.params import ModelSection

    if isinstance(model, (str, Path)):
        model = ModelSection(source="embedded", path=str(model))
    return modelsource.load_tokenizer(model)


def independent_pii_check(scrubber) -> dict:
    """The scrubber on hand-labelled sentences this project's generator did not write
    (tests/fixtures/pii): the development set the patterns were widened on, and a holdout set
    written afterwards and never tuned on (the honest estimate for unseen formats)."""
    from quantstudy.steps.pii_eval import default_testset, evaluate_scrubber, load_testset

    return {name: evaluate_scrubber(scrubber, load_testset(default_testset(holdout=name == "holdout")))
            for name in ("development", "holdout")}


def pii_table(independent: dict | None):
    """Recall per type on the independent PII sets, with survivors counted (masked in metrics)."""
    import pandas as pd

    if not independent:
        return pd.DataFrame()
    rows = []
    for t in PII_TYPES_ORDER:
        row = {"type": t}
        for name, res in independent.items():
            r = res["by_type"].get(t) or {}
            row[f"{name}: instances"] = r.get("instances")
            row[f"{name}: recall"] = None if r.get("recall") is None else round(r["recall"], 3)
        rows.append(row)
    return pd.DataFrame(rows).set_index("type")


PII_TYPES_ORDER = ("NAME", "EMAIL", "PHONE", "ADDRESS", "ORDER_ID", "CARD")


def scrub_table(report: dict):
    import pandas as pd

    types = sorted(set(report.get("replaced_by_type", {})) | set(report.get("planted_by_type", {})))
    return pd.DataFrame([{"type": t, "replaced": report["replaced_by_type"].get(t, 0),
                          "planted (demo record)": report.get("planted_by_type", {}).get(t, None),
                          "recall": report.get("recall_by_type", {}).get(t, None)} for t in types]).set_index("type")


def sets_table(records: list[dict]):
    import pandas as pd

    cols = ["name", "source", "draw", "n_samples", "n_texts", "texts_split", "tokens", "kept_by_autoawq", "max_seq_len"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in records]).set_index("name")


def plot_statistics(stats: dict, records: list[dict]):
    """Three panels: token lengths per set, domain-term coverage, 3-gram overlap with in-domain eval."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    main = [r["name"] for r in records if not r.get("sweep")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    lengths = pd.DataFrame([{"set": n, "tokens": v} for n in main for v in stats["lengths"][n]])
    sns.boxplot(data=lengths, y="set", x="tokens", ax=axes[0], color="#9ecae1", fliersize=2)
    axes[0].set(title="Sample length per calibration set", xlabel="tokens per source text (before splitting)", ylabel="")
    cov = pd.DataFrame([{"set": n, "category": cat, "share": v["share"] * 100}
                        for n in main for cat, v in stats["coverage"].get(n, {}).items()])
    if not cov.empty:
        sns.barplot(data=cov, y="set", x="share", hue="category", ax=axes[1])
        axes[1].set(title="Domain-term coverage", xlabel="% of lexicon terms present in the set", ylabel="")
        axes[1].legend(title="term category", loc="lower right")
    else:
        axes[1].text(0.5, 0.5, "no domain lexicon (data.domain_lexicon)", ha="center")
        axes[1].set_title("Domain-term coverage")
    ov = pd.DataFrame([{"set": n, "overlap": stats["overlap_3gram"][n] * 100} for n in main])
    sns.barplot(data=ov, y="set", x="overlap", ax=axes[2], color="#fdae6b")
    axes[2].set(title="Overlap with in-domain evaluation text", xlabel="% of the set's word 3-grams found in eval text",
                ylabel="")
    fig.tight_layout()
    return fig


def write_metrics(output_dir: str | Path, pools: dict, records: list[dict], stats: dict, wall_s: float) -> dict:
    metrics = {
        "scrub": {k: v for k, v in pools["scrub"].items()},
        "pii_independent": pools.get("pii_independent"),
        "pools": {"generic_texts": len(pools["generic"]), "in_domain_texts": len(pools["in_domain"]),
                  "in_domain_rendered_with_chat_template": pools.get("chat_template", False)},
        "sets": [{k: v for k, v in r.items() if k != "texts"} for r in records],
        "coverage": stats["coverage"], "overlap_3gram": stats["overlap_3gram"],
        "length_median": {n: float(np.median(v)) if v else 0 for n, v in stats["lengths"].items()},
        "wall_s": round(wall_s, 1),
    }
    return contracts.write("01_calibration", output_dir, metrics)
