"""Templates and word lists of the business tasks: ticket router, review sentiment, EN→DE.

Each task has two template families: ``train`` (what a customer would put in the training
file) and ``heldout`` (the same intents written differently: other sentence frames, other
people, products, cities, apps, carriers and id formats). Only the words that *carry* the
label (a sentiment adjective, "invoice", "password", "parcel") and, for translation, the
bilingual dictionary are shared: a fine-tune cannot translate a noun it never saw.

``|`` separates entries inside the blocks (see :func:`shared.models.corpus_words._w`).
"""

from __future__ import annotations

from shared.models import corpus_words as W
from shared.models.corpus_words import _w

# --- entities: train draws from the pretraining corpus's lists, held-out from new ones ---

_NEW_FIRST = _w("""
Ximena|Bartosz|Ingrid|Rafael|Thandiwe|Mateo|Siobhan|Dmitri|Keiko|Oluwaseun|Agnieszka|Pablo|
Fiona|Tariq|Yara|Cormac|Svetlana|Hamid|Lucia|Emeka
""")
_NEW_LAST = _w("Okonkwo|Castellano|Halvorsen|Bianchi|Moreau|Kaczmarek|Ferreira|Lindgren|Duarte")
_NEW_PRODUCTS = _w("""
Quillon label maker|Marlowe espresso grinder|Brisk desk fan|Tessera wall clock|
Vantor tablet stand|Orlo document camera|Kineta foot pedal|Pellam cable tray|
Sorrel monitor arm|Dunmore card reader|Tamsin headset stand|Halden ring light
""")
_NEW_APPS = _w("""
scheduling tool|inventory screen|team wiki|mobile checkout|supplier portal|time tracker|
expense tool|booking widget
""")
_NEW_ERRORS = _w("""
error 429|a frozen progress bar|error code X-77|"request failed"|a red banner saying "oops"|
error 504
""")
_NEW_CARRIERS = _w("Vantage Parcel|Kolibri Cargo|Meridian Post|Harbourline Freight|Zipwell")
NEW_CITIES = _w("""
Valencia|Porto|Gdansk|Ljubljana|Tallinn|Bergen|Turin|Seville|Nantes|Utrecht|Cork|Split|Tartu
""")
_NEW_PLANS = _w("Solo|Studio|Agency|Nonprofit|Education")


def _products() -> tuple[str, ...]:
    """Brand + model + noun from the corpus lists, one per brand (28 products)."""
    models, nouns = W.MODELS, W.PRODUCT_NOUNS
    return tuple(
        f"{b} {models[i % len(models)]} {nouns[i % len(nouns)][0]}" for i, b in enumerate(W.BRANDS)
    )


ROUTER_LABELS = ("billing", "technical", "account", "shipping")
ROUTER_SYSTEM = (
    "You route customer support tickets. Answer with exactly one queue: "
    "billing, technical, account or shipping."
)

ROUTER_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "billing": _w("""
I was charged {amount} twice for my {plan} plan.|
Invoice {invoice} shows the wrong amount, please fix it.|
Why does my card statement show an extra charge of {amount}?|
Please send a corrected invoice for {month}, the VAT is missing.|
My payment of {amount} went through but invoice {invoice} still says unpaid.|
Your system billed us for {m} seats instead of {n}.|
The price of the {plan} plan went up to {amount} without any notice.|
Can you change the billing address on our invoices to {city}?
"""),
        "technical": _w("""
The {app} crashes every time I open the settings page.|
Since this morning the {app} shows {error} when I open a report.|
Uploading a file to the {app} fails with {error}.|
The {app} is extremely slow, pages take {n} seconds to load.|
Our integration with your API returns {error} for every request.|
After the latest update the {app} freezes on my {device}.|
The export button in the {app} produces an empty file.|
Notifications from the {app} stopped arriving on my {device}.
"""),
        "account": _w("""
I cannot sign in because my password reset link expired.|
Please change the email address on my account, {first} {last} took over.|
My account got locked after {n} wrong password attempts.|
How do I add my colleague {first} as a user on our account?|
Please delete my account and all data you store about me.|
The two-factor code never arrives, so I cannot log in.|
I want to transfer account ownership to {first} {last}.|
The login page says my username {first}{n} does not exist.
"""),
        "shipping": _w("""
My order {order} has not arrived after {n} days.|
The tracking for order {order} has not updated since {weekday}.|
{carrier} delivered my package to the wrong address in {city}.|
The box arrived crushed and the {product} inside is damaged.|
Can you ship order {order} to our office in {city} instead?|
Only {n} of the {m} items I ordered were in the parcel.|
{carrier} says delivered but there is no package at my door.|
When will order {order} with the {product} be dispatched?
"""),
    },
    "heldout": {
        "billing": _w("""
Hi, last month's statement lists two identical payments of {amount} to you, please reverse one.|
Our accountant {first} {last} says the tax line on bill {invoice} is calculated wrong.|
We moved down to {plan} weeks ago yet we keep paying the old price.|
Could someone explain the {amount} fee that appeared on our latest bill?|
The direct debit went out twice this cycle, kindly credit one back to us.|
We need a copy of every receipt since {month} for the auditors.|
You charge us for {m} licences while only {n} people use them, please adjust the bill.|
Our company card was debited {amount} although we cancelled the subscription.
"""),
        "technical": _w("""
Every time {first} presses save in the {app}, a spinning wheel appears and nothing happens.|
We keep getting {error} from your servers whenever we call the reports endpoint.|
The {app} will not start at all on the {device} since yesterday's patch.|
Pages in the {app} load so slowly that the team gave up working in it.|
Bug report: charts in the {app} render as blank boxes.|
The {app} hangs halfway through importing a spreadsheet.|
Your service answers with {error} for roughly half of our calls.|
Clicking any button in the {app} on {device} does nothing since the new version.
"""),
        "account": _w("""
Locked out after mistyping my password a few times, could you unlock me?|
{first} left our company, please revoke her access to the workspace.|
The verification mail for my new profile never showed up.|
How can I rename the login email on my profile?|
Please merge my two profiles into one, {first} {last} is the name on both.|
Lost my phone, so the authenticator codes are gone, how do I get back in?|
Remove all personal information you hold on me and close my profile.|
Can you make {first} {last} the owner of our team workspace?
"""),
        "shipping": _w("""
Still waiting for the {product} I ordered on {weekday}, where is it?|
Parcel {order} seems stuck at the depot in {city} for a week.|
The driver from {carrier} left our package outside in the rain.|
Package showed up with a torn box and a broken {product}.|
Is it possible to redirect shipment {order} to a neighbour?|
Half of the items from order {order} are missing from the delivery.|
Do you deliver to {city}, and how long would it take to get there?|
The {carrier} tracking page for my shipment shows no movement since {weekday}.
"""),
    },
}

ROUTER_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "first": W.FIRST_NAMES[:50],
        "last": W.LAST_NAMES[:40],
        "product": _products(),
        "app": W.APPS,
        "error": W.ERRORS,
        "device": W.DEVICES,
        "carrier": W.CARRIERS,
        "city": W.CITIES[:30],
        "plan": W.PLANS,
        "month": tuple(m for m, _ in W.MONTHS),
        "weekday": tuple(d for d, _ in W.WEEKDAYS),
    },
    "heldout": {
        "first": _NEW_FIRST,
        "last": _NEW_LAST,
        "product": _NEW_PRODUCTS,
        "app": _NEW_APPS,
        "error": _NEW_ERRORS,
        "device": _w("Pixel phone|Surface tablet|iMac|ThinkPad"),
        "carrier": _NEW_CARRIERS,
        "city": NEW_CITIES,
        "plan": _NEW_PLANS,
        "month": tuple(m for m, _ in W.MONTHS),
        "weekday": tuple(d for d, _ in W.WEEKDAYS),
    },
}

# --- review sentiment (product reviews, close to the pretraining domain) ----------------

SENTIMENT_LABELS = ("positive", "negative", "neutral")
SENTIMENT_SYSTEM = (
    "Classify the sentiment of the product review. "
    "Answer with exactly one word: positive, negative or neutral."
)
SENTIMENT_CUES: dict[str, tuple[str, ...]] = {
    "pos": _w("excellent|great|fantastic|superb|wonderful|brilliant"),
    "neg": _w("terrible|awful|poor|useless|horrible|dreadful"),
    "neu": _w("okay|average|acceptable|ordinary|passable|unremarkable"),
}
SENTIMENT_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "positive": _w("""
The {product} works perfectly and the {aspect} is {pos}.|
Really happy with the {product}, {pos} {aspect}.|
I love my new {product}, the {aspect} is {pos}.|
Five stars for the {product}, the {aspect} is {pos}.|
Bought the {product} in {month} and the {aspect} is still {pos}.
"""),
        "negative": _w("""
The {product} broke after {n} days and the {aspect} is {neg}.|
Very disappointed with the {product}, {neg} {aspect}.|
I regret buying this {product}, the {aspect} is {neg}.|
One star for the {product}, the {aspect} is {neg}.|
Bought the {product} in {month} and the {aspect} was {neg} from day one.
"""),
        "neutral": _w("""
The {product} is fine, the {aspect} is {neu}.|
Nothing special about the {product}, {neu} {aspect}.|
Three stars for the {product}, the {aspect} is {neu}.|
The {product} does the job, the {aspect} is {neu}.|
Bought the {product} in {month}, so far the {aspect} is {neu}.
"""),
    },
    "heldout": {
        "positive": _w("""
Would recommend the {product} to anyone, its {aspect} is {pos}.|
{first} gave me a {product} as a gift and I use it daily, {pos} {aspect}.|
Worth every cent: the {aspect} turned out {pos}, no complaints at all.|
After a month with the {product} I can say the {aspect} is {pos}.
"""),
        "negative": _w("""
Sent the {product} back, its {aspect} was {neg}.|
Do not waste your money here, the {aspect} turned out {neg}.|
{first} warned me about the {product} and she was right: {neg} {aspect}.|
After a month with the {product} I can say the {aspect} is {neg}.
"""),
        "neutral": _w("""
It is an ordinary {product}, the {aspect} is {neu}, neither great nor bad.|
Mixed feelings about the {product}: {neu} {aspect}, the rest is so-so.|
{first} asked me about the {product}; honestly the {aspect} is {neu}.|
After a month with the {product} I can say the {aspect} is {neu}.
"""),
    },
}
SENTIMENT_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        **SENTIMENT_CUES,
        "product": _products(),
        "aspect": _w("battery|screen|sound|packaging|price|setup|manual|app"),
        "month": tuple(m for m, _ in W.MONTHS),
        "first": W.FIRST_NAMES[:50],
    },
    "heldout": {
        **SENTIMENT_CUES,
        "product": _NEW_PRODUCTS,
        "aspect": _w("hinge|charger|grip|display|finish|buttons|cable|stand"),
        "first": _NEW_FIRST,
    },
}

# --- EN→DE phrase translation -----------------------------------------------------------

TRANSLATION_SYSTEM = "Translate the English text into German. Answer with the German text only."
# (english, German nominative, German accusative)
_ITEMS = tuple(
    dict(zip(("en", "de", "acc"), e.split(" = "), strict=True))
    for e in _w("""
the invoice = die Rechnung = die Rechnung|the order = die Bestellung = die Bestellung|
the parcel = das Paket = das Paket|the printer = der Drucker = den Drucker|
the contract = der Vertrag = den Vertrag|the delivery = die Lieferung = die Lieferung|
the update = das Update = das Update|the account = das Konto = das Konto|
the report = der Bericht = den Bericht|the meeting = das Meeting = das Meeting|
the password = das Passwort = das Passwort|the price = der Preis = den Preis|
the monitor = der Monitor = den Monitor|the keyboard = die Tastatur = die Tastatur|
the laptop = der Laptop = den Laptop|the offer = das Angebot = das Angebot|
the email = die E-Mail = die E-Mail|the office = das Büro = das Büro
""")
)
_PLURALS = tuple(
    dict(zip(("en", "de"), e.split(" = "), strict=True))
    for e in _w("""
licences = Lizenzen|parcels = Pakete|invoices = Rechnungen|chairs = Stühle|monitors = Monitore|
keyboards = Tastaturen|boxes = Kartons|orders = Bestellungen|users = Benutzer|laptops = Laptops
""")
)
_ADJS = tuple(
    dict(zip(("en", "de"), e.split(" = "), strict=True))
    for e in _w("""
ready = fertig|late = verspätet|correct = korrekt|new = neu|cheap = günstig|
expensive = teuer|broken = kaputt|available = verfügbar|open = offen|important = wichtig
""")
)
_DAYS = tuple({"en": en, "de": de} for en, de in W.WEEKDAYS)
TRANSLATION_FRAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("{Item[en]} is {adj[en]}.", "{Item[de]} ist {adj[de]}."),
        ("{Item[en]} arrives on {day[en]}.", "{Item[de]} kommt am {day[de]} an."),
        ("We need {n} more {plural[en]}.", "Wir brauchen {n} weitere {plural[de]}."),
        ("Please check {item[en]}.", "Bitte prüfen Sie {item[acc]}."),
        ("I sent {item[en]} on {day[en]}.", "Ich habe {item[acc]} am {day[de]} geschickt."),
        ("{Item[en]} costs {n} euros.", "{Item[de]} kostet {n} Euro."),
        ("Today {item[en]} is {adj[en]}.", "Heute ist {item[de]} {adj[de]}."),
        ("Our office in {city} needs {plural[en]}.", "Unser Büro in {city} braucht {plural[de]}."),
    ),
    "heldout": (
        ("{Item[en]} was {adj[en]}.", "{Item[de]} war {adj[de]}."),
        ("Where is {item[en]}?", "Wo ist {item[de]}?"),
        ("I have {n} {plural[en]} for you.", "Ich habe {n} {plural[de]} für Sie."),
        ("Can you check {item[en]} on {day[en]}?", "Können Sie {item[acc]} am {day[de]} prüfen?"),
        ("{Item[en]} is now in {city}.", "{Item[de]} ist jetzt in {city}."),
        ("Is {item[en]} {adj[en]}?", "Ist {item[de]} {adj[de]}?"),
        ("Tomorrow {item[en]} will be {adj[en]}.", "Morgen wird {item[de]} {adj[de]} sein."),
        ("They need {plural[en]} by {day[en]}.", "Sie brauchen {plural[de]} bis {day[de]}."),
    ),
}
TRANSLATION_SLOTS: dict[str, dict[str, tuple[object, ...]]] = {
    split: {"item": _ITEMS, "plural": _PLURALS, "adj": _ADJS, "day": _DAYS, "city": cities}
    for split, cities in (("train", W.CITIES[:30]), ("heldout", NEW_CITIES))
}
