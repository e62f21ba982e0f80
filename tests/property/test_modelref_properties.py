"""Properties of ``shared.modelref.parse_model``: every valid form round-trips, everything
else is an InvalidRequest naming the field (never another exception)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InvalidRequest
from shared.modelref import ALIAS_RE, DEFAULT_ALIAS, NAME_RE, ModelRef, parse_model, version_ref

PROPERTY = settings(max_examples=300, deadline=None)
# Strict forms (fullmatch): "$" in a pattern also matches before a trailing newline.
STRICT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STRICT_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")

names = st.from_regex(NAME_RE, fullmatch=True)
aliases = st.from_regex(ALIAS_RE, fullmatch=True).filter(
    lambda a: not a.startswith("v") or not a[1:].isdigit()
)
versions = st.integers(1, 10**9)


def render(ref: ModelRef) -> str:
    return f"{ref.name}@{ref.version}" if ref.version is not None else f"{ref.name}@{ref.alias}"


@PROPERTY
@given(names, versions)
def test_versions_round_trip_in_both_spellings(name: str, version: int) -> None:
    ref = parse_model(f"{name}@{version}")
    assert ref == ModelRef(name=name, version=version) == parse_model(f"{name}@v{version}")
    assert parse_model(render(ref)) == ref
    assert ref.selector == f"v{version}"
    assert version_ref("acme", name, version) == f"acme/{name}@v{version}"


@PROPERTY
@given(names, aliases)
def test_aliases_round_trip(name: str, alias: str) -> None:
    ref = parse_model(f"{name}@{alias}")
    assert ref == ModelRef(name=name, alias=alias)
    assert parse_model(render(ref)) == ref


@PROPERTY
@given(names)
def test_bare_name_means_production_and_surrounding_space_is_ignored(name: str) -> None:
    assert parse_model(name) == ModelRef(name=name, alias=DEFAULT_ALIAS)
    assert parse_model(f"  {name}\t") == parse_model(name)


@PROPERTY
@given(
    st.one_of(st.text(max_size=80), st.builds("{}@{}".format, names, st.text(max_size=6))),
    st.sampled_from(["model", "body.model"]),
)
def test_anything_either_parses_to_a_valid_ref_or_is_a_400_naming_the_field(
    text: str, param: str
) -> None:
    try:
        ref = parse_model(text, param=param)
    except InvalidRequest as exc:
        assert exc.param == param and exc.status == 400
        return
    assert STRICT_NAME.fullmatch(ref.name), repr(ref.name)
    assert (ref.version is None) != (ref.alias is None)
    if ref.version is not None:
        assert ref.version >= 1
    else:
        assert STRICT_ALIAS.fullmatch(str(ref.alias)), repr(ref.alias)
    assert parse_model(render(ref)) == ref


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "  ",
        "Upper",
        "-lead",
        "a@0",
        "a@v0",
        "a@",
        "a@Prod",
        "a@1.5",
        "a@b@c",
        "a b",
        "a\n@1",
        "a@prod\n@x",
        "a@\u00b2",
        "a@\u0661",
        "a@v\u00b2",
    ],
)
def test_rejects(bad: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_model(bad)
    assert exc.value.param == "model"


@pytest.mark.parametrize("bad", [None, 3, ["a"]])
def test_non_strings_rejected(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_model(bad)  # type: ignore[arg-type]
