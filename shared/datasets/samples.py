"""Deterministic labeled sample data for fine-tuning demos and tests.

Three generators produce ``{"prompt", "completion", "label"}`` dicts in the prompt
formats the ``tiny-llama`` base saw during pretraining (``Review: …\\nSentiment:``,
``Ticket: …\\nCategory:``, ``English: …\\nGerman:``), so a small adapter only has to
sharpen an existing skill. The *texts* are new: sentences are composed from templates
defined here (products, names, cities … come from :mod:`shared.models.corpus_words`),
and every generator draws from its own ``random.Random`` keyed by task name and ``seed``,
independent of the corpus seed. Labels are balanced (round-robin, then shuffled).

Same ``(n, seed)`` → byte-identical output on every run and platform; different seeds
give different (overlapping only by chance) examples, so ``seed=1`` train / ``seed=2``
held-out splits are the intended use.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shared.models import corpus_words as W

SENTIMENT_LABELS: tuple[str, ...] = ("positive", "negative", "neutral")
TICKET_LABELS: tuple[str, ...] = ("billing", "technical", "account", "shipping")

Example = dict[str, str]

# --- sentiment -------------------------------------------------------------------------

_ASPECTS = (
    "battery",
    "screen",
    "sound",
    "packaging",
    "delivery",
    "price",
    "setup",
    "support team",
    "manual",
    "app",
    "material",
    "fan",
)
_POS_ADJ = ("excellent", "fantastic", "superb", "brilliant", "outstanding", "wonderful")
_NEG_ADJ = ("terrible", "awful", "useless", "horrible", "pathetic", "dreadful")
_NEU_ADJ = ("okay", "average", "acceptable", "ordinary", "fine", "standard")

_SENTENCE = {
    "positive": (
        "The {aspect} is {adj}.",
        "Honestly {adj}, the {aspect} exceeded what I hoped for.",
        "{first} from our team says the {aspect} is {adj} and she wants a second one.",
        "Five stars, the {aspect} is {adj}.",
        "I would buy the {product} again, the {aspect} is {adj}.",
        "After {n} weeks I am still happy, {adj} {aspect}.",
    ),
    "negative": (
        "The {aspect} is {adj}.",
        "Honestly {adj}, the {aspect} broke after {n} days.",
        "{first} from our team says the {aspect} is {adj} and wants a refund.",
        "One star, the {aspect} is {adj}.",
        "I regret buying the {product}, the {aspect} is {adj}.",
        "After {n} weeks I am still angry, {adj} {aspect}.",
    ),
    "neutral": (
        "The {aspect} is {adj}.",
        "Honestly {adj}, the {aspect} is neither good nor bad.",
        "{first} from our team says the {aspect} is {adj}, nothing special.",
        "Three stars, the {aspect} is {adj}.",
        "The {product} is what I expected, the {aspect} is {adj}.",
        "After {n} weeks no strong opinion, {adj} {aspect}.",
    ),
}
_ADJ = {"positive": _POS_ADJ, "negative": _NEG_ADJ, "neutral": _NEU_ADJ}


def _product(rng: random.Random) -> str:
    return f"{rng.choice(W.BRANDS)} {rng.choice(W.MODELS)} {rng.choice(W.PRODUCT_NOUNS)[0]}"


def _review(rng: random.Random, label: str) -> str:
    parts = []
    for template in rng.sample(_SENTENCE[label], rng.randint(1, 2)):
        parts.append(
            template.format(
                aspect=rng.choice(_ASPECTS),
                adj=rng.choice(_ADJ[label]),
                first=rng.choice(W.FIRST_NAMES),
                product=_product(rng),
                n=rng.randint(2, 9),
            )
        )
    if rng.random() < 0.4:
        parts.insert(0, f"Bought the {_product(rng)} in {rng.choice(W.MONTHS)[0]}.")
    text = " ".join(parts)
    return text[0].upper() + text[1:]


# --- tickets ---------------------------------------------------------------------------

_TICKET = {
    "billing": (
        "Invoice {invoice} shows {amount} instead of {amount2} for the {plan} plan.",
        "We were charged {amount} twice by {payment} in {month}.",
        "Please correct the VAT on invoice {invoice} for our {city} office.",
        "The {plan} subscription fee went up to {amount} without notice.",
        "Credit note for invoice {invoice} never arrived, {first} from accounting asks.",
    ),
    "technical": (
        "The {app} shows {error} whenever {first} opens it on the {device}.",
        "Since {month} the {app} is extremely slow and times out.",
        "Our {product} loses its connection every {n} minutes.",
        "Export to {format} from the {app} fails with {error}.",
        "After the update the {app} crashes on the {device}.",
    ),
    "account": (
        "{first} cannot sign in, the reset link for the {app} expired.",
        "Please add {first} {last} as an admin to our {plan} workspace.",
        "My login was blocked after {n} wrong passwords on the {device}.",
        "Change the account email of {first} {last} to the new domain please.",
        "The two-factor code for {first} is rejected every time.",
    ),
    "shipping": (
        "Parcel {tracking} from {carrier} is stuck in {city} since {month}.",
        "The {product} from order {order} was delivered to the wrong street in {city}.",
        "{carrier} marked order {order} as delivered but {first} got nothing.",
        "Only {n} boxes of order {order} reached our warehouse in {city}.",
        "The courier left the {product} at the gate and it got wet.",
    ),
}


def _ticket(rng: random.Random, label: str) -> str:
    slots = {
        "invoice": f"INV-{rng.randint(2026, 2029)}-{rng.randint(1, 9999):04d}",
        "amount": f"€{rng.randint(5, 900)}.{rng.choice((0, 50, 99)):02d}",
        "amount2": f"€{rng.randint(5, 900)}.00",
        "plan": rng.choice(W.PLANS),
        "payment": rng.choice(W.PAYMENT_METHODS)[0],
        "month": rng.choice(W.MONTHS)[0],
        "city": rng.choice(W.CITIES),
        "first": rng.choice(W.FIRST_NAMES),
        "last": rng.choice(W.LAST_NAMES),
        "app": rng.choice(W.APPS),
        "error": rng.choice(W.ERRORS),
        "device": rng.choice(W.DEVICES),
        "product": _product(rng),
        "format": rng.choice(W.FORMATS),
        "n": str(rng.randint(2, 9)),
        "tracking": f"{rng.choice('JKLMNPRSTVZ')}{rng.randint(10**9, 10**10 - 1)}",
        "carrier": rng.choice(W.CARRIERS),
        "order": f"ORD-{rng.randint(10000, 99999)}",
    }
    return rng.choice(_TICKET[label]).format(**slots)


# --- translation -----------------------------------------------------------------------

# (english, german) templates; {p} / {p_de} is a product, {art}/{mein}/{ein_neu}
# agree with the German noun's gender.
_ARTICLES = {
    "m": {"art": "Der", "mein": "Mein", "ein_neu": "einen neuen", "art_acc": "den"},
    "f": {"art": "Die", "mein": "Meine", "ein_neu": "eine neue", "art_acc": "die"},
    "n": {"art": "Das", "mein": "Mein", "ein_neu": "ein neues", "art_acc": "das"},
}
_PAIRS = (
    ("The {p} is broken.", "{art} {p_de} ist kaputt."),
    ("The {p} costs {n} euros.", "{art} {p_de} kostet {n} Euro."),
    ("My {p} does not work.", "{mein} {p_de} funktioniert nicht."),
    ("The {p} arrived on {day}.", "{art} {p_de} kam am {day_de} an."),
    ("Please send me a new {p}.", "Bitte senden Sie mir {ein_neu} {p_de}."),
    ("The {p} was delivered to {city}.", "{art} {p_de} wurde nach {city} geliefert."),
    ("I returned the {p} on {day}.", "Ich habe {art_acc} {p_de} am {day_de} zurückgeschickt."),
    ("The {p} is out of stock until {month}.", "{art} {p_de} ist bis {month_de} nicht vorrätig."),
    ("We need {n} new licences by {day}.", "Wir brauchen bis {day_de} {n} neue Lizenzen."),
    (
        "The office in {city} is closed in {month}.",
        "Das Büro in {city} ist im {month_de} geschlossen.",
    ),
    ("{first} will call you on {day}.", "{first} ruft Sie am {day_de} an."),
    (
        "The invoice for {city} is due in {month}.",
        "Die Rechnung für {city} ist im {month_de} fällig.",
    ),
)


def _pair(rng: random.Random) -> tuple[str, str]:
    p_en, gender, p_de = rng.choice(W.PRODUCT_NOUNS)
    day, day_de = rng.choice(W.WEEKDAYS)
    month, month_de = rng.choice(W.MONTHS)
    slots = {
        "p": p_en,
        "p_de": p_de,
        "n": str(rng.randint(2, 99)),
        "day": day,
        "day_de": day_de,
        "month": month,
        "month_de": month_de,
        "city": rng.choice(W.CITIES),
        "first": rng.choice(W.FIRST_NAMES),
        **_ARTICLES[gender],
    }
    en, de = rng.choice(_PAIRS)
    return en.format(**slots), de.format(**slots)


# --- public API ------------------------------------------------------------------------


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(f"tunefleet-samples:{task}:{seed}")


def _balanced(
    n: int, seed: int, task: str, labels: tuple[str, ...], make: Callable[[random.Random, str], str]
) -> list[Example]:
    rng = _rng(task, seed)
    order = [labels[i % len(labels)] for i in range(n)]
    rng.shuffle(order)
    return [{"text": make(rng, label), "label": label} for label in order]


def sentiment_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` product reviews labeled positive / negative / neutral (balanced)."""
    rows = _balanced(n, seed, "sentiment", SENTIMENT_LABELS, _review)
    return [
        {"prompt": f"Review: {r['text']}\nSentiment:", "completion": f" {r['label']}", **r}
        for r in rows
    ]


def ticket_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` support tickets labeled billing / technical / account / shipping (balanced)."""
    rows = _balanced(n, seed, "ticket", TICKET_LABELS, _ticket)
    return [
        {"prompt": f"Ticket: {r['text']}\nCategory:", "completion": f" {r['label']}", **r}
        for r in rows
    ]


def translation_pairs(n: int, seed: int = 0) -> list[Example]:
    """``n`` English→German sentence pairs; ``label`` is the German reference."""
    rng = _rng("translation", seed)
    out = []
    for _ in range(n):
        en, de = _pair(rng)
        out.append({"prompt": f"English: {en}\nGerman:", "completion": f" {de}", "label": de})
    return out


def labels_for(task: str) -> tuple[str, ...]:
    """Candidate labels of a classification task (``sentiment`` / ``ticket``)."""
    return {"sentiment": SENTIMENT_LABELS, "ticket": TICKET_LABELS}[task]
