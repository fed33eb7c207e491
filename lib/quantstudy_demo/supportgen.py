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
gives byte-identical files (:func:`write_demo_data`).
"""
from __future__ import annotations

import json
import re
import statistics
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterable

from quantstudy.data import format_conversation
from quantstudy.paths import resolve

COMPANY = "Nimbus Home Networks"
SPLITS = ("train", "calib", "eval", "task")
INTENTS = ("refund", "return_rma", "warranty_claim", "billing_question", "plan_upgrade",
           "shipping_status", "tech_troubleshooting", "privacy_request", "account_change",
           "product_inquiry")
STYLES = ("terse", "polite", "angry", "chatty", "non_native")
PII_TYPES = ("NAME", "EMAIL", "PHONE", "ADDRESS", "ORDER_ID", "CARD")
TASKS = ("policy_closed_book", "policy_grounded", "retention")
DEFAULT_COUNTS = {"n_train": 7000, "n_calib": 600, "n_eval": 400, "n_task": 500, "n_articles": 400,
                  "n_closed_book": 400, "n_grounded": 400, "n_retention": 400}
TYPO_RATE = {"terse": 0.04, "polite": 0.008, "angry": 0.03, "chatty": 0.02, "non_native": 0.045}
MAX_TURNS = 12
MIN_TURNS = 4


# =========================================================================== knowledge base
@dataclass(frozen=True)
class Fact:
    fact_id: str
    group: str          # product / plan / policy
    subject: str        # "Lumen X2", "Nimbus Shield", "" for policies
    attribute: str      # price, sku, warranty, plan_price, sla, clips, refund_window, ...
    kind: str           # price, sku, months, monthly_price, hours, days, percent, ...
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
        return {"company": self.company, "products": self.products, "plans": self.plans,
                "rules": self.rules,
                "facts": [{**asdict(f), "distractors": list(f.distractors)} for f in self.facts]}


_PRODUCTS = [  # name, sku, price, line, warranty
    ("Lumen X2", "NX-2041", "$149", "router", "24 months"),
    ("Lumen X4 Pro", "NX-4087", "$239", "router", "36 months"),
    ("Strato R1", "NX-1013", "$89", "router", "12 months"),
    ("Halo Mesh 3-Pack", "NM-3300", "$329", "mesh", "36 months"),
    ("Halo Mesh Node", "NM-3101", "$119", "mesh", "24 months"),
    ("Cirrus Mesh Duo", "NM-2250", "$199", "mesh", "18 months"),
    ("Vigil Cam Indoor", "NC-5012", "$59", "camera", "12 months"),
    ("Vigil Cam Outdoor", "NC-5188", "$99", "camera", "18 months"),
    ("Sentry Doorbell 2", "NC-6420", "$129", "camera", "24 months"),
    ("Beacon Range Extender", "NA-7705", "$49", "accessory", "12 months"),
    ("Tether Powerline Kit", "NA-7830", "$69", "accessory", "6 months"),
    ("Quill Smart Plug", "NA-7912", "$25", "accessory", "6 months"),
]
_PLANS = [  # key, name, monthly, sla, clip history
    ("basic", "Nimbus Basic", "$4.99", "72 hours", "7 days"),
    ("shield", "Nimbus Shield", "$9.99", "48 hours", "14 days"),
    ("plus", "Nimbus Plus", "$14.99", "24 hours", "30 days"),
    ("pro", "Nimbus Pro", "$24.99", "4 hours", "60 days"),
]
_POLICIES = [  # attribute, kind, value
    ("refund_window", "days", "30 days"),
    ("refund_processing", "business_days", "5 business days"),
    ("rma_validity", "days", "21 days"),
    ("restocking_fee", "percent", "15%"),
    ("data_retention", "days", "90 days"),
    ("privacy_response", "days", "45 days"),
    ("billing_day", "day_of_month", "the 3rd"),
    ("late_fee", "fee", "$7"),
    ("grace_period", "days", "10 days"),
    ("standard_shipping", "ship_range", "3-5 business days"),
    ("express_shipping", "ship_range", "1-2 business days"),
    ("express_cost", "shipping_cost", "$14.95"),
    ("free_shipping_threshold", "threshold", "$75"),
    ("annual_discount", "percent", "20%"),
    ("price_match", "days", "14 days"),
]
_POOLS = {
    "price": ["$25", "$29", "$39", "$49", "$59", "$69", "$79", "$89", "$99", "$109", "$119", "$129", "$139",
              "$149", "$169", "$179", "$199", "$219", "$239", "$259", "$279", "$299", "$329", "$349", "$399"],
    "monthly_price": ["$2.99", "$3.99", "$4.99", "$5.99", "$7.99", "$9.99", "$12.99", "$14.99", "$17.99",
                      "$19.99", "$24.99", "$29.99", "$34.99"],
    "months": ["6 months", "12 months", "18 months", "24 months", "36 months", "48 months"],
    "hours": ["2 hours", "4 hours", "8 hours", "12 hours", "24 hours", "48 hours", "72 hours", "96 hours"],
    "days": ["7 days", "10 days", "14 days", "21 days", "30 days", "45 days", "60 days", "90 days", "120 days"],
    "business_days": ["2 business days", "3 business days", "5 business days", "7 business days",
                      "10 business days"],
    "percent": ["5%", "10%", "15%", "20%", "25%", "30%"],
    "day_of_month": ["the 1st", "the 3rd", "the 5th", "the 10th", "the 15th", "the 28th"],
    "fee": ["$5", "$7", "$10", "$12", "$15", "$25"],
    "ship_range": ["1-2 business days", "2-3 business days", "3-5 business days", "5-7 business days",
                   "7-10 business days"],
    "shipping_cost": ["$9.95", "$12.95", "$14.95", "$19.95", "$24.95"],
    "threshold": ["$50", "$75", "$99", "$100", "$150"],
}


def _money(v: str) -> float:
    return float(v.strip("$"))


def _distractors(kind: str, value: str, rng: Random, kb_values: list[str], n: int = 5) -> tuple[str, ...]:
    """Same-kind alternatives: close in magnitude for prices, other real SKUs for SKUs."""
    if kind == "sku":
        prefix = value[:2]
        same = [v for v in kb_values if v != value and v.startswith(prefix)]
        other = [v for v in kb_values if v != value and not v.startswith(prefix)]
        digits = value[3:]
        fakes = [f"{prefix}-{digits[1]}{digits[0]}{digits[2:]}", f"{prefix}-{digits[:2]}{digits[3]}{digits[2]}",
                 f"{prefix}-{int(digits) + 100:04d}"]
        pool = same + [f for f in fakes if f not in kb_values and f != value] + other
        return tuple(dict.fromkeys(pool))[:n]
    pool = [v for v in _POOLS[kind] if v != value]
    if kind in ("price", "monthly_price"):
        pool.sort(key=lambda v: (abs(_money(v) - _money(value)) / _money(value), v))
        pool = pool[: max(n + 2, 7)]
    rng.shuffle(pool)
    return tuple(pool[:n])


def build_knowledge_base(seed: int = 0) -> KnowledgeBase:
    """The fictional company's catalogue, plans and policies as facts with distractors."""
    rng = Random(f"kb:{seed}")
    skus = [p[1] for p in _PRODUCTS]
    products, plans, facts = [], [], []
    for name, sku, price, line, warranty in _PRODUCTS:
        products.append({"name": name, "sku": sku, "price": price, "line": line, "warranty": warranty})
        for attr, kind, value in (("price", "price", price), ("sku", "sku", sku), ("warranty", "months", warranty)):
            facts.append(Fact(f"product.{sku}.{attr}", "product", name, attr, kind, value,
                              _distractors(kind, value, rng, skus)))
    for key, name, monthly, sla, clips in _PLANS:
        plans.append({"key": key, "name": name, "monthly_price": monthly, "support_sla": sla, "clip_history": clips})
        for attr, kind, value in (("plan_price", "monthly_price", monthly), ("sla", "hours", sla),
                                  ("clips", "days", clips)):
            facts.append(Fact(f"plan.{key}.{attr}", "plan", name, attr, kind, value,
                              _distractors(kind, value, rng, skus)))
    for attr, kind, value in _POLICIES:
        facts.append(Fact(f"policy.{attr}", "policy", "", attr, kind, value, _distractors(kind, value, rng, skus)))
    rules = [
        "A return authorization (RMA) number is required before any item is shipped back.",
        "The restocking fee applies only to opened items that are not defective; defective items are exchanged free.",
        "Refunds go back to the original payment method.",
        "Warranty claims need the order number or the serial number on the device label.",
        "Plan changes take effect immediately; upgrades are prorated for the rest of the billing cycle.",
        "Privacy requests are verified by a code sent to the account email.",
        "Express shipping is available only for in-stock items.",
    ]
    return KnowledgeBase(COMPANY, products, plans, facts, rules)


# =========================================================================== phrasing banks
# Statement banks: (prefix, suffix). A statement is prefix + " " + value + suffix, so a task
# item's context can end exactly where the figure goes. {s} is the fact's subject.
STATEMENTS: dict[str, list[tuple[str, str]]] = {
    "price": [("The {s} is", " right now."), ("The {s} [sells|retails] for", "."),
              ("[Currently|At the moment|Today], the {s} [costs|is priced at]", "[.| before tax.| on our store.]"),
              ("You can [pick up|get|buy] the {s} for", "[.| from our online store.| including the power adapter.]"),
              ("Our list price for the {s} is", "."), ("The price of the {s} is", "[.| in our store.]"),
              ("[A new|One] {s} [will cost you|costs]", "[.| plus tax.]")],
    "sku": [("The SKU for the {s} is", "."), ("The {s} [has|carries] the model number", "[.| on its label.]"),
            ("[You'll find the|The] {s} [is listed|appears] under SKU", "[.| in our catalogue.]"),
            ("On the box, the {s} is marked", "[.| next to the barcode.]"),
            ("The model number [of|for] the {s} is", "[.| if you're searching the store.]"),
            ("The {s}'s [SKU|part number] is", ".")],
    "warranty": [("The {s} [comes with|has|is covered by] a [limited |]warranty of", "[.| from the date of delivery.]"),
                 ("[Warranty coverage|Coverage] on the {s} [runs|lasts] for", " from the date of purchase."),
                 ("The {s} is under warranty for", "[ from delivery.| after purchase.|.]"),
                 ("For the {s}, the warranty period is", "."),
                 ("The {s} [carries|includes] a warranty [of|lasting]", "[.|, parts and labour included.]")],
    "plan_price": [("{s} is", " per month."), ("{s} [costs|runs]", " a month."), ("The monthly price of {s} is", "."),
                   ("[Subscribing to|Signing up for] {s} costs", " [per month|a month|monthly]."),
                   ("{s} [is billed at|comes to]", " [per month|each month]."),
                   ("[The|Our] {s} plan is", " [per month|a month], cancel anytime.")],
    "sla": [("On {s}, we [respond to|answer] [tickets|support requests] within", "."),
            ("{s} [includes|comes with] a [guaranteed |]support response time of", "."),
            ("The support SLA for {s} is", "[.| for a first response.]"),
            ("[With|Under] {s}, you get a first response within", "[.| on any ticket.]"),
            ("[Tickets|Support tickets] from {s} customers are answered within", ".")],
    "clips": [("{s} keeps [camera clips|recorded clips|motion clips] for", "."),
              ("Clip history on {s} is", "[.| of recordings.]"),
              ("[With|On] {s}, [recorded footage|your camera footage] is stored for", "[.| in the cloud.]"),
              ("{s} [includes|gives you]", " of cloud clip history.")],
    "refund_window": [("Our refund window is", " from delivery."), ("You can request a full refund within", " of delivery."),
                      ("[Full refunds|Refunds] are available for", " after the item is delivered."),
                      ("The refund period is", ", counted from the delivery date."),
                      ("[Any|Every] order can be refunded within", " of delivery.")],
    "refund_processing": [("Once approved, refunds [reach|show up on] your [card|statement] within", "."),
                          ("Refunds take", " to process after we receive the item."),
                          ("[Expect|Allow] the refund to [land|post] within", "[.| of approval.]"),
                          ("The refund [is processed|goes through] within", " of the return arriving.")],
    "rma_validity": [("An RMA number [stays|is] valid for", ", so please ship the item before it expires."),
                     ("Your RMA [expires|lapses] after", "."),
                     ("Return authorizations are valid for", " from the date they're issued."),
                     ("[Each|An] RMA is good for", "[.| after it's issued.]")],
    "restocking_fee": [("A restocking fee of", " applies to opened items that aren't defective."),
                       ("Opened, non-defective returns carry a restocking fee of", "."),
                       ("The restocking fee is", " of the purchase price for opened items."),
                       ("For opened items we deduct a restocking fee of", "[.| unless the item is faulty.]")],
    "data_retention": [("After an account is closed, we [keep|retain] your data for", " and then delete it."),
                       ("[Account data|Your data] is deleted", " after the account is closed."),
                       ("We retain account records for", " after closure, then erase them."),
                       ("Data from a closed account is kept for", " before permanent deletion.")],
    "privacy_response": [("We [complete|answer] [data|privacy] requests within", "."),
                         ("Privacy requests are [completed|fulfilled] within", " of verification."),
                         ("A data export or deletion request is handled within", "."),
                         ("[Our privacy team|The privacy team] responds within", "[.| of your request.]")],
    "billing_day": [("Subscriptions [are billed|renew] on", " of each month."), ("Your plan [is charged|bills] on", " of every month."),
                    ("The billing cycle starts on", " of the month."), ("We charge subscriptions on", " of each month.")],
    "late_fee": [("[If a payment isn't fixed in time, a|A] late fee of", " is added to the next invoice."),
                 ("The late fee is", "."), ("Missed payments incur a late fee of", "."),
                 ("[We add|There's] a late fee of", " when a payment stays overdue.")],
    "grace_period": [("You have a grace period of", " to update a failed payment."),
                     ("After a failed payment, [the account stays active|service continues] for", " before suspension."),
                     ("The payment grace period is", "."), ("[Failed|Declined] payments get a grace period of", ".")],
    "standard_shipping": [("Standard shipping takes", "."), ("[Orders with standard shipping [arrive|usually arrive]|With standard shipping, orders arrive] in", "."),
                          ("Standard delivery [is|takes]", " from dispatch."), ("Our standard shipping time is", ".")],
    "express_shipping": [("Express shipping [takes|arrives in]", "."), ("[Orders with express shipping [arrive|show up]|With express shipping, orders arrive] in", "."),
                         ("Express delivery takes", "[.| from dispatch.]"), ("Our express shipping time is", ".")],
    "express_cost": [("Express shipping costs", " per order."), ("[Upgrading to|Adding] express shipping is", "."),
                     ("The express shipping fee is", "[.| per order.]"), ("Express delivery [costs|is] a flat", ".")],
    "free_shipping_threshold": [("Shipping is free on orders over", "."),
                                ("[We offer|You get] free standard shipping on orders over", "."),
                                ("Standard shipping is free above", "[.| per order.]"),
                                ("Orders over", " ship for free.")],
    "annual_discount": [("[Paying|If you pay] annually [saves|gets] you", " off the monthly price."),
                        ("Annual billing [comes with|gives] a discount of", "."),
                        ("The annual plan discount is", "."), ("Switching to yearly billing saves", ".")],
    "price_match": [("We match lower prices within", " of purchase."), ("[Our|The] price-match window is", "."),
                    ("You can request a price match within", " of buying."),
                    ("Price matching is available for", " after purchase.")],
}

QUESTIONS: dict[str, list[str]] = {
    "price": ["How much is the {s}?", "What does the {s} cost[| these days| right now]?", "what's the price [of|on] the {s}",
              "Could you tell me the price of the {s}?", "How much would the {s} set me back?",
              "[I'm thinking of buying|I'm looking at|I'm considering] the {s}. How much is it?",
              "Is the {s} expensive? What does it cost?", "price for the {s}?", "What do you charge for the {s}?"],
    "sku": ["What's the SKU for the {s}?", "What model number is the {s}?", "Which SKU should I look for if I want the {s}?",
            "I need the part number for the {s} for my records.", "what sku is the {s}",
            "Can you give me the model number of the {s}? [The label is worn off.|I can't find the box.]"],
    "warranty": ["How long is the warranty on the {s}?", "[Is|Is my] {s} still covered? How long does the warranty last?",
                 "What warranty does the {s} come with?", "how many months of warranty on the {s}",
                 "For how long is the {s} under warranty?", "What's the warranty period for the {s}?"],
    "plan_price": ["How much is {s} per month?", "What does {s} cost monthly?", "what's the monthly price of {s}",
                   "If I [sign up for|switch to] {s}, what will I pay each month?", "How much is the {s} plan?",
                   "What's the monthly fee for {s}?"],
    "sla": ["How fast does support respond on {s}?", "What's the response time for tickets on {s}?",
            "If I'm on {s}, how quickly will someone get back to me?", "what is the SLA for {s}",
            "How long do {s} customers wait for a support reply?"],
    "clips": ["How long does {s} keep my camera clips?", "How many days of footage do I get with {s}?",
              "What's the clip history on {s}?", "How long are recordings stored on {s}?"],
    "refund_window": ["How long do I have to ask for a refund?", "What's your refund window?",
                      "Until when can I get my money back?", "How many days do I have to return something for a refund?",
                      "is there a time limit on refunds", "What's the deadline for a refund?"],
    "refund_processing": ["How long until I see the money?", "When will the refund show up?",
                          "how long does the refund take", "How long does it take to process a refund?"],
    "rma_validity": ["How long is the RMA number valid?", "When does the return authorization expire?",
                     "how long do I have to ship it back with the RMA", "Does the RMA expire?"],
    "restocking_fee": ["Is there a restocking fee?", "I opened it already. Will you charge a restocking fee?",
                       "how much is the restocking fee", "Do you deduct anything for opened items?"],
    "data_retention": ["How long do you keep my data after I close the account?", "When is my data deleted after closing?",
                       "what happens to my data if I cancel, how long do you keep it",
                       "How long do you retain account data after closure?"],
    "privacy_response": ["How long does a data request take?", "When will I get my data export?",
                         "how long until my data is deleted after I ask", "How quickly do you handle privacy requests?"],
    "billing_day": ["When am I billed each month?", "What day of the month do you charge me?",
                    "which day does the subscription renew", "On what date is my plan charged?"],
    "late_fee": ["Is there a late fee?", "What happens if I pay late? Is there a fee?", "how much is the late fee",
                 "Do you charge extra for a late payment?"],
    "grace_period": ["How long do I have to fix a failed payment?", "Is there a grace period if my card is declined?",
                     "how long before you suspend my account for non payment", "What's the grace period for payments?"],
    "standard_shipping": ["How long does standard shipping take?", "When will my order arrive with standard shipping?",
                          "how long is regular delivery", "What's the standard delivery time?"],
    "express_shipping": ["How fast is express shipping?", "How long does express delivery take?",
                         "if I pay for express how long does it take", "What's the express shipping time?"],
    "express_cost": ["How much is express shipping?", "What does express delivery cost?", "how much to upgrade to express",
                     "What's the fee for express shipping?"],
    "free_shipping_threshold": ["Do you offer free shipping?", "When is shipping free?", "how much do I need to spend for free shipping",
                                "What's the minimum for free shipping?"],
    "annual_discount": ["Is there a discount if I pay yearly?", "How much do I save with annual billing?",
                        "do you do annual plans cheaper", "What's the discount for paying annually?"],
    "price_match": ["Do you price match?", "I saw it cheaper elsewhere. Can you match the price?",
                    "how long do I have to ask for a price match", "What's your price-match window?"],
}

ELABORATION = {
    "price": ["[Shipping is extra below the free-shipping threshold.|We also run seasonal promotions.|That includes the power adapter and a quick-start guide.]"],
    "sku": ["[You can search that number on our store.|It's printed on the label under the device.|That helps our team find the exact model.]"],
    "warranty": ["[It covers hardware faults, not accidental damage.|Keep your order number handy for any claim.|A warranty claim starts with a quick troubleshooting check.]"],
    "plan_price": ["[You can cancel anytime in the app.|Upgrades are prorated for the current billing cycle.|Taxes may apply depending on your region.]"],
    "sla": ["[Urgent issues can be escalated by the agent.|That's measured from when the ticket is opened.|Chat is usually faster than email.]"],
    "clips": ["[You can download clips before they expire.|Older clips are removed automatically.|Clips are encrypted in storage.]"],
    "refund_window": ["[After that, a warranty claim is the way to go.|Refunds go back to the original payment method.|Keep the original packaging if you can.]"],
    "refund_processing": ["[Your bank may take a little longer to show it.|You'll get an email once it's issued.]"],
    "rma_validity": ["[Please write the RMA number on the box.|The prepaid label comes by email.|If it expires, just ask for a new one.]"],
    "restocking_fee": ["[It's waived for defective items.|Unopened items have no fee.|The fee is deducted from the refund.]"],
    "data_retention": ["[Backups are purged on the same schedule.|You can ask for an export before closing.]"],
    "privacy_response": ["[We'll verify the request by email first.|You'll get a confirmation code at the account email.]"],
    "billing_day": ["[Upgrades are prorated until then.|You'll get an invoice by email each time.]"],
    "late_fee": ["[Updating the card in the app avoids it.|We send reminders before that happens.]"],
    "grace_period": ["[We'll email you reminders during that time.|Cameras keep recording locally meanwhile.]"],
    "standard_shipping": ["[You'll get a tracking number by email.|Delivery times can stretch on holidays.]"],
    "express_shipping": ["[It's available for in-stock items.|Orders placed before noon ship the same day.]"],
    "express_cost": ["[You can add it at checkout.|It's charged once per order.]"],
    "free_shipping_threshold": ["[Below that, standard shipping has a small fee.|The threshold is before tax.]"],
    "annual_discount": ["[You can switch to yearly billing in the app.|It applies to every plan.]"],
    "price_match": ["[Just send us a link to the lower price.|It has to be an authorized retailer.]"],
}

ANSWER_OPENERS = ["", "", "", "Sure! ", "Of course. ", "Good question! ", "Happy to help. ", "Absolutely. ",
                  "Great question. ", "Let me check. ", "One moment... okay. ", "Yes, I can confirm that. ",
                  "Thanks for asking. ", "I just double-checked. ", "Per our policy: "]

_FIRST = ["Maria", "James", "Aisha", "Chen", "Olivia", "Mateo", "Priya", "Liam", "Fatima", "Noah", "Sofia", "Kenji",
          "Amara", "Lucas", "Elena", "Omar", "Hannah", "Diego", "Yuki", "Grace", "Tomasz", "Leila", "Samuel", "Ingrid",
          "Kwame", "Chloe", "Ravi", "Isabel", "Dmitri", "Nadia", "Ethan", "Zara", "Hiro", "Beatriz", "Felix", "Mei",
          "Jonas", "Ayesha", "Carlos", "Freya", "Tariq", "Lucia", "Owen", "Anjali", "Marco", "Sienna", "Emeka", "Julia"]
_LAST = ["Lopez", "Smith", "Khan", "Wang", "Johnson", "Garcia", "Patel", "Murphy", "Ahmed", "Kim", "Rossi", "Tanaka",
         "Okafor", "Silva", "Novak", "Haddad", "Schmidt", "Ramirez", "Sato", "O'Brien", "Kowalski", "Nasser", "Brown",
         "Larsen", "Mensah", "Dubois", "Iyer", "Fernandez", "Volkov", "Karimi", "Walsh", "Ali", "Nakamura", "Costa",
         "Becker", "Chen", "Berg", "Siddiqui", "Morales", "Hansen", "Aziz", "Romero", "Hughes", "Sharma", "Ricci",
         "Taylor", "Eze", "Weber"]
_DOMAINS = ["example.com", "example.net", "example.org", "mail.example.com", "post.example.net", "inbox.example.org"]
_STREETS = ["Maple", "Oak", "Cedar", "Harbor", "Willow", "Elm", "Birch", "Juniper", "Lakeview", "Sunset", "Hillcrest",
            "Ridge", "Meadow", "Orchard", "Pine", "Riverside", "Chestnut", "Aspen", "Foxglove", "Granite"]
_STREET_SUFFIX = ["St", "Street", "Ave", "Avenue", "Rd", "Road", "Lane", "Dr", "Court", "Way", "Blvd"]
_CITIES = [("Port Avery", "OR"), ("Maple Falls", "WA"), ("Brookhaven", "NY"), ("Cedar Point", "OH"), ("Lakemont", "MN"),
           ("Silver Springs", "NV"), ("Fairview", "TX"), ("Glen Ridge", "NJ"), ("Harlow", "CO"), ("Westbury", "MA"),
           ("Kingsford", "MI"), ("Rosedale", "GA"), ("Ashford", "CT"), ("Bayside", "FL"), ("Millbrook", "AL"),
           ("Northgate", "IL"), ("Elmwood", "WI"), ("Stonebridge", "VA")]
_AGENTS = ["Sam", "Alex", "Jordan", "Taylor", "Riley", "Casey", "Morgan", "Jamie", "Avery", "Quinn", "Dana", "Robin"]

# Style wrappers for a customer's opening line.
OPENERS = {
    "terse": ["", "", "hi. ", "hey ", "hello. ", "yo. "],
    "polite": ["[Hello|Hi there|Good morning|Good afternoon|Good evening][,|!] [I hope you're doing well.|I hope you can help me.|thanks for taking my question.|sorry to bother you.] ",
               "[Dear Nimbus support|Hello Nimbus team][,|.] [I'd appreciate your help with something.|I have a quick question.|Thank you in advance.] "],
    "angry": ["[Unbelievable.|Seriously?|I'm really frustrated.|This is the third time I'm contacting you.|I've been on hold forever.|Fix this please.|I'm fed up.] ",
              "[Okay,|Look,|Listen,] [I'm not happy.|this is not okay.|I've had enough.|your service has been awful.] "],
    "chatty": ["[Hey!|Hi hi!|Hello there!|Hiya!] [Long time customer here, haha.|So, funny story.|Okay so I've been putting this off all week.|I just got back from walking the dog and figured I'd finally deal with this.|Hope your day is going better than mine!|My partner told me to just message you, so here I am.] ",
               "[Hi!|Hey there!] [First of all, love your products.|I'm typing this on my phone while the kettle boils.|Bear with me, I'm not very techy.] "],
    "non_native": ["[Hello,|Hello sir,|Good day,|Hi,|Dear support,] ", "[Hello|Hi], [please help me.|I have question.|I need the help.] "],
}

CLOSINGS_USER = {
    "terse": ["ok thx", "thanks", "ok", "got it. thx", "fine", "k thanks"],
    "polite": ["Thank you so much for your help!", "That's very helpful, thank you.", "Wonderful, I appreciate it.",
               "Thanks, that answers everything.", "Perfect, thank you for your patience."],
    "angry": ["Fine. Thanks, I guess.", "Okay. It shouldn't have taken this long.", "Alright. Let's hope it works this time.",
              "Fine.", "Whatever, thanks."],
    "chatty": ["Amazing, thank you! You've been a star.", "Brilliant, thanks a million! Have a lovely day.",
               "Oh that's great, thanks! I'll tell my sister you were super helpful.", "Perfect! Thanks so much, honestly."],
    "non_native": ["Thank you very much for help.", "Ok, thank you, now is clear.", "Thanks a lot, have nice day.",
                   "Ok I understand, thank you."],
}
CLOSINGS_BOT = ["Have a great day!", "Take care!", "If anything else comes up, just reach out.", "Enjoy the rest of your day.",
                "Thanks for being a Nimbus customer!", "Happy to help anytime.", "Have a good one!", "All the best!"]

DIGRESSION_USER = [
    "[Sorry,|Oh,|Random, but] [is it just me or has the weather been wild lately?|my dog just knocked over my coffee, hold on.|I love the little light on the router, by the way.|do you folks work from home too?|I'm also moving next month, so things are hectic.|my kids keep asking why the internet is slow during their games.]",
    "[Haha|Lol|Ah], sorry, [I got distracted|the doorbell rang|my cat walked across the keyboard]. [Where were we?|Okay, I'm back.|Anyway.]",
    "By the way, [is your chat open on weekends?|do you have a community forum?|I saw your ad on a podcast.|my neighbour has the same router and loves it.]",
]
DIGRESSION_BOT = [
    "[Ha,|Oh no,|No worries,] [that sounds hectic!|take your time.|I hope the coffee survived!|glad to hear it!|I completely understand.] [Now, back to your request.|Let's get back to it.|Whenever you're ready, we can continue.]",
    "[No problem at all.|All good!|Happens to the best of us.] [Our chat team is here seven days a week.|Thanks for the kind words.|I'll pass that on to the team.] [Now, where were we?|Back to your question.|]",
]

GREET_BOT = [
    "[Hi|Hello|Hey], [you've reached|welcome to] Nimbus [support|customer care|Home Networks support][.|!] [My name's|I'm] {agent}[, and I'm on it.|. How's your day going?|. Let's sort this out together.|.]",
    "[Good to hear from you!|Thanks for writing in!|Hi, and thanks for your patience!] [I'm|It's] {agent} [on the Nimbus support team|from Nimbus customer care|here at Nimbus][, happy to take a look.|.]",
    "[Hi|Hello|Hey|Hi there|Good day][,| and] thanks for [contacting|reaching out to|getting in touch with] [Nimbus Home Networks|Nimbus support|the Nimbus team][.|!] [I'm|This is|My name is] {agent}[ and I'll be helping you today|, happy to help|].",
    "[Welcome to Nimbus support!|Thanks for your message!|Hello!] {agent} here[, glad to help.|.| from the support team.]",
    "[Hi|Hello], {agent} [from|at] Nimbus Home Networks [here|speaking][.|!]",
]
BRIDGE_BOT = ["[Let me|I'll] [pull up|check|look at] [your account|the details|our records|the order history] [real quick|for you|right now]. ",
              "[Bear with me a second.|Give me just a moment.|One second while I check.] ",
              "[I've got you covered.|We'll get this handled.|You're in the right place.] ",
              "[Thanks for the details.|That helps, thanks.|Appreciate you explaining that.] "]
SORRY_BOT = ["[I'm sorry for the trouble.|I understand how frustrating that is.|I apologize for the hassle.|I'm really sorry about that.|That's not the experience we want for you.] "]

# Intent-specific opening requests. Keys: "*" for everyone, or a style.
REQUESTS: dict[str, dict[str, list[str]]] = {
    "refund": {
        "*": ["[I'd like|I want|I need] [a refund|to get a refund|my money back] for [the|my] {product}[.| please.| I bought recently.]",
              "[Can I|Could I|Is it possible to] return the {product} [for a refund|and get my money back]?",
              "The {product} [isn't what I expected|doesn't fit my needs|turned out to be overkill for my flat], [so I'd like a refund|I want to return it for a refund].",
              "I ordered a {product} ([order|order number] {order}) and [want to cancel it and get refunded|would like a refund]."],
        "terse": ["refund for {product}", "need refund. {product}.", "want my money back for the {product}"],
        "angry": ["I want a refund for this {product} [NOW|immediately|today].", "Your {product} is [garbage|useless|a joke]. Refund me."],
        "non_native": ["I want make refund for {product}, is possible?", "Please I need money back for {product} I buy last week."],
    },
    "return_rma": {
        "*": ["I need to [send back|return] my {product}. [How do I get an RMA?|Can you issue a return authorization?|What's the process?]",
              "[Can you|Could you] [set up|start] a return for the {product}? [It arrived damaged.|Wrong colour was shipped.|I'd like to exchange it.]",
              "My {product} [arrived with a cracked case|is the wrong model|won't power on out of the box] and I want to return it."],
        "terse": ["return {product}. need rma", "rma for {product} pls"],
        "angry": ["The {product} you sent me is [broken|damaged|not what I ordered]. I want to return it."],
        "non_native": ["I need return the {product}, how I get the RMA number?", "The {product} is come broken, I want to send back."],
    },
    "warranty_claim": {
        "*": ["My {product} [stopped working|died|keeps rebooting|won't turn on anymore]. Is it still under warranty?",
              "I'd like to [file|make] a warranty claim for my {product}.",
              "[The|My] {product} [has a dead port|overheats|has a flickering light] and I think the warranty should cover it."],
        "terse": ["{product} dead. warranty?", "warranty claim, {product}"],
        "angry": ["My {product} broke after a few months. This better be covered by your warranty."],
        "non_native": ["My {product} is not working anymore, the warranty is cover this?"],
    },
    "billing_question": {
        "*": ["I [have|got] a question about a charge on my account.", "[Why was I charged twice|Why is my bill higher] this month?",
              "I don't recognise a charge from Nimbus on my statement.", "My payment [failed|was declined] and I'm not sure what happens now."],
        "terse": ["question about my bill", "double charged?", "payment failed. what now"],
        "angry": ["You charged me [twice|the wrong amount|without asking]. Explain.", "Why did my bill go up?! Nobody told me."],
        "non_native": ["I see strange charge on my card from Nimbus, what is this?"],
    },
    "plan_upgrade": {
        "*": ["I'm thinking about upgrading [my plan|from {plan_from}]. What are my options?",
              "[Can I|I'd like to] switch to {plan}? [What does it include?|How much is it?]",
              "I have [a few|several] cameras now and [wonder if|I think] {plan} makes sense."],
        "terse": ["upgrade plan", "switch to {plan}?"],
        "angry": ["Support on my current plan is too slow. What do I have to pay to get real help?"],
        "non_native": ["I want change my plan to better one, {plan} maybe?"],
    },
    "shipping_status": {
        "*": ["Where is my order? [It's been a few days.|I haven't received a tracking number.|The tracking hasn't updated.]",
              "[Can you check|Could you look up] the status of [my order|my {product} order]?",
              "I ordered a {product} and [wondered when it'll arrive|want to know the delivery time]."],
        "terse": ["where is my order", "order status?", "{product} not here yet"],
        "angry": ["My {product} still hasn't arrived. Where is it?", "I paid for this {product} and it's still not here."],
        "non_native": ["My order is not arrive yet, please check where is it."],
    },
    "tech_troubleshooting": {
        "*": ["My {product} [keeps dropping the connection|is really slow in the evenings|won't connect to the app|has a blinking red light].",
              "[I'm having trouble with|Something is wrong with] my {product}. [The Wi-Fi cuts out every hour.|It won't pair.|The app says it's offline.]",
              "[Since the last firmware update|Since yesterday], my {product} [disconnects constantly|won't show up in the app]."],
        "terse": ["{product} not working", "wifi drops. {product}", "{product} offline again"],
        "angry": ["My {product} has been [dropping out|offline] all week and I work from home!"],
        "non_native": ["My {product} is not connect good, internet is go and come.", "The {product} light is red and not working."],
    },
    "privacy_request": {
        "*": ["I'd like [a copy of|to download] all the data you have on me.", "Please delete my account and all my personal data.",
              "[How do I|Can I] request [deletion|an export] of my data?", "I want to know what personal data Nimbus stores about me."],
        "terse": ["delete my data", "data export request"],
        "angry": ["I want ALL my data deleted. Now.", "Why do you even keep my data? Delete it."],
        "non_native": ["Please I want you delete my data and account.", "I want see what data you keep from me."],
    },
    "account_change": {
        "*": ["I need to update [the email|the phone number|the address] on my account.", "[I moved|I've moved house] and need to change my address.",
              "Can you change the contact details on my account?", "I'd like to update my account information."],
        "terse": ["change my email", "update address pls", "new phone number"],
        "angry": ["I've tried to change my details in the app three times and it never saves."],
        "non_native": ["I need change my email in account, please.", "I move to new house, please change address."],
    },
    "product_inquiry": {
        "*": ["I'm [interested in|looking at|curious about] the {product}. [A few questions.|Can you tell me more?|Is it any good?]",
              "[Thinking about buying|About to order] the {product}, [but I have some questions first.|what should I know?]",
              "[Does the {product} work in a big house?|Would the {product} suit a small apartment?] [I have some other questions too.|Also a couple of questions.]"],
        "terse": ["question about {product}", "{product} - few qs"],
        "angry": ["Your website doesn't say anything useful about the {product}. I need basic info."],
        "non_native": ["I want buy {product}, please tell me some information."],
    },
}
ACK_BOT: dict[str, list[str]] = {
    "refund": ["[I can help with that refund.|Let's get that refund sorted.|I can definitely look into a refund for you.]"],
    "return_rma": ["[I can set up that return for you.|Let's get a return started.|No problem, I'll issue a return authorization.]"],
    "warranty_claim": ["[Let's check your warranty.|I'm sorry it's acting up; let's look at the warranty.|I can start a warranty claim for you.]"],
    "billing_question": ["[Let me look into that charge.|I'll check your billing.|Happy to go through the billing with you.]"],
    "plan_upgrade": ["[Happy to walk you through the plans.|Great, let's find the right plan.|Upgrading is easy, let me explain.]"],
    "shipping_status": ["[Let me check on that order.|I'll look up the shipment.|I can track that down for you.]"],
    "tech_troubleshooting": ["[Let's get that fixed.|Sorry it's misbehaving; let's troubleshoot.|I can help you sort that out.]"],
    "privacy_request": ["[I can help with your data request.|Absolutely, privacy requests are handled by our team.|Of course, let's start that request.]"],
    "account_change": ["[I can update that for you.|Sure, let's update your details.|No problem, changing details is quick.]"],
    "product_inquiry": ["[Happy to answer your questions.|Great choice to look at.|Sure, ask away.]"],
}

ASKS = {
    "identify": "[Could you share|Can I get|May I have|Please send me] [your order number and the name on the account|the order number and your full name|your full name and order number][, please|]?",
    "email": "[What's the email on the account?|Which email address is the account under?|Could you confirm the email on file?]",
    "address": "[What's the shipping address on the order?|Can you confirm the delivery address?|Which address should we use?]",
    "phone": "[What's the best phone number to reach you?|Could you share a callback number?|Which phone number should we have on file?]",
    "card": "[Which card was charged? Just the last four digits, please.|Can you tell me the last four digits of the card?]",
}
IDENTIFY_USER = {
    "*": ["[Sure,|Yes,|Of course.|Here you go:] [my name is|I'm|this is|it's] {name} and the order is {order}.",
          "{name}, order {order}.", "Name: {name}. Order: {order}.", "Order number {order}, name {name}.",
          "[It's under|The account is under] {name}. Order {order}."],
    "terse": ["{name}. {order}", "{order}, {name}"],
    "non_native": ["My name is {name}, order number is {order}.", "I am {name}, the order is {order}."],
    "chatty": ["Oh sure, [let me find it|one sec, digging through my emails]... okay, it's {order}, and I'm {name}."],
    "angry": ["{name}. Order {order}. [It's all in my previous emails.|Again.|You should already have this.]"],
}
IDENTIFY_BOT = ["Thanks, {first}[.|!] [I've pulled up|I found|I can see] order {order}[ for the {product}|].",
                "[Got it|Perfect|Thank you], {first}. Order {order} [is on my screen|is right here][.| now.]",
                "[Thanks for confirming|Thank you], {first}. [I have your order up.|I found the order.]"]
EMAIL_USER = ["[It's|Sure, it's|The email is|Use] {email}[.|]", "{email}", "[Email is|My email:] {email}"]
EMAIL_BOT = ["[Got it|Thanks]. [I'll send a confirmation to|A confirmation will go to] {email}.",
             "Thanks, I've [verified|matched] the account for {email}."]
ADDRESS_USER = ["[It's|Ship it to|The address is] {address}.", "{address}", "[I'm at|My new address is] {address}."]
ADDRESS_BOT = ["Thanks, I have {address} [on file now|as the delivery address].", "[Updated|Done]: {address} is [now on the account|saved]."]
PHONE_USER = ["{phone}[ works|, that's my cell|]", "[You can reach me at|Call me on] {phone}.", "[It's|Number is] {phone}"]
PHONE_BOT = ["[Perfect|Great], [we'll call|we can reach you at] {phone} if needed.", "Saved {phone} as your contact number."]
CARD_USER = ["[It's the|The] card ending in {card}.", "card ending in {card}", "[The one ending|Ending] in {card}."]
CARD_BOT = ["Thanks. I can see the charge on the card ending in {card}.", "[Got it|Okay], the card ending in {card} [is the one on file|matches our records]."]
TROUBLE_USER = ["[What should I try?|Any ideas?|What do I do?]", "[I already restarted it.|I tried turning it off and on.] [Still broken.|No luck.]",
                "[The light is|It's showing] [orange|blinking blue|solid red] now."]
TROUBLE_BOT = ["[Let's try a few things.|First, a quick fix:] [Unplug the {product} for 30 seconds and plug it back in.|Update the firmware from the Nimbus app under Settings.|Move the {product} away from the microwave and thick walls.] [Let me know if that helps.|Tell me what the light does after that.]",
               "[Thanks for trying that.|Okay.] [Please hold the reset button for 10 seconds to factory reset the {product}, then set it up again in the app.|Check that the firmware is current; older firmware causes dropouts.] [If it's still failing, I'll escalate the ticket.|If that doesn't work, we'll escalate to our technical team.]"]
HEDGES = {
    "terse": ["", " ?", " pls"],
    "polite": [" Thank you!", " I'd appreciate knowing.", " Sorry if that's a silly question.", " Just want to be sure."],
    "angry": [" And don't give me the runaround.", " I want a straight answer.", " Nobody could tell me last time."],
    "chatty": [" My brother-in-law swears it's different, haha.", " Asking for a friend. Okay, asking for me.",
               " I read something on a forum but who knows.", " Sorry, so many questions!"],
    "non_native": [" Please explain me.", " I not understand the website.", " Thank you for patient."],
}
FACT_FOLLOW = {"*": ["[Also,|And|One more thing:|Another question:|Oh, and] ", "", ""], "terse": ["", "also "],
               "angry": ["[And|Also] ", ""], "non_native": ["Also ", "And ", ""], "chatty": ["Ooh, also, ", "While I have you, ", ""]}
RECALL = {
    "ORDER_ID": ["[Just to confirm|To recap|For your records], [this is all logged under|everything is noted on] order {order_rc}.",
                 "[I've added a note to|I've updated] order {order_rc}.", "[Your reference is|Keep this handy:] order {order_rc}."],
    "PRODUCT": ["[I hope|Hope] your {product_rc} [behaves from now on|works great from here|serves you well].",
                "[Enjoy|Good luck with] your {product_rc}!", "[Thanks for choosing|Have fun setting up] your {product_rc}."],
    "NAME": ["[Thanks for your patience|Thanks for reaching out|Take care|It was a pleasure], {name_rc}.",
             "[Thank you|Cheers], {name_rc}!"],
}


# =========================================================================== text building
_ALT = re.compile(r"\[([^\[\]]*)\]")
_FMT = string.Formatter()


def expand(template: str, rng: Random) -> str:
    """Resolve ``[a|b|c]`` alternations (innermost first, so they nest)."""
    while True:
        m = _ALT.search(template)
        if m is None:
            return template
        template = template[:m.start()] + rng.choice(m.group(1).split("|")) + template[m.end():]


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
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_KEYBOARD) + word[i + 1:]


def _userize(text: str, style: str, rng: Random) -> str:
    rate = TYPO_RATE[style]
    parts = re.split(r"(\s+)", text)
    parts = [_typo(p, rng) if p and not p.isspace() and rng.random() < rate else p for p in parts]
    out = "".join(parts)
    if style == "terse" or (style == "non_native" and rng.random() < 0.2):
        out = out.lower()
    return out


class _Conv:
    """Builds one conversation, recording offsets of tagged slots."""

    def __init__(self, rng: Random, style: str) -> None:
        self.rng, self.style = rng, style
        self.turns: list[dict[str, str]] = []
        self.pii: list[dict[str, Any]] = []
        self.fact_spans: list[dict[str, Any]] = []
        self.given: dict[str, tuple[int, str]] = {}   # detail type -> (turn, text), user-given
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
                self.recall = {"turn": t, "start": s, "end": e, "type": base, "text": tag.text,
                               "source_turn": self.given[base][0]}


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
    user: Callable[[_Conv], tuple[str, dict[str, Any]]]
    bot: Callable[[_Conv], tuple[str, dict[str, Any]]]
    ask: str = ""


def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}").replace("[", "(").replace("]", ")")


def _fact_ex(fact: Fact, rng: Random, style: str) -> _Ex:
    def user(c: _Conv) -> tuple[str, dict[str, Any]]:
        lead = expand(_pick(FACT_FOLLOW, style, rng), rng)
        q = question(fact, rng)
        if lead and not lead.endswith(": ") and q[:2] not in ("I ", "I'") and q[1:2].islower():
            q = q[0].lower() + q[1:]
        hedge = rng.choice(HEDGES[style]) if rng.random() < 0.3 else ""
        return lead + _esc(q) + hedge, {}

    def bot(c: _Conv) -> tuple[str, dict[str, Any]]:
        prefix, suffix = statement(fact, rng)
        elab = " " + rng.choice(ELABORATION[fact.attribute]) if rng.random() < 0.4 else ""
        return (rng.choice(ANSWER_OPENERS) + _esc(prefix) + " {v}" + _esc(suffix) + elab,
                {"v": Tag(fact.value, fact=fact.fact_id)})
    return _Ex(user, bot)


def _simple_ex(user_bank: Any, bot_bank: list[str], rng: Random, style: str, ask: str = "") -> _Ex:
    return _Ex(lambda c: (_pick(user_bank, style, rng), {}), lambda c: (rng.choice(bot_bank), {}), ask)


def _intent_facts(intent: str, kb: KnowledgeBase, product: dict, plan: dict, rng: Random) -> tuple[list[str], list[str]]:
    """(required fact ids, optional fact ids) for a conversation."""
    sku = product["sku"]
    pf = lambda a: f"product.{sku}.{a}"  # noqa: E731
    pl = lambda a: f"plan.{plan['key']}.{a}"  # noqa: E731
    other_plan = rng.choice([p for p in kb.plans if p["key"] != plan["key"]])["key"]
    table = {
        "refund": (["policy.refund_window"], ["policy.refund_processing", "policy.restocking_fee", "policy.price_match", pf("price")]),
        "return_rma": (["policy.rma_validity"], ["policy.restocking_fee", "policy.refund_processing", "policy.standard_shipping", pf("sku")]),
        "warranty_claim": ([pf("warranty")], [pf("sku"), "policy.rma_validity", pl("sla")]),
        "billing_question": (["policy.billing_day"], ["policy.late_fee", "policy.grace_period", pl("plan_price"), "policy.annual_discount"]),
        "plan_upgrade": ([pl("plan_price")], [pl("sla"), pl("clips"), "policy.annual_discount", f"plan.{other_plan}.plan_price", "policy.billing_day"]),
        "shipping_status": ([rng.choice(["policy.standard_shipping", "policy.express_shipping"])],
                            ["policy.express_cost", "policy.free_shipping_threshold", pf("price")]),
        "tech_troubleshooting": ([], [pf("sku"), pl("sla"), pf("warranty")]),
        "privacy_request": (["policy.privacy_response"], ["policy.data_retention", pl("clips")]),
        "account_change": ([], ["policy.billing_day", pl("sla"), "policy.data_retention"]),
        "product_inquiry": ([pf("price")], [pf("sku"), pf("warranty"), "policy.free_shipping_threshold", "policy.price_match",
                                            "policy.standard_shipping"]),
    }
    return table[intent]


def _persona(rng: Random, kb: KnowledgeBase) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    name = f"{first} {last}"
    sep = rng.choice([".", "_", ""])
    local = rng.choice([f"{first}{sep}{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}",
                        f"{last}{sep}{first[0]}{rng.randint(10, 999)}"]).lower().replace("'", "")
    email = f"{local}@{rng.choice(_DOMAINS)}"
    area = rng.randint(201, 989)
    line = rng.randint(100, 199)
    phone = rng.choice([f"({area}) 555-0{line}", f"{area}-555-0{line}", f"+1 {area} 555 0{line}", f"{area}.555.0{line}"])
    city, state = rng.choice(_CITIES)
    address = f"{rng.randint(3, 9899)} {rng.choice(_STREETS)} {rng.choice(_STREET_SUFFIX)}, {city}, {state} {rng.randint(10000, 99950)}"
    order = f"ORD-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    card = f"{rng.randint(0, 9999):04d}"
    return {"name": name, "first": first, "email": email, "phone": phone, "address": address, "order": order, "card": card}


def _conversation(cid: str, split: str, rng: Random, kb: KnowledgeBase,
                  coverage: Counter | None = None) -> dict[str, Any]:
    intent = rng.choice(INTENTS)
    style = rng.choice(STYLES)
    product = rng.choice(kb.products)
    plan = rng.choice(kb.plans)
    per = _persona(rng, kb)
    c = _Conv(rng, style)
    plan_from = rng.choice([p for p in kb.plans if p["key"] != plan["key"]])
    c.slots = {
        "name": Tag(per["name"], pii="NAME", detail="NAME"), "first": Tag(per["first"], pii="NAME"),
        "email": Tag(per["email"], pii="EMAIL"), "phone": Tag(per["phone"], pii="PHONE"),
        "address": Tag(per["address"], pii="ADDRESS"), "order": Tag(per["order"], pii="ORDER_ID", detail="ORDER_ID"),
        "card": Tag(per["card"], pii="CARD"), "product": Tag(product["name"], detail="PRODUCT"),
        "plan": plan["name"], "plan_from": plan_from["name"], "agent": rng.choice(_AGENTS),
        "name_rc": Tag(per["name"], pii="NAME", detail="NAME@recall"),
        "order_rc": Tag(per["order"], pii="ORDER_ID", detail="ORDER_ID@recall"),
        "product_rc": Tag(product["name"], detail="PRODUCT@recall"),
    }

    # --- opening exchange
    def open_user(cc: _Conv) -> tuple[str, dict]:
        return rng.choice(OPENERS[style]) + _pick(REQUESTS[intent], style, rng), {}

    def open_bot(cc: _Conv) -> tuple[str, dict]:
        greet = rng.choice(GREET_BOT) if rng.random() < 0.8 else ""
        complaint = intent in ("refund", "return_rma", "warranty_claim", "billing_question", "shipping_status",
                               "tech_troubleshooting")
        sorry = rng.choice(SORRY_BOT) if style == "angry" or (complaint and rng.random() < 0.3) else ""
        bridge = rng.choice(BRIDGE_BOT) if rng.random() < 0.35 else ""
        return f"{greet} {sorry}{rng.choice(ACK_BOT[intent])} {bridge}", {}
    exs: list[_Ex] = [_Ex(open_user, open_bot)]

    # --- identification (name + order id) for most intents
    middle: list[_Ex] = []
    if intent not in ("product_inquiry",) and rng.random() < 0.8:
        middle.append(_simple_ex(IDENTIFY_USER, IDENTIFY_BOT, rng, style, ASKS["identify"]))
    required, optional = _intent_facts(intent, kb, product, plan, rng)
    k_opt = rng.randint(0 if required else 1, min(2, len(optional)))
    cov = coverage if coverage is not None else Counter()
    ranked = sorted(optional, key=lambda f: (cov[f] + 40 * rng.random(), f))  # favour rarely stated facts
    facts = list(required) + ranked[:k_opt]
    fact_exs = [_fact_ex(kb.fact(f), rng, style) for f in facts]
    extra: list[_Ex] = []
    if intent == "tech_troubleshooting":
        extra.append(_simple_ex(TROUBLE_USER, TROUBLE_BOT, rng, style))
        if rng.random() < 0.5:
            extra.append(_simple_ex(TROUBLE_USER, TROUBLE_BOT, rng, style))
    pii_pool = {"privacy_request": ["email"], "account_change": ["address", "phone", "email"], "shipping_status": ["address"],
                "billing_question": ["card"], "refund": ["card", "email"], "warranty_claim": ["address", "phone"]}.get(intent, ["email", "phone"])
    n_pii = 1 if intent in ("privacy_request", "account_change", "billing_question", "shipping_status") else rng.randint(0, 1)
    banks = {"email": (EMAIL_USER, EMAIL_BOT), "address": (ADDRESS_USER, ADDRESS_BOT), "phone": (PHONE_USER, PHONE_BOT),
             "card": (CARD_USER, CARD_BOT)}
    for kind in rng.sample(pii_pool, k=min(n_pii + (intent == "account_change" and rng.random() < 0.5), len(pii_pool))):
        ub, bb = banks[kind]
        extra.append(_simple_ex(ub, bb, rng, style, ASKS[kind]))
    body = extra + fact_exs
    if intent == "tech_troubleshooting":
        body = extra[:1] + fact_exs + extra[1:]
    else:
        rng.shuffle(body)
    middle += body
    if style == "chatty" and rng.random() < 0.7 or rng.random() < 0.08:
        middle.insert(rng.randint(1, len(middle)) if middle else 0, _simple_ex(DIGRESSION_USER, DIGRESSION_BOT, rng, style))
    max_middle = min(MAX_TURNS // 2 - 2, rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
    if len(middle) > max_middle:   # keep required facts, drop optional extras from the end
        must = {id(e) for e in fact_exs[:len(required)]} | {id(middle[0])}
        rest = [id(e) for e in fact_exs if id(e) not in must] + [id(e) for e in middle if id(e) not in must]
        keep = must | set(rest[: max(0, max_middle - len(must))])
        middle = [e for e in middle if id(e) in keep]
    exs += middle

    # --- closing with a recall of a user-given detail
    def close_user(cc: _Conv) -> tuple[str, dict]:
        return _pick(CLOSINGS_USER, style, rng), {}

    def close_bot(cc: _Conv) -> tuple[str, dict]:
        t_now = len(cc.turns)
        options = sorted(d for d, (t, _) in cc.given.items() if t_now - t >= 3)
        parts = []
        if options and rng.random() < 0.9:
            parts.append(rng.choice(RECALL[rng.choice(options)]))
        parts.append(rng.choice(CLOSINGS_BOT))
        return " ".join(parts), {}
    if middle and middle[-1] in fact_exs and rng.random() < 0.12:
        pass  # ends on the last answer (short conversations, no recall)
    else:
        exs.append(_Ex(close_user, close_bot))

    for i, ex in enumerate(exs):
        ut, us = ex.user(c)
        c.say("user", ut, **us)
        bt, bs = ex.bot(c)
        if i + 1 < len(exs) and exs[i + 1].ask:
            bt = bt + " " + exs[i + 1].ask
        elif i + 1 < len(exs) and rng.random() < 0.3:
            bt = bt + " " + rng.choice(["Anything else?", "What else can I help with?", "Anything else I can check?",
                                        "Is there anything else?"])
        c.say("assistant", bt, **bs)
    if len(c.turns) < MAX_TURNS and rng.random() < 0.15:
        c.say("user", rng.choice(["bye", "Bye!", "Thanks again, bye.", "cheers", "👍", "ok bye"]))

    facts_quoted = list(dict.fromkeys(s["fact_id"] for s in c.fact_spans))
    if coverage is not None and split == "train":
        coverage.update(s["fact_id"] for s in c.fact_spans)
    meta: dict[str, Any] = {"intent": intent, "style": style, "split": split, "facts": facts_quoted, "pii": c.pii,
                            "fact_spans": c.fact_spans, "product": product["name"], "plan": plan["name"]}
    if c.recall:
        meta["recall"] = c.recall
    return {"conversation_id": cid, "turns": c.turns, "metadata": meta}


def generate_conversations(kb: KnowledgeBase, counts: dict[str, int], seed: int = 0,
                           progress: bool = True) -> list[dict[str, Any]]:
    """Conversations for each split (``counts``: split -> number), ids unique across splits."""
    from tqdm.auto import tqdm

    rng = Random(f"conversations:{seed}")
    splits = [s for s in SPLITS for _ in range(counts.get(s, 0))]
    rng.shuffle(splits)
    out = []
    coverage: Counter = Counter()
    for i, split in enumerate(tqdm(splits, desc="conversations", disable=not progress, leave=False)):
        out.append(_conversation(f"conv-{i:05d}", split, Random(f"{seed}:{i}"), kb, coverage))
    return out


# =========================================================================== help articles
_ARTICLE_TITLES = {
    "product": ["{s}: price, model number and warranty", "All about the {s}", "{s} - quick facts", "Buying the {s}",
                "{s} product sheet"],
    "plan": ["Nimbus support plans compared", "Which Nimbus plan is right for you?", "Plans and support response times",
             "Cloud clip history by plan"],
    "policy": ["Refunds, returns and RMAs", "Billing and payments", "Shipping and delivery", "Your privacy and your data",
               "Returns policy at a glance", "Paying for Nimbus plans"],
}
_POLICY_GROUPS = {
    "Refunds, returns and RMAs": ["refund_window", "refund_processing", "rma_validity", "restocking_fee", "price_match"],
    "Returns policy at a glance": ["refund_window", "rma_validity", "restocking_fee"],
    "Billing and payments": ["billing_day", "late_fee", "grace_period", "annual_discount"],
    "Paying for Nimbus plans": ["billing_day", "annual_discount", "late_fee"],
    "Shipping and delivery": ["standard_shipping", "express_shipping", "express_cost", "free_shipping_threshold"],
    "Your privacy and your data": ["privacy_response", "data_retention"],
}
_ARTICLE_LEADS = ["", "", "Good to know: ", "Note: ", "In short: ", "Quick answer: ", "FAQ. "]


def _fact_sentence(fact: Fact, rng: Random) -> str:
    prefix, suffix = statement(fact, rng)
    return f"{prefix} {fact.value}{suffix}"


def help_articles(kb: KnowledgeBase, rng: Random, n: int) -> list[dict[str, Any]]:
    """``n`` short help-centre paragraphs restating facts in varied wording.

    Each is ``{"article_id", "text", "facts"}``; topics cycle over products, plans and
    policy groups so every fact is restated.
    """
    if n < 1:
        raise ValueError(f"n (number of help articles) must be >= 1; found {n}")
    topics: list[tuple[str, Any]] = [("product", p) for p in kb.products] + [("plan", None)] + \
        [("policy", t) for t in _POLICY_GROUPS]
    out = []
    for i in range(n):
        group, obj = topics[i % len(topics)]
        if group == "product":
            title = rng.choice(_ARTICLE_TITLES["product"]).replace("{s}", obj["name"])
            facts = [kb.fact(f"product.{obj['sku']}.{a}") for a in ("price", "sku", "warranty")]
        elif group == "plan":
            title = rng.choice(_ARTICLE_TITLES["plan"])
            facts = [kb.fact(f"plan.{p['key']}.{a}") for p in kb.plans for a in ("plan_price", "sla", "clips")]
            facts = rng.sample(facts, k=rng.randint(5, len(facts)))
        else:
            title = obj
            facts = [kb.fact(f"policy.{a}") for a in _POLICY_GROUPS[obj]]
        rng.shuffle(facts)
        sentences = [_fact_sentence(f, rng) for f in facts]
        if group == "policy" and rng.random() < 0.6:
            sentences.insert(rng.randint(0, len(sentences)), rng.choice(kb.rules))
        text = f"{title}\n{rng.choice(_ARTICLE_LEADS)}{' '.join(sentences)}"
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
    sentences = [_fact_sentence(fact, rng)]
    same_subject = [f for f in kb.facts if f.subject == fact.subject and f.kind != fact.kind
                    and f.fact_id != fact.fact_id and (f.group != "policy" or f.attribute in _related(fact))]
    if same_subject and rng.random() < 0.6:
        sentences.append(_fact_sentence(rng.choice(same_subject), rng))
        rng.shuffle(sentences)
    return " ".join(sentences)


def _related(fact: Fact) -> list[str]:
    for attrs in _POLICY_GROUPS.values():
        if fact.attribute in attrs:
            return attrs
    return []


def task_items(kb: KnowledgeBase, convs: list[dict[str, Any]], rng: Random, n_closed_book: int = 400,
               n_grounded: int = 400, n_retention: int = 400) -> list[dict[str, Any]]:
    """Multiple-choice items (4 choices, leading space, context ends where the answer goes).

    Closed-book and grounded items come half from task-split conversations (the dialogue up
    to the point where the assistant quotes a figure) and half from question templates;
    retention items end where the assistant recalls a detail the user gave earlier.
    """
    task_convs = [c for c in convs if c["metadata"].get("split") == "task"]
    # candidate (fact, context-without-policy) pairs from held-out conversations
    conv_cands: list[tuple[Fact, str, str]] = []
    for c in task_convs:
        for sp in c["metadata"]["fact_spans"]:
            fact = kb.fact(sp["fact_id"])
            text = c["turns"][sp["turn"]]["text"]
            if sp["start"] == 0 or text[sp["start"] - 1] != " ":
                continue
            history = c["turns"][max(0, sp["turn"] - 5):sp["turn"]]
            ctx = format_conversation(history) + "Assistant: " + text[:sp["start"]].rstrip()
            if fact.value in ctx:
                continue
            conv_cands.append((fact, ctx, c["conversation_id"]))
    rng.shuffle(conv_cands)

    def templated(fact: Fact) -> str:
        prefix, _ = statement(fact, rng)
        q = question(fact, rng)
        return format_conversation([{"role": "user", "text": q}]) + "Assistant: " + rng.choice(ANSWER_OPENERS) + prefix

    items: list[dict[str, Any]] = []

    def policy_items(task: str, n: int, offset: int) -> None:
        made = 0
        n_conv = min(n // 2, len(conv_cands))
        cands = conv_cands[offset:offset + n_conv] if offset + n_conv <= len(conv_cands) else conv_cands[:n_conv]
        plan = [(f, ctx, cid) for f, ctx, cid in cands]
        order = list(kb.facts)
        j = 0
        while len(plan) < n:
            fact = order[j % len(order)]
            j += 1
            if j % len(order) == 0:
                rng.shuffle(order)
            plan.append((fact, templated(fact), None))
        for fact, ctx, cid in plan:
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
            prefix = "cb" if task == "policy_closed_book" else "gr"
            items.append({"item_id": f"{prefix}-{made:04d}", "task": task, "context": ctx, "choices": choices,
                          "answer": answer, "metadata": meta})
            made += 1

    policy_items("policy_closed_book", n_closed_book, 0)
    policy_items("policy_grounded", n_grounded, n_closed_book // 2)

    # retention probes
    pools = {"ORDER_ID": sorted({p["text"] for c in convs for p in c["metadata"]["pii"] if p["type"] == "ORDER_ID"}),
             "NAME": sorted({c["metadata"]["recall"]["text"] for c in convs
                             if c["metadata"].get("recall", {}).get("type") == "NAME"} |
                            {f"{a} {b}" for a in _FIRST[:12] for b in _LAST[:12]}),
             "PRODUCT": [p["name"] for p in kb.products]}
    made = 0
    probes = [c for c in task_convs if c["metadata"].get("recall")]
    rng.shuffle(probes)
    for c in probes:
        if made >= n_retention:
            break
        rc = c["metadata"]["recall"]
        typ = rc["type"]
        text = c["turns"][rc["turn"]]["text"]
        if text[rc["start"] - 1] != " ":
            continue
        ctx = format_conversation(c["turns"][:rc["turn"]]) + "Assistant: " + text[:rc["start"]].rstrip()
        pool = rng.sample(pools[typ], k=min(len(pools[typ]), 40))
        picked = _choices(rc["text"], pool, rng, ctx)
        if picked is None or rc["text"] not in ctx:
            continue
        choices, answer = picked
        items.append({"item_id": f"rt-{made:04d}", "task": "retention", "context": ctx, "choices": choices, "answer": answer,
                      "metadata": {"probe_type": typ, "conversation_id": c["conversation_id"],
                                   "source_turn": rc["source_turn"], "recall_turn": rc["turn"],
                                   "gap_turns": rc["turn"] - rc["source_turn"]}})
        made += 1
    return items


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
            grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
            total[n] += len(grams)
            uniq[n].update(grams)
    out: dict[str, float] = {f"distinct_{n}": round(len(uniq[n]) / total[n], 4) if total[n] else 0.0 for n in ns}
    out["n_texts"] = n_texts
    out["n_tokens"] = n_tokens
    return out


def fact_mention_counts(kb: KnowledgeBase, conversations: Iterable[dict[str, Any]] = (),
                        articles: Iterable[dict[str, Any]] = (), split: str | None = "train") -> dict[str, int]:
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


JARGON = ["RMA", "return authorization", "SLA", "prorated", "restocking fee", "firmware", "ticket", "escalate",
          "refund window", "warranty", "SKU", "model number", "billing cycle", "grace period", "late fee",
          "price match", "express shipping", "standard shipping", "tracking number", "factory reset", "mesh",
          "node", "clip history", "data export", "account closure", "invoice", "subscription", "plan", "upgrade"]


def domain_lexicon(kb: KnowledgeBase) -> dict[str, list[str]]:
    """Terms for per-token damage analysis (product names/SKUs/plans, figures, support jargon) and
    the organisation whose name the scrubber must not read as a person's."""
    product = [p["name"] for p in kb.products] + [p["sku"] for p in kb.products] + [p["name"] for p in kb.plans] + [COMPANY]
    figure = sorted({f.value for f in kb.facts if f.kind != "sku"} | {d for f in kb.facts if f.kind != "sku" for d in f.distractors})
    return {"product": product, "figure": figure, "jargon": list(JARGON), "organisation": [COMPANY]}


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


def write_demo_data(out_dir: str | Path = "data/demo", seed: int = 0, progress: bool = True,
                    **counts: int) -> dict[str, Any]:
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

    (out / "knowledge_base.json").write_text(json.dumps(kb.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_jsonl(out / "conversations.jsonl", convs)
    _write_jsonl(out / "help_articles.jsonl", arts)
    _write_jsonl(out / "task_items.jsonl", items)
    (out / "domain_lexicon.json").write_text(json.dumps(domain_lexicon(kb), indent=1) + "\n", encoding="utf-8")

    train_counts = fact_mention_counts(kb, convs, split="train")
    with_articles = fact_mention_counts(kb, convs, arts, split="train")
    sample = [t["text"] for c in convs[:500] for t in c["turns"]]
    files = ("knowledge_base.json", "conversations.jsonl", "help_articles.jsonl", "task_items.jsonl",
             "domain_lexicon.json")
    turns = [len(c["turns"]) for c in convs]
    return {
        "out_dir": str(out), "seed": seed, "n_facts": len(kb.facts), "n_products": len(kb.products), "n_plans": len(kb.plans),
        "conversations": len(convs),
        "splits": dict(sorted(Counter(c["metadata"]["split"] for c in convs).items())),
        "intents": dict(sorted(Counter(c["metadata"]["intent"] for c in convs).items())),
        "styles": dict(sorted(Counter(c["metadata"]["style"] for c in convs).items())),
        "turns_min": min(turns), "turns_max": max(turns), "turns_mean": round(statistics.mean(turns), 2),
        "articles": len(arts),
        "task_items": dict(sorted(Counter(i["task"] for i in items).items())),
        "diversity_all": ngram_diversity(t["text"] for c in convs for t in c["turns"]),
        "diversity_500": ngram_diversity(sample),
        "fact_mentions_train_min": min(train_counts.values()),
        "fact_mentions_train_median": statistics.median(train_counts.values()),
        "fact_mentions_train_with_articles_min": min(with_articles.values()),
        "fact_mentions_train_with_articles_median": statistics.median(with_articles.values()),
        "pii": dict(sorted(Counter(p["type"] for c in convs for p in c["metadata"]["pii"]).items())),
        "file_bytes": {f: (out / f).stat().st_size for f in files},
    }


if __name__ == "__main__":  # python -m quantstudy_demo.supportgen [out_dir]
    import sys

    print(json.dumps(write_demo_data(sys.argv[1] if len(sys.argv) > 1 else "data/demo"), indent=1))
