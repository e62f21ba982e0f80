"""PII redaction (``pii``), text normalization (``normalize``) and dedup (``dedup``).

Property tests (hypothesis) generate emails, Luhn-valid cards, valid phone numbers, IBANs and
IP addresses embedded in random digit-free text: the original never appears in the output,
and since the surrounding text has no digits, no digit may survive at all.
"""

from __future__ import annotations

import ipaddress
import random
import string

import phonenumbers
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stdnum import iban, luhn

from services.training.data.dedup import DedupReport, dedup, exact_key, near_form
from services.training.data.normalize import normalize_text
from services.training.data.records import Example
from shared.pii import find_pii_kinds, redact

PROPERTY = settings(max_examples=100, deadline=None)

# Random surroundings: letters and punctuation, no digits and no "@", so any digit or "@" in
# the output is a leak.
_filler = st.text(
    alphabet=st.one_of(st.characters(categories=("L",)), st.sampled_from(" .,;:!?()-\n")),
    max_size=25,
)


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = "".join(
        draw(st.lists(st.sampled_from(string.digits), min_size=length - 1, max_size=length - 1))
    )
    number = body + luhn.calc_check_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    size = draw(st.sampled_from([4, 3, 5, 6]))
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


@st.composite
def phones(draw: st.DrawFn) -> str:
    region = draw(st.sampled_from(["US", "DE", "GB", "FR", "CH", "AT", "NL"]))
    kind = draw(
        st.sampled_from(
            [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
        )
    )
    example = phonenumbers.example_number_for_type(region, kind)
    assume(example is not None)
    national = str(example.national_number)
    tail = "".join(draw(st.lists(st.sampled_from(string.digits), min_size=3, max_size=3)))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail}")
    assume(phonenumbers.is_valid_number(number))
    formats = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL]
    if region in ("US", "DE"):
        formats.append(phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(number, draw(st.sampled_from(formats)))


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country, bban = draw(
        st.sampled_from(
            [
                (
                    "DE",
                    "".join(
                        draw(st.lists(st.sampled_from(string.digits), min_size=18, max_size=18))
                    ),
                ),
                (
                    "GB",
                    "NWBK"
                    + "".join(
                        draw(st.lists(st.sampled_from(string.digits), min_size=14, max_size=14))
                    ),
                ),
                (
                    "FR",
                    "".join(
                        draw(st.lists(st.sampled_from(string.digits), min_size=23, max_size=23))
                    ),
                ),
            ]
        )
    )
    number = country + iban.calc_check_digits(country + "00" + bban) + bban
    assume(iban.is_valid(number))
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return draw(st.sampled_from([number, spaced]))


def _embed(before: str, value: str, after: str) -> str:
    return f"{before} {value} {after}"


@PROPERTY
@given(_filler, st.emails(), _filler)
def test_redaction_never_leaks_an_email(before: str, email: str, after: str) -> None:
    out, counts = redact(_embed(before, email, after))
    assert email not in out
    assert "@" not in out
    assert counts.get("email") == 1


@PROPERTY
@given(_filler, cards(), _filler)
def test_redaction_never_leaks_a_card(before: str, card: str, after: str) -> None:
    out, counts = redact(_embed(before, card, after))
    assert card not in out
    assert not any(ch.isdigit() for ch in out), out
    assert counts == {"card": 1}


@PROPERTY
@given(_filler, phones(), _filler)
def test_redaction_never_leaks_a_phone_number(before: str, phone: str, after: str) -> None:
    out, counts = redact(_embed(before, phone, after))
    assert phone not in out
    assert not any(ch.isdigit() for ch in out), out
    assert sum(counts.values()) >= 1


@PROPERTY
@given(_filler, ibans(), _filler)
def test_redaction_never_leaks_an_iban(before: str, number: str, after: str) -> None:
    out, counts = redact(_embed(before, number, after))
    assert number not in out
    assert not any(ch.isdigit() for ch in out), out
    assert counts == {"iban": 1}


@PROPERTY
@given(_filler, st.ip_addresses(), _filler)
def test_redaction_never_leaks_an_ip_address(
    before: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, after: str
) -> None:
    value = str(address)
    assume(value != "::")
    out, counts = redact(_embed(before, value, after))
    assert value not in out
    assert counts == {"ip": 1}


@PROPERTY
@given(st.lists(st.tuples(_filler, st.one_of(st.emails(), cards(), phones(), ibans())), max_size=5))
def test_redaction_never_leaks_mixed_pii(parts: list[tuple[str, str]]) -> None:
    text = " ".join(f"{filler} {value}" for filler, value in parts)
    out, _ = redact(text)
    for _, value in parts:
        assert value not in out
    assert "@" not in out
    assert not any(ch.isdigit() for ch in out), out


@pytest.mark.parametrize(
    "text",
    [
        "+1 415 555 0134 01512 3456000",  # found by Hypothesis: two numbers run together
        "call +1 415 555 0134 01512 3456000 today",
        "01512 3456000 +1 415 555 0134",
    ],
)
def test_phone_numbers_run_together_are_both_redacted(text: str) -> None:
    out, counts = redact(text)
    assert counts == {"phone": 2}
    assert not any(ch.isdigit() for ch in out), out


@PROPERTY
@given(st.text(alphabet=st.characters(categories=("L", "P", "Z")), max_size=60))
def test_text_without_digits_or_at_sign_is_left_alone(text: str) -> None:
    assume("@" not in text and ":" not in text)
    assert redact(text) == (text, {})


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        (
            "Mail john.doe+crm@example.co.uk or call +1 201-555-0123.",
            "Mail [EMAIL] or call [PHONE].",
            {"email": 1, "phone": 1},
        ),
        ("Ruf an: 030 1234567 oder 0151 12345678", "Ruf an: [PHONE] oder [PHONE]", {"phone": 2}),
        ("call (201) 555-0123 today", "call [PHONE] today", {"phone": 1}),
        (
            "IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX",
            "IBAN [IBAN] BIC COBADEFFXXX",
            {"iban": 1},
        ),
        ("iban gb82west12345698765432.", "iban [IBAN].", {"iban": 1}),
        ("card 4111 1111 1111 1111 exp 12/25", "card [CARD] exp 12/25", {"card": 1}),
        ("ref 12 4111-1111-1111-1111", "ref 12 [CARD]", {"card": 1}),
        (
            "SSN 123-45-6789, ITIN 912-70-1234",
            "SSN [NATIONAL_ID], ITIN [NATIONAL_ID]",
            {"national_id": 2},
        ),
        (
            "Steuer-ID 36 574 261 809 / 86095742719",
            "Steuer-ID [NATIONAL_ID] / [NATIONAL_ID]",
            {"national_id": 2},
        ),
        ("NINO AB 12 34 56 C", "NINO [NATIONAL_ID]", {"national_id": 1}),
        (
            "from 192.168.1.10, 2001:db8::8a2e:370:7334 and fe80::1%eth0.",
            "from [IP], [IP] and [IP].",
            {"ip": 3},
        ),
    ],
)
def test_each_kind_is_redacted(text: str, expected: str, counts: dict[str, int]) -> None:
    assert redact(text) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123 shipped on 2023-01-15 at 10:30",  # 13 digits, not Luhn-valid
        "price 12.50, version 1.2.3, std::vector",
        "4111 1111 1111 1112",  # Luhn-invalid
        "123-45-678 and 000-12-3456 and 300.1.1.1",
        "QQ 12 34 56 C",  # not a NINO prefix
    ],
)
def test_lookalikes_are_kept(text: str) -> None:
    assert redact(text) == (text, {})


def test_an_iban_with_a_bad_checksum_is_not_an_iban() -> None:
    assert "iban" not in redact("DE89 3704 0044 0532 0130 01")[1]


def test_cards_are_redacted_before_phones_so_no_digits_are_half_eaten() -> None:
    text = "Card 4111 1111 1111 1111, tel +49 30 1234567; card 5500-0000-0000-0004 (201) 555-0123"
    out, counts = redact(text)
    assert out == "Card [CARD], tel [PHONE]; card [CARD] [PHONE]"
    assert counts == {"card": 2, "phone": 2}


def test_find_pii_kinds_names_kinds_not_values() -> None:
    text = "write to a@b.io from 10.0.0.1, card 4111111111111111"
    assert find_pii_kinds(text) == {"email", "ip", "card"}
    assert find_pii_kinds("nothing to see") == set()


# --- normalization -------------------------------------------------------------------------

_TRICKY = st.sampled_from(
    [
        "\r\n",
        "\r",
        "\n",
        "\t",
        " ",
        "  ",
        "\u00a0",
        "\u2028",
        "\x85",
        "\x00",
        "\x1b",
        "\u200b",
        "\ufeff",
        "\u00ad",
        "e",
        "\u0301",
        "\ufb01",
        "\u1100",
        "\u1161",
        "\uff21",
        "\ud800",
    ]
)


@PROPERTY
@given(st.lists(st.one_of(st.characters(), _TRICKY), max_size=80).map("".join))
def test_normalization_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert once == once.strip()
    assert "\r" not in once and "  " not in once
    assert all(ch in "\n\t" or ch.isprintable() or not ch.isspace() for ch in once)


def test_normalization_details() -> None:
    assert normalize_text("  a\r\nb\rc\u2028d  ") == "a\nb\nc\nd"
    assert normalize_text("x\x00y\u200bz \t \t w") == "xyz w"
    assert normalize_text("line  \nnext\t\n\n  indented") == "line\nnext\n\n indented"
    assert normalize_text("\ufb01le \uff21\u00a0B") == "file A B"
    assert normalize_text("e\u200b\u0301") == "\u00e9"  # composed across a removed character
    assert normalize_text("keep\ttab") == "keep\ttab"


# --- dedup ---------------------------------------------------------------------------------

_small_text = st.text(alphabet=st.sampled_from("ab 1!."), min_size=1, max_size=6)
_examples = st.lists(
    st.builds(lambda i, p, c: Example(i, p, c), st.integers(1, 100), _small_text, _small_text),
    max_size=30,
)


@PROPERTY
@given(_examples)
def test_dedup_is_stable_and_idempotent(examples: list[Example]) -> None:
    kept, report = dedup(examples)
    # stable: kept is a subsequence of the input (same objects, same order)
    it = iter(examples)
    assert all(any(k is e for e in it) for k in kept)
    assert len(kept) + report.exact_dropped + report.near_dropped == len(examples)
    # the first example is always kept, and nothing kept is a duplicate of another
    assert not examples or kept[0] is examples[0]
    assert len({exact_key(k) for k in kept}) == len(kept)
    again, second = dedup(kept)
    assert again == kept and second == DedupReport(0, 0)


def test_dedup_drops_exact_then_near_duplicates_keeping_the_first() -> None:
    examples = [
        Example(1, "Order 1001 is late!", "Shipping"),
        Example(2, "Order  1001 is late!", "Shipping"),  # exact after normalization
        Example(3, "order 2002 is LATE", "Shipping"),  # near: case, digits, punctuation
        Example(4, "Order 1001 is late!", "Billing"),  # other completion: kept
        Example(5, "1234", "5678"),
        Example(6, "4321", "8765"),  # nothing but digits: compared exactly only
    ]
    kept, report = dedup(examples)
    assert [e.line for e in kept] == [1, 4, 5, 6]
    assert report == DedupReport(exact_dropped=1, near_dropped=1)


def test_near_form() -> None:
    assert near_form("  Hello,   WORLD #42!\n") == "hello world"


def test_dedup_of_chat_examples_compares_roles_and_turns() -> None:
    def chat(line: int, system: str) -> Example:
        return Example.from_messages(
            line,
            [
                {"role": "system", "content": system},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
        )

    kept, report = dedup([chat(1, "Be brief."), chat(2, "be brief"), chat(3, "Be verbose.")])
    assert [e.line for e in kept] == [1, 3]
    assert report == DedupReport(exact_dropped=0, near_dropped=1)


def test_shuffled_input_keeps_the_same_set_when_no_duplicates() -> None:
    examples = [Example(i, f"prompt {chr(97 + i)}", "c") for i in range(10)]
    shuffled = examples[:]
    random.Random(3).shuffle(shuffled)
    assert dedup(shuffled)[0] == shuffled
