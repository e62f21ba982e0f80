"""services.training.data.pipeline: ``prepare`` end to end on a Salesforce-like case export,
and every kind of bad upload turned into one ``InvalidRequest``.

A word-level ``tokenizers.Tokenizer`` (built in memory: one token per word or run of
punctuation) keeps the token counts checkable by hand.
"""

from __future__ import annotations

import json
import re

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from services.training.data.dedup import DedupReport
from services.training.data.labels import LabelReport
from services.training.data.pipeline import Prepared, PrepReport, prepare, to_jsonl
from services.training.data.records import Example
from shared.errors import InvalidRequest

MAPPING = {"Subject": "text", "Description": "text", "Type": "label"}
WORDS = re.compile(r"\w+|[^\w\s]+")

# Salesforce "Case" report export, 14 rows: CRLF, quoted multi-line descriptions, an exact
# duplicate (5004 = 5001, other Id), a duplicate after whitespace normalization (5014 = 5012),
# two near duplicates (5008 ~ 5007: punctuation; 5011 ~ 5010: digits), and PII (the phone
# twice: redaction runs before dedup). Kept: Billing 3, Technical 4, Shipping 3.
CASES_CSV = (
    b"Id,Subject,Description,Type,Priority\r\n"
    b'5001,Invoice wrong,"My invoice shows the wrong amount.\r\n'
    b'Please call me at +1 201-555-0123.",Billing,High\r\n'
    b"5002,Refund request,"
    b'"Please refund to IBAN DE89 3704 0044 0532 0130 00, thanks",Billing,Medium\r\n'
    b"5003,Card charged twice,You charged my card 4111 1111 1111 1111 twice,Billing,High\r\n"
    b'5004,Invoice wrong,"My invoice shows the wrong amount.\r\n'
    b'Please call me at +1 201-555-0123.",Billing,High\r\n'
    b"5005,Login fails,Cannot log in since Monday. Contact: jane.doe@example.com,Technical,Low\r\n"
    b"5006,Password reset,Reset link from 10.0.0.12 does not work,Technical,Medium\r\n"
    b"5007,App crashes,The app crashes on start,Technical,High\r\n"
    b"5008,App crashes!,The app crashes on start.,Technical,High\r\n"
    b'5009,Export broken,"CSV export hangs\r\n\r\nsteps:\r\n1. open\r\n2. export",Technical,Low\r\n'
    b"5010,Order 1001 late,Where is order 1001?,Shipping,Medium\r\n"
    b"5011,Order 2002 late,Where is order 2002?,Shipping,Medium\r\n"
    b"5012,Wrong address,Ship to the new address please,Shipping,Low\r\n"
    b"5013,Damaged parcel,Box arrived damaged,Shipping,High\r\n"
    b'5014,"  Wrong   address ",Ship to the new address please,Shipping,Low\r\n'
)
PII_VALUES = (
    "201-555-0123",
    "DE89 3704 0044 0532 0130 00",
    "4111 1111 1111 1111",
    "jane.doe@example.com",
    "10.0.0.12",
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def _tokens(example: Example) -> int:
    return len(WORDS.findall(example.prompt)) + len(WORDS.findall(example.completion))


def _prepare_cases(tokenizer: Tokenizer, **kw: object) -> Prepared:
    args: dict[str, object] = {
        "mapping": MAPPING,
        "task": "classification",
        "tokenizer": tokenizer,
        "max_len": 12,
        "seed": 7,
        "validation_fraction": 0.25,
    }
    args.update(kw)
    return prepare(CASES_CSV, "cases.csv", **args)  # type: ignore[arg-type]


def test_salesforce_case_export_report_is_exact(tokenizer: Tokenizer) -> None:
    prepared = _prepare_cases(tokenizer)
    report, train, val = prepared.report, prepared.train, prepared.validation
    everything = train + val
    lengths = sorted(_tokens(e) for e in everything)
    assert report.model_dump() == {
        "format": "csv",
        "task": "classification",
        "rows_in": 14,
        "rows_out": 10,
        "errors": [],
        "pii_redacted": {"card": 1, "email": 1, "iban": 1, "ip": 1, "phone": 2},
        "dedup": {"exact_dropped": 2, "near_dropped": 2},
        "labels": {
            "counts": {"Technical": 3, "Billing": 2, "Shipping": 2},
            "imbalance_ratio": 1.5,
            "warnings": [
                "label 'Technical' has only 3 training examples (fewer than 5)",
                "label 'Billing' has only 2 training examples (fewer than 5)",
                "label 'Shipping' has only 2 training examples (fewer than 5)",
            ],
            "unseen_in_validation": [],
        },
        "lengths": {
            "count": 10,
            "tokens_total": sum(lengths),
            "p50": lengths[4],
            "p95": lengths[-1],
            "max": lengths[-1],
            "truncated": sum(n > 12 for n in lengths),
            "max_len": 12,
            "truncated_lines": [e.line for e in everything if _tokens(e) > 12],
        },
        "split": {
            "train": 7,
            "validation": 3,
            "source": "split",
            "validation_fraction": 0.25,
            "test": 0,
            "test_source": "split",
            "test_fraction": 0.0,
        },
        "seed": 7,
    }
    assert report.lengths.truncated > 0


def test_case_export_rows_are_normalized_redacted_and_deduplicated(tokenizer: Tokenizer) -> None:
    prepared = _prepare_cases(tokenizer)
    everything = prepared.train + prepared.validation
    # Examples carry the physical line their row starts on: 5001 spans lines 2-3, 5009 12-16.
    assert sorted(e.line for e in everything) == [2, 4, 5, 8, 9, 10, 12, 17, 19, 20]
    by_line = {e.line: e for e in everything}
    assert by_line[2] == Example(
        2,
        "Invoice wrong\nMy invoice shows the wrong amount.\nPlease call me at [PHONE].",
        "Billing",
        "Billing",
    )
    assert by_line[12].prompt == "Export broken\nCSV export hangs\n\nsteps:\n1. open\n2. export"
    assert by_line[4].prompt == "Refund request\nPlease refund to IBAN [IBAN], thanks"
    assert by_line[5].prompt == "Card charged twice\nYou charged my card [CARD] twice"
    assert by_line[8].prompt.endswith("Contact: [EMAIL]")
    assert by_line[9].prompt == "Password reset\nReset link from [IP] does not work"
    dumped = to_jsonl(everything).decode()
    for value in PII_VALUES:
        assert value not in dumped
    assert {e.label for e in prepared.validation} == {"Billing", "Technical", "Shipping"}


def test_prepare_is_deterministic_and_the_report_round_trips_as_json(tokenizer: Tokenizer) -> None:
    first, second = _prepare_cases(tokenizer), _prepare_cases(tokenizer)
    assert first == second
    restored = PrepReport.model_validate_json(first.report.model_dump_json())
    assert restored == first.report
    assert isinstance(restored.dedup, DedupReport) and isinstance(restored.labels, LabelReport)


def test_to_jsonl_writes_prompt_completion_label_and_chat_lines() -> None:
    chat = Example.from_messages(
        3, [{"role": "user", "content": "Grüß dich"}, {"role": "assistant", "content": "Hallo"}]
    )
    data = to_jsonl([Example(1, "p", "c", "L"), Example(2, "p2", "c2"), chat])
    assert [json.loads(line) for line in data.decode().splitlines()] == [
        {"prompt": "p", "completion": "c", "label": "L"},
        {"prompt": "p2", "completion": "c2"},
        {
            "messages": [
                {"role": "user", "content": "Grüß dich"},
                {"role": "assistant", "content": "Hallo"},
            ]
        },
    ]
    assert "Grüß".encode() in data


def test_chat_upload_for_generation(tokenizer: Tokenizer) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"Question {w}?"},
                {"role": "assistant", "content": f"Answer {w}."},
            ]
        }
        for w in ("one", "two", "three", "four")
    ]
    lines.append(lines[0])
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    prepared = prepare(
        data, "chat.jsonl", tokenizer=tokenizer, max_len=64, validation_fraction=0.25
    )
    assert prepared.report.format == "chat"
    assert prepared.report.labels is None
    assert (prepared.report.rows_in, prepared.report.rows_out) == (5, 4)
    assert (prepared.report.split.train, prepared.report.split.validation) == (3, 1)
    assert all(e.messages and e.label is None for e in prepared.train)


def test_validation_upload_is_used_and_deduplicated_against_training(tokenizer: Tokenizer) -> None:
    validation = (
        b"Subject,Description,Type\r\n"
        b"Login fails,Cannot log in since Monday. Contact: jane.doe@example.com,Technical\r\n"
        b"Wrong size,The shoes are too small,Shipping\r\n"
    )
    prepared = _prepare_cases(tokenizer, validation=validation, validation_filename="val.csv")
    report = prepared.report
    assert report.split.model_dump() == {
        "train": 10,
        "validation": 1,
        "source": "upload",
        "validation_fraction": None,
        "test": 0,
        "test_source": "split",
        "test_fraction": 0.0,
    }
    assert [e.prompt for e in prepared.validation] == ["Wrong size\nThe shoes are too small"]
    assert (report.rows_in, report.rows_out) == (16, 11)
    assert report.dedup == DedupReport(exact_dropped=3, near_dropped=2)
    assert report.pii_redacted["email"] == 2
    assert report.labels is not None
    assert report.labels.unseen_in_validation == ["Technical", "Billing"]


# --- bad uploads: each one InvalidRequest(code="invalid_training_file") --------------------


def _error(data: bytes, filename: str = "train.jsonl", **kw: object) -> InvalidRequest:
    args: dict[str, object] = {"tokenizer": None, "max_len": 16}
    args.update(kw)
    with pytest.raises(InvalidRequest) as caught:
        prepare(data, filename, **args)  # type: ignore[arg-type]
    return caught.value


def test_invalid_jsonl_names_the_lines() -> None:
    data = (
        b'{"prompt": "a", "completion": "b"}\n'
        b'{"prompt": "a", "completion": }\n'
        b'{"prompt": "c", "completion": "d"}\n'
        b'{"messages": [{"role": "user", "content": "x"}]}\n'
        b'{"prompt": "", "completion": "d"}\n'
    )
    error = _error(data)
    assert (error.status, error.code, error.param) == (
        400,
        "invalid_training_file",
        "training_file",
    )
    assert error.message == (
        "train.jsonl: 3 errors: line 2: json: invalid JSON: Expecting value (column 31); "
        "line 4: prompt: a chat record in a prompt/completion file (format set by line 1); "
        "line 5: prompt: is empty"
    )


def test_bad_utf8_names_the_line() -> None:
    data = b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff", "completion": "b"}\n'
    error = _error(data)
    assert error.code == "invalid_training_file"
    assert (
        "line 2: encoding: invalid UTF-8 byte 0xff at byte offset 47 of the file "
        "(byte 13 of the line)" in error.message
    )


def test_missing_mapped_column_is_named() -> None:
    data = b"Id,Subject,Details,Type\r\n1,a,b,c\r\n"
    error = _error(data, "cases.csv", mapping=MAPPING, task="classification")
    assert error.code == "invalid_training_file" and error.param == "training_file"
    assert (
        "line 1: Description: mapped column 'Description' is not in the CSV header" in error.message
    )


def test_deeply_nested_json_is_rejected_clearly() -> None:
    nested = '{"prompt": "a", "completion": "b", "meta": ' + '{"x": ' * 100 + "1" + "}" * 100 + "}"
    error = _error(b'{"prompt": "a", "completion": "b"}\n' + nested.encode())
    assert error.code == "invalid_training_file"
    assert "line 2: json: nested deeper than 32 levels" in error.message


def test_overlong_line_is_rejected() -> None:
    data = json.dumps({"prompt": "a" * 1_100_000, "completion": "b"}).encode()
    error = _error(data)
    assert (
        "line 1: line: line is 1,100,033 bytes, longer than the 1,000,000-byte limit"
        in error.message
    )


def test_too_many_errors_stop_after_max_errors() -> None:
    error = _error(b"{oops}\n" * 40)
    assert error.message.startswith(
        "train.jsonl: 10 errors (stopped after the first 10): line 1: json"
    )
    assert "line 10: json" in error.message and "line 11" not in error.message


def test_content_empty_after_normalization_is_an_error() -> None:
    data = b'{"prompt": "\\u200b\\u0000 ", "completion": "b"}\n'
    error = _error(data)
    assert error.code == "invalid_training_file"
    assert "line 1: prompt: is empty after normalization" in error.message


def test_invalid_mapping_is_its_own_error() -> None:
    error = _error(b"Subject,Type\r\na,b\r\n", "cases.csv", mapping={"Subject": "body"})
    assert (error.code, error.param) == ("invalid_mapping", "mapping")
    assert "target must be one of" in error.message


def test_invalid_validation_upload_names_the_validation_file(tokenizer: Tokenizer) -> None:
    good = b'{"prompt": "a", "completion": "b"}\n'
    error = _error(
        good, validation=b"not json\n", validation_filename="val.jsonl", tokenizer=tokenizer
    )
    assert (error.code, error.param) == ("invalid_training_file", "validation_file")
    assert error.message.startswith("val.jsonl: 1 error: line 1: json: invalid JSON")


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"task": "summarize"}, "task"),
        ({"max_len": 0}, "max_len"),
        ({"validation_fraction": 1.5}, "validation_fraction"),
    ],
)
def test_bad_arguments(kw: dict[str, object], param: str) -> None:
    error = _error(b'{"prompt": "a", "completion": "b"}\n', **kw)
    assert (error.code, error.param) == ("invalid_request", param)


def _review_rows(n: int, offset: int = 0) -> bytes:
    """Distinct reviews (random words: near-duplicate detection keeps them all)."""
    import random

    labels = ("positive", "negative", "neutral")
    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro") for b in "aeiouxyz"]
    rows = []
    for i in range(offset, offset + n):
        text = " ".join(random.Random(i).choices(words, k=8))
        rows.append({"prompt": f"Review: {text}", "completion": labels[i % 3]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_test_split_is_drawn_deterministically_and_apart(tokenizer: Tokenizer) -> None:
    kwargs = {"task": "sentiment", "tokenizer": tokenizer, "max_len": 64, "seed": 3}
    a = prepare(_review_rows(60), "r.jsonl", test_fraction=0.2, **kwargs)
    b = prepare(_review_rows(60), "r.jsonl", test_fraction=0.2, **kwargs)
    split_report = a.report.split
    assert (split_report.test, split_report.test_source, split_report.test_fraction) == (
        12,
        "split",
        0.2,
    )
    assert split_report.train + split_report.validation + split_report.test == 60
    assert [e.prompt for e in a.test] == [e.prompt for e in b.test]
    seen = {e.prompt for e in a.train} | {e.prompt for e in a.validation}
    assert not seen & {e.prompt for e in a.test}
    # an uploaded validation file leaves the drawn test set where it was
    c = prepare(
        _review_rows(60),
        "r.jsonl",
        test_fraction=0.2,
        validation=_review_rows(6, offset=100),
        validation_filename="v.jsonl",
        **kwargs,
    )
    assert [e.prompt for e in c.test] == [e.prompt for e in a.test]


def test_test_upload_is_used_and_deduplicated_against_training(tokenizer: Tokenizer) -> None:
    kwargs = {"task": "sentiment", "tokenizer": tokenizer, "max_len": 64}
    test = _review_rows(3, offset=0) + _review_rows(5, offset=200)  # 3 repeat training rows
    prepared = prepare(
        _review_rows(30), "r.jsonl", test=test, test_filename="t.jsonl", test_fraction=0.3, **kwargs
    )
    assert prepared.report.split.test_source == "upload"
    assert prepared.report.split.test_fraction is None
    assert len(prepared.test) == 5


def test_bad_test_fraction_and_bad_test_file_name_their_field(tokenizer: Tokenizer) -> None:
    kwargs = {"task": "sentiment", "tokenizer": tokenizer, "max_len": 64}
    with pytest.raises(InvalidRequest) as err:
        prepare(_review_rows(10), "r.jsonl", test_fraction=1.5, **kwargs)
    assert err.value.param == "test_fraction"
    with pytest.raises(InvalidRequest) as err:
        prepare(_review_rows(10), "r.jsonl", validation_fraction=0.6, test_fraction=0.4, **kwargs)
    assert err.value.param == "test_fraction"
    with pytest.raises(InvalidRequest) as err:
        prepare(
            _review_rows(10), "r.jsonl", test=b'{"prompt": 1}\n', test_filename="t.jsonl", **kwargs
        )
    assert err.value.param == "test_file" and "line 1" in err.value.message
