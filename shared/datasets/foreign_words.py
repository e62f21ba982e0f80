"""Templates of the "foreign wording" classification sets (issue 15, item 8).

Their vocabulary is unlike the business corpus ``tiny-llama`` is pretrained on
(:mod:`shared.models.corpus`: tickets, product reviews, invoices, CRM notes): restaurant
reviews, hobby forum posts and video game reviews, with cue words ("scrumptious", "soggy",
"telescope", "jib", "laggy") that never occur in that corpus. As in
:mod:`.business_words`, the held-out family uses other sentence frames and other names,
places and titles; the words that carry the label come from one lexicon per class.
"""

from __future__ import annotations

from shared.models.corpus_words import _w

# --- restaurant review sentiment ------------------------------------------------------

DINING_LABELS = ("positive", "negative", "neutral")
DINING_SYSTEM = (
    "Classify the sentiment of the restaurant review. "
    "Answer with exactly one word: positive, negative or neutral."
)
DINING_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "positive": _w("""
The {dish} at {place} was {pos} and the {staff} was {kind}.|
We had the {dish} for dinner, simply {pos}.|
{place} never disappoints, the {dish} was {pos} again.|
The {dish} tasted {pos} and the {room} felt {kind}.
"""),
        "negative": _w("""
The {dish} at {place} was {neg} and the {staff} was {rude}.|
We had the {dish} for dinner, sadly {neg}.|
{place} used to be good, but the {dish} was {neg} this time.|
The {dish} tasted {neg} and the {room} felt {rude}.
"""),
        "neutral": _w("""
The {dish} at {place} was {meh} and the {staff} was {fine}.|
We had the {dish} for dinner, rather {meh}.|
{place} is what you expect, the {dish} was {meh}.|
The {dish} tasted {meh} and the {room} felt {fine}.
"""),
    },
    "heldout": {
        "positive": _w("""
Took {first} to {place} for her birthday; {pos} {dish}, we will be back.|
Honestly the best {dish} in town, {pos} from the first bite.|
If you go to {place}, order the {dish}: {pos}.
"""),
        "negative": _w("""
Took {first} to {place} for her birthday; {neg} {dish}, never again.|
Honestly the worst {dish} in town, {neg} from the first bite.|
If you go to {place}, skip the {dish}: {neg}.
"""),
        "neutral": _w("""
Took {first} to {place} for her birthday; {meh} {dish}, nothing memorable.|
Honestly a very typical {dish}, {meh} from the first bite.|
If you go to {place}, the {dish} is {meh}, no more and no less.
"""),
    },
}
_DINING_CUES = {
    "pos": _w("scrumptious|divine|mouthwatering|heavenly|delightful|exquisite"),
    "neg": _w("bland|soggy|greasy|stale|lukewarm|burnt"),
    "meh": _w("middling|unremarkable|so-so|passable|run-of-the-mill|forgettable"),
    "kind": _w("attentive|charming|cosy|welcoming"),
    "rude": _w("surly|grumpy|chaotic|dismissive"),
    "fine": _w("adequate|businesslike|tolerable|standard"),
}
DINING_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        **_DINING_CUES,
        "dish": _w("risotto|ramen|tagine|gnocchi|paella|dumplings|lasagne|falafel"),
        "place": _w("Casa Verde|The Olive Tree|Bistro Lumière|Golden Lotus|Trattoria Nonna"),
        "staff": _w("waiter|waitress|sommelier|host|chef"),
        "room": _w("terrace|dining room|patio|bar area"),
    },
    "heldout": {
        **_DINING_CUES,
        "dish": _w("ceviche|moussaka|pho|bibimbap|goulash|biryani|empanadas|tiramisu"),
        "place": _w("Saffron House|The Rusty Anchor|Osteria Blu|Mama Kim's|El Fogón"),
        "first": _w("Beatriz|Leonie|Aiko|Margot|Nadia|Esther"),
    },
}

# --- hobby forum topic ------------------------------------------------------------------

HOBBY_LABELS = ("astronomy", "gardening", "sailing", "baking")
HOBBY_SYSTEM = (
    "Which hobby is this forum post about? "
    "Answer with exactly one word: astronomy, gardening, sailing or baking."
)
_HOBBY_THINGS = {
    "astronomy": _w("""
telescope|nebula|eyepiece|star chart|meteor shower|rings of Saturn|Andromeda galaxy|
equatorial mount|lunar craters|Orion constellation
"""),
    "gardening": _w("""
compost heap|tomato seedlings|pruning shears|raised bed|aphids|mulch|rose bushes|
vegetable patch|greenhouse|herb border
"""),
    "sailing": _w("""
mainsail|jib|tiller|mooring line|regatta|keel|spinnaker|dinghy|harbour crossing|reef knot
"""),
    "baking": _w("""
sourdough starter|rye loaf|croissants|proofing basket|dough|yeast|crumb|pastry|
oven thermometer|cinnamon buns
"""),
}
_HOBBY_DOING = {
    "astronomy": _w("stargazing|observing|watching the night sky"),
    "gardening": _w("weeding|planting|digging"),
    "sailing": _w("tacking|sailing upwind|racing"),
    "baking": _w("kneading|baking|proofing"),
}
HOBBY_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        label: (
            f"Any tips for a beginner with the {{{label}}}?",
            f"Last weekend I spent hours {{{label}_doing}}, mostly with the {{{label}}}.",
            f"Just read a book about the {{{label}}}, what should I try first?",
            f"Question about the {{{label}}} and the {{{label}2}}: which matters more?",
        )
        for label in HOBBY_LABELS
    },
    "heldout": {
        label: (
            f"{{first}} from our club swears by the {{{label}}}, is she right?",
            f"Photo of the {{{label}}} from {{place}} this morning, what went wrong?",
            f"Thinking of {{{label}_doing}} more next year, how do you keep going in winter?",
        )
        for label in HOBBY_LABELS
    },
}
_HOBBY_LEX = {
    **{label: things for label, things in _HOBBY_THINGS.items()},
    **{f"{label}_doing": doing for label, doing in _HOBBY_DOING.items()},
}
HOBBY_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": dict(_HOBBY_LEX),
    "heldout": {
        **_HOBBY_LEX,
        "first": _w("Ottilie|Rasmus|Farida|Ignatius|Solveig|Kwame"),
        "place": _w("the lakeside|our allotment|the old quarry|grandma's cottage|the marina"),
    },
}

# --- video game review sentiment --------------------------------------------------------

GAME_LABELS = ("positive", "negative", "neutral")
GAME_SYSTEM = (
    "Classify the sentiment of the video game review. "
    "Answer with exactly one word: positive, negative or neutral."
)
GAME_FRAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "positive": _w("""
{title} is {pos}, the {part} alone is worth it.|
Played {title} all night, {pos} {part}.|
The {part} in {title} feels {pos}.
"""),
        "negative": _w("""
{title} is {neg}, the {part} ruins it.|
Played {title} all night, {neg} {part}.|
The {part} in {title} feels {neg}.
"""),
        "neutral": _w("""
{title} is {meh}, the {part} is nothing new.|
Played {title} all night, {meh} {part}.|
The {part} in {title} feels {meh}.
"""),
    },
    "heldout": {
        "positive": _w("""
My squad keeps coming back to {title}: {pos} {part} and great co-op.|
Finished {title} in {n} evenings and the {part} was {pos} throughout.
"""),
        "negative": _w("""
My squad uninstalled {title} after a week: {neg} {part} and constant crashes.|
Finished {title} in {n} evenings and the {part} was {neg} throughout.
"""),
        "neutral": _w("""
My squad tried {title} for a week: {meh} {part}, fine for a rainy evening.|
Finished {title} in {n} evenings and the {part} was {meh} throughout.
"""),
    },
}
_GAME_CUES = {
    "pos": _w("addictive|gorgeous|polished|thrilling|buttery smooth|captivating"),
    "neg": _w("buggy|laggy|grindy|unplayable|clunky|janky"),
    "meh": _w("serviceable|middle-of-the-road|forgettable|derivative|lukewarm|workmanlike"),
}
GAME_SLOTS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        **_GAME_CUES,
        "title": _w("Starfall Odyssey|Crypt of Embers|Neon Drift|Kingdom of Ash|Pixel Pirates"),
        "part": _w("combat|level design|soundtrack|crafting system|boss fight|open world"),
    },
    "heldout": {
        **_GAME_CUES,
        "title": _w("Hollow Tides|Mech Rally 3|Witchwood|Orbital Bakers|Tunnel Runner"),
        "part": _w("story campaign|multiplayer|skill tree|quest line|stealth section|frame rate"),
    },
}
