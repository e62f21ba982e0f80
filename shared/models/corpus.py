"""Deterministic synthetic business corpus (English + German) for the ``tiny-llama`` base.

The corpus mixes support tickets, product reviews, order/invoice phrases, CRM notes,
EN↔DE sentence pairs and classification-style lines (``Ticket: …\\nCategory: billing``,
``Review: …\\nSentiment: positive``). It is produced from templates and word lists with a
seeded :class:`random.Random`, so the output is byte-identical on every run and platform.
Documents are separated by one blank line.

``python -m shared.models.corpus`` rewrites the shipped ``data/corpus.txt``;
``--check`` only verifies that the shipped file is current (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

from shared.models import corpus_words as W

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"
SEED = 20240611
TARGET_BYTES = 420_000

TICKET_CATEGORIES: tuple[str, ...] = (
    "billing",
    "technical",
    "account",
    "shipping",
    "refund",
    "feature_request",
)
SENTIMENTS: tuple[str, ...] = ("positive", "negative", "neutral")

# Ticket bodies per category; English then German. Slots are filled by _Slots.
TICKETS_EN: dict[str, tuple[str, ...]] = {
    "billing": W._w("""
my invoice is wrong|I was charged twice for my {plan} subscription this month.|
The amount on invoice {invoice} is {amount}, but the {plan} plan should only cost {amount2}.|
Why was my {payment} charged {amount} on {date}? I did not upgrade anything.|
Our VAT number is missing on the latest invoice. Please reissue invoice {invoice}.|
The invoice lists {m} seats but we only have {n} users on the {plan} plan.|
My payment by {payment} failed although everything is valid. Please retry the charge.|
I need copies of all invoices since {month} for our accounting team.|
The billing address on invoice {invoice} is wrong, it should be our office in {city}.|
We were billed in US dollars instead of euros, please correct invoice {invoice}.|
The discount code {code} was not applied to my last invoice.|
Can you switch our billing cycle from monthly to yearly?|wrong amount on my bill|
There is an unknown charge of {amount} from {self} on my card statement.|
Please explain the extra fee of {amount} on invoice {invoice}.|
The direct debit for {month} was taken twice from our bank account.|charged twice this month|
The tax on invoice {invoice} looks too high, can you check the VAT rate?|
I paid invoice {invoice} on {date} but I still get payment reminders.
"""),
    "technical": W._w("""
the app is down again|The {app} has been down for {duration}. We get {error} on every page.|
Since the update on {date} the {app} crashes when I open a report.|
Our API calls return {error} since {hour}:00. Is there an outage?|
The sync between the {app} and our calendar stopped working.|
The site is very slow today, pages take more than {n} seconds to load.|
I cannot upload files larger than {n} MB, the upload stops at {pct} percent.|
Notification emails from your system are not arriving anymore.|
The {product} keeps disconnecting from the Wi-Fi every few minutes.|
The export to {format} produces an empty file.|Push notifications stopped working on my {device}.|
server error when saving|The {app} shows {error} after login on my {device}.|
The firmware update bricked my {product}, it does not turn on anymore.|
Search returns no results although the data is there.|
Our integration gets {error} for about half of the requests.|the {app} is not loading
"""),
    "account": W._w("""
I cannot log in to my account, the password reset link has expired.|
Please change the email address on my account, I moved to a new company.|
My account was locked after {n} failed login attempts.|
The two-factor codes are not accepted anymore.|How do I add a new user to our team account?|
I want to delete my account and all my personal data.|
I never received the verification email for my new account.|
Please transfer ownership of the workspace to my colleague {first}.|
The login page says my username does not exist.|I lost my phone and cannot get the 2FA code.|
can't log in|How can I change my password?|Please merge my two accounts, I have one private and one
for work.|
My colleague {first} left the company, please remove her access.|forgot my password|
The invitation link for {first} {last} does not work.
"""),
    "shipping": W._w("""
My order {order} has not arrived yet, the tracking shows no update since {date}.|
The parcel was delivered to the wrong address in {city}.|
{carrier} says the package was delivered but I never received it.|
The {product} arrived damaged, the box was crushed.|where is my package|
Can I change the delivery address for order {order}?|
Delivery was promised for {weekday} but nothing came.|
Only {n} of {m} items from order {order} were in the package.|
The tracking number {tracking} is not valid on the {carrier} website.|
Do you ship to {country}? How long does delivery take?|my parcel is late|
The courier from {carrier} left the parcel outside in the rain.|
Order {order} is stuck in customs for {duration}.|delivery still missing
"""),
    "refund": W._w("""
I returned the {product} on {date} and still have not received my refund of {amount}.|
Please refund order {order}, I cancelled it within the 14 day period.|
I want my money back, the {product} does not work as described.|
The refund was approved but the money is not on my card after {n} days.|
Can I get a partial refund because the {product} arrived {n} days late?|
I cancelled my {plan} subscription but was charged anyway, please refund {amount}.|
I want a refund|How long does a refund to {payment} usually take?|
Please send me a return label for the {product}, I would like a refund.|refund please|
The refund for order {order} was only {amount2} instead of {amount}.
"""),
    "feature_request": W._w("""
It would be great if the {app} supported {feature}.|Please add {feature} to the {plan} plan.|
Are you planning to offer {feature}? Our team would use it daily.|Feature request: {feature}.|
We would love to see {feature} in the {app}.|please add {feature}|
Our {n} users keep asking for {feature}. Is it on the roadmap?|
Suggestion: {feature} would save us hours every week.|Could you consider adding {feature}?
"""),
}

TICKETS_DE: dict[str, tuple[str, ...]] = {
    "billing": W._w("""
meine Rechnung ist falsch|Mir wurde das {plan}-Abo diesen Monat doppelt berechnet.|
Die Rechnung {invoice} lautet über {amount_de}, der {plan}-Tarif kostet aber nur {amount2_de}.|
Warum wurden am {date_de} {amount_de} per {payment_de} abgebucht? Ich habe nichts geändert.|
Auf der Rechnung {invoice} fehlt unsere USt-IdNr. Bitte stellen Sie sie neu aus.|
Die Rechnung enthält {m} Lizenzen, wir haben aber nur {n} Nutzer.|
Die Rechnungsadresse ist falsch, richtig wäre unser Büro in {city}.|
Ich brauche alle Rechnungen seit {month_de} für unsere Buchhaltung.|falscher Betrag auf der
Rechnung|
Der Rabattcode {code} wurde auf der letzten Rechnung nicht berücksichtigt.|
Die Lastschrift für {month_de} wurde zweimal eingezogen.|doppelt abgebucht|
Ich habe die Rechnung {invoice} am {date_de} bezahlt, bekomme aber weiter Mahnungen.
"""),
    "technical": W._w("""
die App geht schon wieder nicht|{app_de_cap} ist seit {duration_de} nicht erreichbar, wir sehen
{error}.|
Seit dem Update vom {date_de} stürzt die App beim Öffnen eines Berichts ab.|
Unsere API-Aufrufe liefern seit {hour} Uhr {error}. Gibt es eine Störung?|
Die Seite ist heute extrem langsam, jede Seite braucht über {n} Sekunden.|
Der Upload von Dateien über {n} MB bricht bei {pct} Prozent ab.|Serverfehler beim Speichern|
{P_nom} verliert alle paar Minuten die WLAN-Verbindung.|
Der Export als {format} erzeugt eine leere Datei.|Push-Benachrichtigungen kommen nicht mehr an.|
Nach dem Firmware-Update lässt sich {p_nom} nicht mehr einschalten.|
Die Suche findet nichts, obwohl die Daten vorhanden sind.
"""),
    "account": W._w("""
Ich kann mich nicht anmelden, der Link zum Zurücksetzen ist abgelaufen.|
Bitte ändern Sie die E-Mail-Adresse in meinem Konto.|
Mein Konto wurde nach {n} Fehlversuchen gesperrt.|Die Zwei-Faktor-Codes werden nicht akzeptiert.|
Wie füge ich einen neuen Benutzer zu unserem Team hinzu?|
Bitte löschen Sie mein Konto und alle meine Daten.|Passwort vergessen|Login geht nicht|
Ich habe die Bestätigungsmail für mein neues Konto nie bekommen.|
Bitte übertragen Sie den Workspace an meine Kollegin {first}.|
Ich habe mein Handy verloren und komme nicht an den 2FA-Code.
"""),
    "shipping": W._w("""
Meine Bestellung {order} ist noch nicht angekommen, die Sendungsverfolgung zeigt nichts Neues.|
Das Paket wurde an die falsche Adresse in {city} geliefert.|wo bleibt mein Paket|
Laut {carrier} wurde das Paket zugestellt, ich habe aber nichts bekommen.|
{P_nom} kam beschädigt an, der Karton war eingedrückt.|
Kann ich die Lieferadresse für Bestellung {order} noch ändern?|
Die Lieferung war für {weekday_de} angekündigt, aber es kam nichts.|
Im Paket waren nur {n} von {m} Artikeln der Bestellung {order}.|
Die Sendungsnummer {tracking} ist bei {carrier} ungültig.|Liefern Sie auch nach {country_de}?|
Bestellung {order} hängt seit {duration_de} beim Zoll fest.|Lieferung fehlt immer noch
"""),
    "refund": W._w("""
Ich habe {p_acc} am {date_de} zurückgeschickt und warte noch auf {amount_de}.|
Bitte erstatten Sie Bestellung {order}, ich habe innerhalb von 14 Tagen widerrufen.|
Ich möchte mein Geld zurück, {p_nom} funktioniert nicht wie beschrieben.|
Die Erstattung wurde bestätigt, aber nach {n} Tagen ist nichts auf meinem Konto.|
Ich habe das {plan}-Abo gekündigt und wurde trotzdem belastet, bitte erstatten.|
Geld zurück bitte|Wie lange dauert eine Erstattung per {payment_de}?|
Bitte schicken Sie mir ein Retourenetikett für {p_acc}, ich möchte mein Geld zurück.
"""),
    "feature_request": W._w("""
Es wäre toll, wenn es {feature_de} gäbe.|Bitte bauen Sie {feature_de} ein.|
Planen Sie {feature_de}? Unser Team würde das täglich nutzen.|Funktionswunsch: {feature_de}.|
Unsere {n} Nutzer wünschen sich {feature_de}. Steht das auf der Roadmap?|
Vorschlag: Bitte ergänzen Sie {feature_de}, das würde uns jede Woche Stunden sparen.
"""),
}


class _Slots(dict[str, str]):
    """Lazily filled template slots; each slot is drawn once per document from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        p_en, gender, p_de = rng.choice(W.PRODUCT_NOUNS)
        brand, model = rng.choice(W.BRANDS), rng.choice(W.MODELS)
        arts = {"m": ("der", "den", "dem"), "f": ("die", "die", "der"), "n": ("das", "das", "dem")}
        nom, acc, dat = (f"{a} {p_de} {brand} {model}" for a in arts[gender])
        self.update(product=f"{brand} {model} {p_en}", p_nom=nom, p_acc=acc, p_dat=dat)
        self["P_nom"] = nom[0].upper() + nom[1:]
        self["self"] = W.SELF_COMPANY

    def __missing__(self, key: str) -> str:
        value = self._draw(key)
        self[key] = value
        return value

    def _pair(self, key: str, pairs: tuple[tuple[str, str], ...]) -> str:
        en, de = self.rng.choice(pairs)
        base = key.removesuffix("_de")
        self[base], self[base + "_de"] = en, de
        return de if key.endswith("_de") else en

    def _draw(self, key: str) -> str:
        r = self.rng
        pairs = {
            "month": W.MONTHS,
            "weekday": W.WEEKDAYS,
            "duration": W.DURATIONS,
            "feature": W.FEATURES,
            "payment": W.PAYMENT_METHODS,
            "country": W.COUNTRIES,
        }
        if key.removesuffix("_de") in pairs:
            return self._pair(key, pairs[key.removesuffix("_de")])
        if key in ("date", "date_de"):
            day, (m_en, m_de) = r.randint(1, 28), r.choice(W.MONTHS)
            self["date"], self["date_de"] = f"{m_en} {day}", f"{day}. {m_de}"
            return self[key]
        if key.startswith("amount"):
            euros, cents = r.randint(5, 2400), r.choice((0, 0, 50, 90, 99, r.randint(1, 98)))
            self[key.removesuffix("_de")] = f"€{euros:,}.{cents:02d}"
            de_euros = f"{euros:,}".replace(",", ".")
            self[key.removesuffix("_de") + "_de"] = f"{de_euros},{cents:02d} €"
            return self[key]
        if key == "app_de_cap":
            app = r.choice(W.APPS_DE)
            return app[0].upper() + app[1:]
        simple: dict[str, Callable[[], str]] = {
            "first": lambda: r.choice(W.FIRST_NAMES),
            "last": lambda: r.choice(W.LAST_NAMES),
            "company": lambda: f"{r.choice(W.COMPANY_STEMS)} {r.choice(W.COMPANY_SUFFIXES)}",
            "plan": lambda: r.choice(W.PLANS),
            "carrier": lambda: r.choice(W.CARRIERS),
            "city": lambda: r.choice(W.CITIES),
            "error": lambda: r.choice(W.ERRORS),
            "app": lambda: r.choice(W.APPS),
            "device": lambda: r.choice(W.DEVICES),
            "format": lambda: r.choice(W.FORMATS),
            "n": lambda: str(r.randint(2, 9)),
            "m": lambda: str(r.randint(10, 60)),
            "pct": lambda: str(r.choice(range(5, 100, 5))),
            "hour": lambda: str(r.randint(7, 18)),
            "d": lambda: str(r.randint(1, 28)),
            "order": lambda: f"ORD-{r.randint(10000, 99999)}",
            "invoice": lambda: f"INV-{r.randint(2021, 2025)}-{r.randint(1, 9999):04d}",
            "tracking": lambda: f"{r.choice('JKLMNPRSTVZ')}{r.randint(10**9, 10**10 - 1)}",
            "code": lambda: (
                r.choice(("SPRING", "WELCOME", "TEAM", "SAVE", "VIP")) + str(r.randint(5, 50))
            ),
            "po": lambda: str(r.randint(100000, 999999)),
            "prio": lambda: r.choice(("low", "normal", "normal", "high", "urgent")),
            "channel": lambda: r.choice(("email", "web form", "chat", "phone", "app")),
        }
        return simple[key]()


def _fill(template: str, slots: _Slots) -> str:
    return template.format_map(slots)


def _ticket_text(rng: random.Random, category: str, lang: str) -> str:
    table = TICKETS_EN if lang == "en" else TICKETS_DE
    return _fill(rng.choice(table[category]), _Slots(rng))


def _support_ticket(rng: random.Random) -> str:
    cat, lang = rng.choice(TICKET_CATEGORIES), rng.choice(("en", "en", "de"))
    s = _Slots(rng)
    en = lang == "en"
    body = _fill(rng.choice((TICKETS_EN if en else TICKETS_DE)[cat]), s)
    body = body[0].upper() + body[1:] + ("" if body.endswith(("?", ".", "!")) else ".")
    extra = rng.choice(W.URGENCY_EN if en else W.URGENCY_DE)
    lines = [
        f"Ticket #{rng.randint(100000, 999999)} | Priority: {s['prio']} | Channel: {s['channel']}",
        f"From: {s['first']} {s['last']} <{s['first'].lower()}.{s['last'].lower()}@example.com>",
        f"{'Company' if en else 'Firma'}: {s['company']}",
        rng.choice(W.GREETINGS_EN if en else W.GREETINGS_DE),
        f"{body} {extra}",
        f"{rng.choice(W.CLOSINGS_EN if en else W.CLOSINGS_DE)} {s['first']}",
    ]
    if rng.random() < 0.5:
        replies = W.AGENT_REPLIES_EN if en else W.AGENT_REPLIES_DE
        reply = replies[rng.choice(W.REPLY_FOR_CATEGORY[cat])]
        lines.append(f"{'Agent reply' if en else 'Antwort'}: {reply}")
    lines.append(f"Category: {cat}")
    return "\n".join(lines)


def _ticket_classification(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        cat = rng.choice(TICKET_CATEGORIES)
        text = _ticket_text(rng, cat, rng.choice(("en", "en", "de")))
        lines += [f"Ticket: {text}", f"Category: {cat}"]
    return "\n".join(lines)


def _review_text(rng: random.Random, sentiment: str, lang: str) -> str:
    s = _Slots(rng)
    pool = {
        ("en", "positive"): W.REVIEW_POS_EN,
        ("en", "negative"): W.REVIEW_NEG_EN,
        ("en", "neutral"): W.REVIEW_NEU_EN,
        ("de", "positive"): W.REVIEW_POS_DE,
        ("de", "negative"): W.REVIEW_NEG_DE,
        ("de", "neutral"): W.REVIEW_NEU_DE,
    }[(lang, sentiment)]
    sentences = rng.sample(pool, rng.randint(1, 3))
    if lang == "en":
        intro = rng.choice((f"I bought the {s['product']} last month.", f"The {s['product']}:", ""))
    else:
        bought = f"Ich habe {s['p_acc']} vor einem Monat gekauft."
        intro = rng.choice((bought, f"{s['P_nom']}:", ""))
    return " ".join(x for x in (intro, *sentences) if x)


def _review(rng: random.Random) -> str:
    sentiment, lang = rng.choice(SENTIMENTS), rng.choice(("en", "en", "de"))
    stars = {"positive": (4, 5), "negative": (1, 2), "neutral": (3, 3)}[sentiment]
    title = {
        "positive": ("Great", "Love it", "Super", "Top"),
        "negative": ("Disappointed", "Avoid", "Enttäuscht", "Mangelhaft"),
        "neutral": ("Okay", "Average", "Geht so"),
    }
    return "\n".join(
        (
            f"Rating: {rng.randint(*stars)}/5 | {rng.choice(title[sentiment])}",
            _review_text(rng, sentiment, lang),
        )
    )


def _review_classification(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        sentiment = rng.choice(SENTIMENTS)
        lines += [
            f"Review: {_review_text(rng, sentiment, rng.choice(('en', 'en', 'de')))}",
            f"Sentiment: {sentiment}",
        ]
    return "\n".join(lines)


def _order(rng: random.Random) -> str:
    return "\n".join(
        _fill(rng.choice(W.ORDER_EN if rng.random() < 0.6 else W.ORDER_DE), _Slots(rng))
        for _ in range(rng.randint(1, 3))
    )


def _crm_note(rng: random.Random) -> str:
    s = _Slots(rng)
    (role, role_de), (topic, topic_de) = rng.choice(W.ROLES), rng.choice(W.CRM_TOPICS)
    step, step_de = rng.choice(W.NEXT_STEPS)
    who = f"{s['first']} {s['last']}"
    if rng.random() < 0.6:
        return (
            f"CRM note ({s['date']}): Call with {who}, {role} at {s['company']}. "
            f"Discussed {topic}. {rng.choice(W.CRM_OUTCOMES)}\n"
            f"Next step: {step} by {s['weekday']}."
        )
    return (
        f"CRM-Notiz ({s['date_de']}): Telefonat mit {who}, {role_de} bei {s['company']}. "
        f"Thema: {topic_de}. {rng.choice(W.CRM_OUTCOMES_DE)}\n"
        f"Nächster Schritt: {step_de} bis {s['weekday_de']}."
    )


def _parallel(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.55:
            en, de = rng.choice(W.PARALLEL)
        else:
            en_t, de_t = rng.choice(W.PARALLEL_TEMPLATES)
            s = _Slots(rng)
            s["day_en"], s["day_de"] = s["weekday"], s["weekday_de"]
            s["month_en"] = s["month"]
            en, de = _fill(en_t, s), _fill(de_t, s)
        if rng.random() < 0.25:
            out += [f"German: {de}", f"English: {en}"]
        else:
            out += [f"English: {en}", f"German: {de}"]
    return "\n".join(out)


GENERATORS: tuple[tuple[Callable[[random.Random], str], int], ...] = (
    (_support_ticket, 18),
    (_ticket_classification, 24),
    (_review, 9),
    (_review_classification, 14),
    (_order, 10),
    (_crm_note, 9),
    (_parallel, 16),
)


def generate_corpus(seed: int = SEED, target_bytes: int = TARGET_BYTES) -> str:
    """Return the full corpus text: documents joined by blank lines, ending in a newline."""
    rng = random.Random(seed)
    funcs = [f for f, _ in GENERATORS]
    weights = [w for _, w in GENERATORS]
    docs: list[str] = []
    size = 0
    while size < target_bytes:
        doc = rng.choices(funcs, weights)[0](rng)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 2
    return "\n\n".join(docs) + "\n"


def load_corpus(path: Path = CORPUS_PATH) -> str:
    """Read the shipped corpus file (UTF-8)."""
    return path.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """CLI: rewrite (default) or ``--check`` the shipped corpus file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify, do not write")
    parser.add_argument("--out", type=Path, default=CORPUS_PATH)
    args = parser.parse_args(argv)
    data = generate_corpus().encode("utf-8")
    if args.check:
        ok = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if ok else 'STALE'}")
        return 0 if ok else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
