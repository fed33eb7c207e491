"""The personal-data scrubber: scrubadub's detectors plus the project's own recognizers
(identifiers, card fragments in prose, street addresses, names introduced in dialogue), and
its recall on the PII a data set records as planted.

Nothing here names a domain: the words a domain must keep (its products, its organisations)
come from the params' domain lexicon (``scrubber_for``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from tqdm.auto import tqdm

PLACEHOLDER = "[{}]"  # typed placeholder, e.g. [EMAIL]

# Project recognizers for what generic PII libraries do not know: order, account and ticket
# identifiers, card fragments in prose, street addresses, and names introduced in dialogue.
# They were first written against synthetic support conversations and then widened against an
# independent hand-written test set (tests/fixtures/pii, scored by ``pii_eval`` beside this module):
# international and national phone numbers, other order/account shapes, addresses of
# several countries, non-English and lowercase names.


def _letters(upper: bool) -> str:
    """Upper- or lowercase letters of the Latin, Greek, Cyrillic and Vietnamese blocks, for a
    character class (Python's re has no \\p{Lu})."""
    blocks = ((0x41, 0x5B), (0x61, 0x7B), (0xC0, 0x250), (0x370, 0x530), (0x1E00, 0x1F00))
    return "".join(
        chr(c)
        for a, b in blocks
        for c in range(a, b)
        if (chr(c).isupper() if upper else chr(c).islower()) and chr(c).isalpha()
    )


_UP, _LO = _letters(True), _letters(False)
_STREET = r"(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Court|Ct|Boulevard|Blvd|Way|Place|Pl|Terrace|Tce|Circle|Parkway|Pkwy|Square|Sq|Crescent|Cres|Close|Grove|Gardens|Mews|Row|Highway|Hwy|Quay|Parade|Esplanade|Prospekt|Park|Hill)\.?"
# A capitalised name word: O'Brien, D'Arcy, McAllister, Zoë, Saldaña-Pérez, Hyun-woo, Haruto-san.
_CAP = rf"(?:[{_UP}]['’][{_UP}][{_LO}]+|(?:Mc|Mac)?[{_UP}][{_LO}]+(?:-[{_UP}]?[{_LO}]+)*)"
_PARTICLE = r"(?:van|von|der|den|de|del|della|di|da|das|dos|du|la|le|ten|ter|bin|binti|al|el|ibn|zu)"
# One to four name words on one line, particles between them: "Pieter van der Berg".
_NAME = rf"{_CAP}(?:[ ](?:{_PARTICLE}[ ]){{0,2}}{_CAP}){{0,3}}"
# After a cue that can only introduce a name, any casing: "my name is jürgen weiß", "MARIA JOSÉ".
_LOWSTOP = (
    r"(?:and|or|but|the|a|an|i|im|is|was|not|still|wrong|correct|incorrect|misspelled|spelled|spelt|missing|"
    r"different|changed|showing|shown|displayed|blank|empty|here|there|please|thanks|from|at|in|on|with|for|"
    r"to|of|by|if|so|just|who|that|this|my|your|also|too|because|when|then|as|it|its|now|again|only)"
)
_ANYWORD = rf"(?:{_CAP}|[{_UP}]{{2,}}(?:-[{_UP}]{{2,}})?|(?!{_LOWSTOP}\b)[{_LO}][{_LO}'’-]+)"
_ANYNAME = rf"{_ANYWORD}(?:[ ](?:{_PARTICLE}[ ]){{0,2}}{_ANYWORD}){{0,3}}"
_EXT = r"(?:[ \t]*,?[ \t]*(?i:ext\.?|extension|x)[ \t]*\d{1,5}\b)?"
# Postcodes: UK, Canada, Netherlands, Sweden, Poland/Portugal/Japan/ZIP+4, and 4-6 digit ones.
_PC = (
    r"(?:[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|\d{4}[ ]?[A-Z]{2}\b|\d{3}[ ]\d{2}\b|"
    r"\d{2,5}-\d{3,4}\b|\d{4,6}\b)"
)
_CITYW = rf"[{_UP}][{_UP}{_LO}]*(?:['’.-][{_UP}{_LO}]+)*(?!\w)"
_CITY = rf"{_CITYW}(?:[ -](?:{_PARTICLE}[ ])?{_CITYW}){{0,3}}(?:[ ]\d{{1,2}}\b)?"
_ELEM = rf"(?:(?:{_PC}[ ]+)?{_CITY}(?:[ ]+[A-Z]{{2,3}}\b)?(?:[ ]+{_PC})?|[A-Z]{{2,3}}[ ]+{_PC}|{_PC})"
_TAIL = rf"(?:,?[ ]+(?i:Apt|Unit|Suite|Flat|#)\.?[ ]*\w+)?(?:,[ ]*{_ELEM}){{0,4}}"
_SWORD = rf"(?:[{_UP}][\w'’.-]*|\d{{1,3}}(?:st|nd|rd|th))"
_NUM = r"\d{1,5}[A-Za-z]?(?:[-/]\d{1,5}[A-Za-z]?)?"
_DIR = r"(?:[ ]+(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West|Lower|Upper)\b\.?)?"
_UNIT = r"(?i:\b(?:apt|apartment|flat|unit|suite|ste|plot|floor|level|room|building|bldg|lot)\.?[ ]*#?[\w/-]{0,5}\d[\w/-]{0,4},?[ ]+)"
_FR_TYPE = r"(?i:rue|avenue|av\.|boulevard|bd|place|chemin|all[ée]e|impasse|quai|cours|route|passage)"
_STREET_SUFFIX = (
    r"(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|ring|ufer|laan|straat|gracht|plein|kade|singel|"
    r"vägen|gatan|gränd|vej|gade|veien|gata|katu|utca|ulica)"
)
_STREET_PREFIX = (
    r"(?:Calle|Carrer|Avenida|Avinguda|Avda\.|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Rua|Travessa|"
    r"Praça|Plaza|Paseo|Camino|Ronda|Rambla|ul\.|al\.|Rue|Chaussée)"
)
_ORDER_CUE = (
    r"(?i:\b(?:order|ord|acct|account|invoice|inv|ticket|case|booking|reservation|confirmation|reference|ref|"
    r"rma|return authori[sz]ation|tracking|customer|member|membership|subscription|claim|purchase order|"
    r"sales order|kundennummer|bestellung|bestellnummer|rechnung|commande|pedido)"
    r"(?:[ ]+(?:no\.?|number|num|nr\.?|#|id|code|ref\.?|reference))?(?:[ ]*[:#=][ ]*|[ ]+(?:is|was)[ ]+|[ ]+))"
)
PROJECT_PATTERNS: dict[str, list[str]] = {
    "ORDER_ID": [
        r"\b(?:ORD|ORDER|RMA|INV|TKT)[- ]?\d{3,6}(?:[- ]\d{3,6})?\b",
        r"\b[A-Z]{2,4}-\d{4}-\d{4}\b",
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
_NOT_NAMES = {
    "I",
    "The",
    "This",
    "That",
    "Thanks",
    "Thank",
    "Hi",
    "Hello",
    "Hey",
    "Yes",
    "No",
    "Sure",
    "Okay",
    "Great",
    "Sorry",
    "Please",
    "Team",
    "Support",
    "Agent",
    "There",
    "Everyone",
    "All",
    "Again",
    "So",
    "Just",
    "Well",
    "Also",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
    "Order",
    "Orders",
    "Account",
    "Email",
    "Phone",
    "Address",
    "Name",
    "Card",
    "Assistant",
    "User",
    "Customer",
    "Home",
    "Wi",
    "Fi",
    "Got",
    "It",
    "Perfect",
    "Cheers",
    "Best",
    "Regards",
    "Sincerely",
    "Welcome",
    "Good",
    "Morning",
    "Afternoon",
    "Evening",
    "Happy",
    "Of",
    "Course",
    "Absolutely",
    "Right",
    "Alright",
    "Here",
    "You",
    "Go",
    "What",
    "How",
    "When",
    "Where",
    "Why",
    "Which",
    "Can",
    "Could",
    "Would",
    "Will",
    "Do",
    "Does",
    "Is",
    "Are",
    "My",
    "Your",
    "Our",
    "We",
    "Not",
    "Any",
    "And",
    "But",
    "Or",
    "If",
    "One",
    "Another",
    "Quick",
    "Question",
    "Hmm",
    "Oh",
    "Ah",
    "Ugh",
    "Wow",
    "Cool",
    "Nice",
    "Awesome",
    "Appreciate",
    "Confirming",
    "Reaching",
    "Out",
    "Dear",
    "Under",
    "Settings",
    "Wi-Fi",
    "For",
    "To",
    "In",
    "On",
    "At",
    "By",
    "With",
    "From",
    "As",
    "Ok",
    "Yeah",
    "Yep",
    "Nope",
    # titles, and common capitalised words of support text that are not names (places,
    # holidays, app and store names, UI labels)
    "Mr",
    "Mrs",
    "Ms",
    "Miss",
    "Dr",
    "Mx",
    "Prof",
    "Sir",
    "Madam",
    "Attn",
    "Signed",
    "Subject",
    "New",
    "North",
    "South",
    "East",
    "West",
    "Northern",
    "Southern",
    "Eastern",
    "Western",
    "Central",
    "Saint",
    "San",
    "Santa",
    "Los",
    "Las",
    "Day",
    "Days",
    "Week",
    "Weekend",
    "Month",
    "Year",
    "Holiday",
    "Christmas",
    "Easter",
    "Black",
    "Cyber",
    "Store",
    "Play",
    "Music",
    "Service",
    "Services",
    "Policy",
    "Center",
    "Centre",
    "Office",
    "Desk",
    "Help",
    "Smart",
    "Connect",
    "Open",
    "Close",
    "Click",
    "Tap",
    "Select",
    "Press",
    "Turn",
    "Update",
    "Reset",
    "Advanced",
    "Plus",
    "Pro",
    "Max",
    "Mini",
    "Ultra",
    "App",
    "Apps",
    "Portal",
    "Returns",
    "Refund",
    "Refunds",
    "Billing",
    "Shipping",
    "Delivery",
    "Customers",
    "Kind",
    "Wishes",
    "Yours",
    "Bonjour",
    "Hola",
    "Hallo",
    "Ciao",
    "Bye",
    "Contact",
    "Person",
    "Ask",
    "Tell",
    "Should",
    "Kindly",
    "Dispatch",
    "Warehouse",
    "Street",
    "Road",
    "City",
    "Town",
    "Hotel",
}


@dataclass
class ScrubResult:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, type) in the original


class Scrubber:
    """scrubadub's detectors (email, phone, credit card, url...) plus project recognizers."""

    def __init__(
        self,
        extra_patterns: dict[str, list[str]] | None = None,
        product_terms: Iterable[str] = (),
        organisation_terms: Iterable[str] = (),
    ):
        import scrubadub  # ~3 s to import; only a scrubber needs it (steps 02-03 import this package)

        self._scrubadub = scrubadub.Scrubber()
        patterns = {k: list(v) for k, v in PROJECT_PATTERNS.items()}
        for k, v in (extra_patterns or {}).items():
            patterns.setdefault(k, []).extend(v)
        self.patterns = {k: [re.compile(p) for p in v] for k, v in patterns.items()}
        # Product names look like person names ("Aria Max") and SKUs like order ids: never scrub them.
        self.keep = {t.lower() for t in product_terms}
        # The domain's organisations (the company itself): none of their words is a name on its own.
        self.not_names = _NOT_NAMES | {w for t in organisation_terms for w in t.split()}

    _TYPES = {
        "email": "EMAIL",
        "phone": "PHONE",
        "credit_card": "CARD",
        "url": "URL",
        "twitter": "HANDLE",
        "social_security_number": "ID",
        "credential": "CREDENTIAL",
        "skype": "HANDLE",
    }
    _AT_DOMAIN = re.compile(r"(?i)\sat\s+[\w-]+(?:\.|\s+dot\s+)\w")  # "anna.k at example dot com"

    def find(self, text: str) -> list[tuple[int, int, str]]:
        spans: list[tuple[int, int, str]] = []
        for f in self._scrubadub.iter_filth(text):
            if f.type == "email" and "@" not in f.text and not self._AT_DOMAIN.search(f.text):
                continue  # scrubadub reads "x at y." as an e-mail: "here at Acme.", "outage at 7am."
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
                        continue  # a product SKU after "order" ("order XR-2041")
                    spans.append((start, end, kind))
        return _merge(spans)

    def _name_span(
        self, text: str, start: int, end: int, protected: list[tuple[int, int]], min_words: int = 1
    ) -> tuple[int, int] | None:
        """Trim cue words off a NAME candidate; None when fewer than min_words name-like words are
        left or it overlaps a protected term (a product or plan name such as "Aria Mesh Node")."""
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
                    survivors.append(
                        {
                            "conversation_id": conv["conversation_id"],
                            "turn": i,
                            "type": inst["type"],
                            "text": inst["text"],
                        }
                    )
            turns.append({**turn, "text": res.text})
        meta = {k: v for k, v in conv.get("metadata", {}).items() if k != "pii"}
        out.append({"conversation_id": conv["conversation_id"], "turns": turns, "metadata": meta})
    recall = {t: round(caught[t] / n, 4) for t, n in sorted(planted.items())}
    report = {
        "replaced_by_type": dict(sorted(counts.items())),
        "planted_by_type": dict(sorted(planted.items())),
        "recall_by_type": recall,
        "survivors": survivors,
        "n_survivors": len(survivors),
        "scored": bool(planted),
    }
    return out, report


def scrubber_for(lexicon: dict[str, list[str]]) -> Scrubber:
    """The scrubber for a domain: its lexicon's products are never scrubbed, and the words of its
    organisations (category ``organisation``, e.g. the company name) are never names."""
    return Scrubber(product_terms=lexicon.get("product", []), organisation_terms=lexicon.get("organisation", []))
