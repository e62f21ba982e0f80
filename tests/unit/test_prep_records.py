"""services.training.data.records: uploads (chat, prompt/completion, mapped CSV/JSON exports)
parsed into ``Example``s, with line-numbered errors for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from services.training.data.records import Example, LineError, ParseResult, parse_upload

CASE_MAPPING = {"Subject": "text", "Description": "text", "Type": "label"}


def _jsonl(*records: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _chat(*turns: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def _only_error(result: ParseResult) -> LineError:
    assert result.examples == [] or result.errors, result
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


# --- chat and prompt/completion ------------------------------------------------------------


def test_chat_jsonl_keeps_messages_and_splits_on_the_last_assistant_turn() -> None:
    data = _jsonl(
        _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")),
        _chat(("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")),
    )
    result = parse_upload(data, "train.jsonl", None)
    assert result.format == "chat"
    assert result.errors == []
    first, second = result.examples
    assert first == Example(
        1,
        "Be brief.\nHi",
        "Hello",
        None,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    )
    assert (second.line, second.prompt, second.completion) == (2, "2+2?\n4\nand 3+3?", "6")


def test_prompt_completion_jsonl_with_blank_lines_crlf_and_optional_label() -> None:
    data = (
        b'{"prompt": "Refund?", "completion": "Billing", "label": "Billing"}\r\n'
        b"\r\n"
        b'{"prompt": "Crash", "completion": "Bug report", "extra": 1}\r\n'
    )
    result = parse_upload(data, "train.jsonl", None)
    assert result.format == "prompt_completion"
    assert result.errors == []
    assert result.examples == [
        Example(1, "Refund?", "Billing", "Billing"),
        Example(3, "Crash", "Bug report", None),
    ]


def test_a_leading_utf8_bom_is_ignored() -> None:
    data = "\ufeff".encode() + _jsonl({"prompt": "a", "completion": "b"})
    assert parse_upload(data, "x.jsonl", None).examples == [Example(1, "a", "b")]


def test_invalid_role_names_line_and_message_index() -> None:
    data = _jsonl(
        _chat(("user", "hi"), ("assistant", "hello")),
        _chat(("user", "hi"), ("bot", "hello")),
    )
    error = _only_error(parse_upload(data, "x.jsonl", None))
    assert (error.line, error.field) == (2, "messages[1].role")
    assert "'bot'" in error.message and "assistant" in error.message


def test_empty_content_is_rejected() -> None:
    data = _jsonl(_chat(("user", "   "), ("assistant", "hello")))
    error = _only_error(parse_upload(data, "x.jsonl", None))
    assert (error.line, error.field, error.message) == (1, "messages[0].content", "is empty")


def test_non_string_content_and_non_object_message_are_rejected() -> None:
    data = _jsonl({"messages": [{"role": "user", "content": ["a"]}, "assistant: hi"]})
    errors = parse_upload(data, "x.jsonl", None).errors
    assert [(e.line, e.field) for e in errors] == [
        (1, "messages[0].content"),
        (1, "messages[1]"),
    ]
    assert "an array" in errors[0].message and "a string" in errors[1].message


def test_chat_needs_an_assistant_message() -> None:
    error = _only_error(parse_upload(_jsonl(_chat(("user", "hello?"))), "x.jsonl", None))
    assert (error.line, error.field) == (1, "messages")
    assert "assistant" in error.message


def test_messages_must_be_a_non_empty_array() -> None:
    error = _only_error(parse_upload(_jsonl({"messages": []}), "x.jsonl", None))
    assert (error.line, error.field) == (1, "messages")


def test_missing_prompt_and_empty_completion_are_both_reported() -> None:
    data = _jsonl({"prompt": "ok", "completion": "ok"}, {"completion": ""})
    errors = parse_upload(data, "x.jsonl", None).errors
    assert [str(e) for e in errors] == [
        "line 2: prompt: missing (the file is in prompt/completion format)",
        "line 2: completion: is empty",
    ]


def test_a_line_in_another_format_than_the_file_is_an_error() -> None:
    data = _jsonl(_chat(("user", "a"), ("assistant", "b")), {"prompt": "a", "completion": "b"})
    error = _only_error(parse_upload(data, "x.jsonl", None))
    assert str(error) == (
        "line 2: messages: a prompt/completion record in a chat file (format set by line 1)"
    )


def test_record_without_known_keys_is_an_error() -> None:
    error = _only_error(parse_upload(_jsonl({"question": "a", "answer": "b"}), "x.jsonl", None))
    assert (error.line, error.field) == (1, "messages")


def test_invalid_json_names_line_and_column() -> None:
    data = _jsonl({"prompt": "a", "completion": "b"}) + b'{"prompt": "a", "completion": }\n'
    error = _only_error(parse_upload(data, "x.jsonl", None))
    assert (error.line, error.field) == (2, "json")
    assert error.message.startswith("invalid JSON: Expecting value (column 31)")


def test_a_json_line_that_is_not_an_object_is_an_error() -> None:
    error = _only_error(parse_upload(b'["a", "b"]\n', "x.jsonl", None))
    assert (error.line, error.message) == (1, "expected a JSON object, got an array")


# --- bytes-level limits --------------------------------------------------------------------


def test_invalid_utf8_names_line_and_byte_offset() -> None:
    good = _jsonl({"prompt": "héllo", "completion": "b"})  # 'é' is two valid bytes
    data = good + b'{"prompt": "caf\xe9", "completion": "b"}\n'
    error = _only_error(parse_upload(data, "x.jsonl", None))
    assert (error.line, error.field) == (2, "encoding")
    offset = len(good) + len(b'{"prompt": "caf')
    assert f"byte 0xe9 at byte offset {offset} of the file (byte 16 of the line)" in error.message


def test_every_bad_utf8_line_is_reported_before_parsing() -> None:
    data = b"\xff\n" + _jsonl({"prompt": "a", "completion": "b"}) + b"\xc3\x28\n"
    result = parse_upload(data, "x.jsonl", None)
    assert [(e.line, e.field) for e in result.errors] == [(1, "encoding"), (3, "encoding")]
    assert result.examples == []


def test_line_longer_than_the_limit_is_rejected() -> None:
    long = _jsonl({"prompt": "x" * 1_000_001, "completion": "b"})
    error = _only_error(parse_upload(_jsonl({"prompt": "a", "completion": "b"}) + long, "x.jsonl"))
    assert (error.line, error.field) == (2, "line")
    assert "longer than the 1,000,000-byte limit" in error.message


def test_nesting_deeper_than_32_levels_is_rejected_without_recursion() -> None:
    deep = '{"prompt": "a", "completion": "b", "meta": ' + "[" * 40 + "]" * 40 + "}"
    error = _only_error(parse_upload(deep.encode(), "x.jsonl", None))
    assert (error.line, error.field) == (1, "json")
    assert "nested deeper than 32 levels" in error.message
    hostile = b"[" * 200_000 + b"]" * 200_000  # would overflow a recursive parser
    assert "nested deeper" in _only_error(parse_upload(hostile, "x.jsonl")).message


def test_nesting_up_to_32_levels_is_accepted() -> None:
    ok = '{"prompt": "a", "completion": "b", "meta": ' + "[" * 31 + "]" * 31 + "}"
    assert parse_upload(ok.encode(), "x.jsonl").examples == [Example(1, "a", "b")]


def test_empty_file_and_whitespace_only_file_are_errors() -> None:
    for data in (b"", b"\n  \n"):
        error = _only_error(parse_upload(data, "x.jsonl", None))
        assert (error.line, error.field, error.message) == (0, "file", "the file is empty")


def test_errors_stop_at_max_errors() -> None:
    data = b"not json\n" * 50
    assert len(parse_upload(data, "x.jsonl", None).errors) == 10
    assert len(parse_upload(data, "x.jsonl", None, max_errors=3).errors) == 3


# --- mapped CSV exports --------------------------------------------------------------------


def test_csv_export_joins_text_fields_in_mapping_order_with_quoted_newlines() -> None:
    data = (
        b"Id,Type,Description,Subject,Priority\r\n"
        b'1,Billing,"Amount is wrong.\r\nSee attachment.",Invoice,High\r\n'
        b"2,Technical,,Login fails,Low\r\n"
        b'3,"Technical","Crash, then ""freeze""",App,Low\r\n'
    )
    result = parse_upload(data, "cases.csv", CASE_MAPPING)
    assert result.format == "csv"
    assert result.errors == []
    assert result.examples == [
        Example(2, "Invoice\nAmount is wrong.\r\nSee attachment.", "Billing", "Billing"),
        Example(4, "Login fails", "Technical", "Technical"),  # empty Description skipped
        Example(5, 'App\nCrash, then "freeze"', "Technical", "Technical"),
    ]


def test_csv_delimiter_is_sniffed_despite_multiline_fields() -> None:
    data = (
        b'Subject;Description;Type\n"Hi, there";"line one\nline two, with commas";Sales\n'
        b"Order;Where, when?;Shipping\n"
    )
    result = parse_upload(data, "export.csv", CASE_MAPPING)
    assert result.errors == []
    assert [(e.line, e.prompt, e.label) for e in result.examples] == [
        (2, "Hi, there\nline one\nline two, with commas", "Sales"),
        (4, "Order\nWhere, when?", "Shipping"),
    ]


def test_tsv_and_header_names_are_matched_trimmed_and_case_insensitively() -> None:
    data = b" subject \tDESCRIPTION\ttype\nA\tB\tC\n"
    result = parse_upload(data, "export.tsv", CASE_MAPPING)
    assert result.examples == [Example(2, "A\nB", "C", "C")]


def test_translation_mapping_uses_text_and_target() -> None:
    data = b"source_en,target_de\nGood morning,Guten Morgen\n"
    result = parse_upload(data, "pairs.csv", {"source_en": "text", "target_de": "target"})
    assert result.examples == [Example(2, "Good morning", "Guten Morgen", None)]


def test_csv_with_prompt_completion_columns_needs_no_mapping() -> None:
    data = b"prompt,completion,notes\nQ,A,x\n"
    assert parse_upload(data, "x.csv", None).examples == [Example(2, "Q", "A")]


def test_csv_without_mapping_or_target_columns_is_an_error() -> None:
    error = _only_error(parse_upload(b"Subject,Body\na,b\n", "x.csv", None))
    assert (error.line, error.field) == (1, "mapping")
    assert "Subject, Body" in error.message


def test_missing_mapped_column_is_named() -> None:
    data = b"Subject,Descripton,Type\na,b,c\n"
    error = _only_error(parse_upload(data, "cases.csv", CASE_MAPPING))
    assert (error.line, error.field) == (1, "Description")
    assert "mapped column 'Description' is not in the CSV header" in error.message
    assert "Subject, Descripton, Type" in error.message


def test_row_with_wrong_column_count_is_an_error_but_trailing_empty_cells_are_not() -> None:
    data = b"Subject,Description,Type\na,b,c,,\na,b\nd,e,f\n"
    result = parse_upload(data, "cases.csv", CASE_MAPPING)
    assert [str(e) for e in result.errors] == ["line 3: row: expected 3 columns, got 2"]
    assert [e.line for e in result.examples] == [2, 4]


def test_empty_mapped_values_name_the_source_fields() -> None:
    data = b"Subject,Description,Type\n,  ,Billing\nok,,\n"
    errors = parse_upload(data, "cases.csv", CASE_MAPPING).errors
    assert [str(e) for e in errors] == [
        "line 2: Subject+Description: empty text",
        "line 3: Type: empty label",
    ]


def test_malformed_csv_quote_is_reported_with_its_line() -> None:
    data = b'Subject,Description,Type\na,b,c\nd,"e"x,f\n'
    result = parse_upload(data, "cases.csv", CASE_MAPPING)
    assert [(e.line, e.field) for e in result.errors] == [(3, "csv")]
    assert "malformed CSV" in result.errors[0].message


# --- mapped JSON exports -------------------------------------------------------------------


def test_json_array_export_with_line_numbers_dotted_paths_and_scalars() -> None:
    data = json.dumps(
        [
            {"Subject": "Refund", "Body": {"Text": "Money back"}, "Type": "Billing"},
            {"Subject": "Order", "Body": {"Text": 42}, "Type": True},
        ],
        indent=2,
    ).encode()
    mapping = {"Subject": "text", "Body.Text": "text", "Type": "label"}
    result = parse_upload(data, "export.json", mapping)
    assert result.format == "json"
    assert result.errors == []
    assert result.examples == [
        Example(2, "Refund\nMoney back", "Billing", "Billing"),
        Example(9, "Order\n42", "true", "true"),
    ]


def test_jsonl_export_with_mapping() -> None:
    data = _jsonl({"q": "Hi", "a": "Hello"}, {"q": "Bye", "a": "Ciao", "other": None})
    result = parse_upload(data, "export.jsonl", {"q": "prompt", "a": "completion"})
    assert result.format == "jsonl"
    assert result.examples == [Example(1, "Hi", "Hello"), Example(2, "Bye", "Ciao")]


def test_mapped_json_field_absent_from_every_record_is_named() -> None:
    data = _jsonl({"Subject": "a", "Type": "b"}, {"Subject": "c", "Type": "d"})
    error = _only_error(parse_upload(data, "export.jsonl", CASE_MAPPING))
    assert (error.line, error.field) == (0, "Description")
    assert str(error) == "Description: mapped field 'Description' is not in any record"


def test_mapped_json_object_value_is_an_error() -> None:
    data = _jsonl({"Subject": {"nested": 1}, "Description": "d", "Type": "t"})
    error = _only_error(parse_upload(data, "export.jsonl", CASE_MAPPING))
    assert (error.line, error.field, error.message) == (
        1,
        "Subject",
        "expected text, got an object",
    )


def test_json_array_syntax_errors_and_trailing_content() -> None:
    broken = b'[\n  {"q": "a", "a": "b"},\n  {"q": "c" "a": "d"}\n]'
    error = _only_error(parse_upload(broken, "x.json", {"q": "prompt", "a": "completion"}))
    assert (error.line, error.field) == (3, "json")
    trailing = b'[{"q": "a", "a": "b"}]\n{"q": 1}'
    error = _only_error(parse_upload(trailing, "x.json", {"q": "prompt", "a": "completion"}))
    assert (error.line, error.message) == (2, "unexpected content after the array")


def test_deep_json_array_export_is_rejected() -> None:
    data = b'[\n{"q": "a", "a": ' + b"[" * 40 + b"]" * 40 + b"}]"
    error = _only_error(parse_upload(data, "x.json", {"q": "prompt", "a": "completion"}))
    assert (error.line, error.field) == (2, "json")
    assert "nested deeper than 32 levels" in error.message


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"Subject": "body"}, "target must be one of"),
        (
            {"Subject": "prompt", "Description": "text", "Type": "label"},
            "either 'prompt' or 'text'",
        ),
        ({"Type": "label"}, "no field is mapped to 'prompt' or 'text'"),
        ({"Subject": "text"}, "no field is mapped to 'completion', 'target' or 'label'"),
        ({}, "must be a non-empty object"),
    ],
)
def test_invalid_mappings_are_reported(mapping: dict[str, str], message: str) -> None:
    result = parse_upload(b"Subject,Description,Type\na,b,c\n", "x.csv", mapping)
    assert result.errors and all(e.line == 0 for e in result.errors)
    assert any(message in e.message for e in result.errors), result.errors


def test_a_system_message_in_the_mapping_makes_chat_examples() -> None:
    data = b"Subject,Body,Type\r\nCard charged,I was charged twice,billing\r\n"
    system = "Route the support case to one queue."
    mapping = {"Subject": "prompt", "Body": "prompt", "Type": "label", "$system": system}
    result = parse_upload(data, "cases.csv", mapping)
    assert result.errors == []
    (ex,) = result.examples
    assert ex.messages == [
        {"role": "system", "content": system},
        {"role": "user", "content": "Card charged\nI was charged twice"},
        {"role": "assistant", "content": "billing"},
    ]
    assert ex.label == "billing"
    records = json.dumps([{"Subject": "Parcel late", "Type": "shipping"}]).encode()
    (chat,) = parse_upload(
        records, "cases.json", {"Subject": "prompt", "Type": "label", "$system": system}
    ).examples
    assert chat.messages is not None and chat.messages[1]["content"] == "Parcel late"


@pytest.mark.parametrize("value", ["", "   ", 7, "x" * 4001])
def test_a_bad_system_message_names_the_mapping_entry(value: object) -> None:
    data = b"Subject,Type\r\nCard charged,billing\r\n"
    mapping = {"Subject": "prompt", "Type": "label", "$system": value}
    result = parse_upload(data, "cases.csv", mapping)  # type: ignore[arg-type]
    assert result.examples == []
    assert [e.field for e in result.errors] == ["mapping.$system"]
