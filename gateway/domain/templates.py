"""Integration templates: plain ``{field}`` substitution only.

``str.format`` is a small language: ``{x:>2000000000}`` pads to two billion characters (one
request, gigabytes of memory), ``{x:{y}}`` nests, ``{x.attr}`` and ``{x[0]}`` reach into
objects. A connector's template needs none of it: a template may hold only ``{name}`` fields
(and ``{{``/``}}`` for literal braces), checked when it is stored and again before it is
rendered (rows stored before this check existed), and it is rendered by substitution, never by
``str.format``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Set

from shared.errors import InvalidRequest

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def check_template(template: str, variables: Set[str] | Mapping[str, object]) -> None:
    """400 naming ``template`` unless it holds only plain ``{name}`` fields of ``variables``."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidRequest(f"template is malformed: {exc}", param="template") from exc
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if not _FIELD.fullmatch(field) or spec or conversion:
            shown = (
                "{"
                + field
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise InvalidRequest(
                f"template field {shown[:80]!r} is not allowed: use plain {{name}} fields "
                "(no format specs, conversions, attributes or indexes)",
                param="template",
            )
        if field not in variables:
            raise InvalidRequest(
                f"template uses {field} which input_mapping does not define", param="template"
            )


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` fields (``{{``/``}}`` are literal braces), without ``str.format``."""
    check_template(template, values)

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return m.group()[0]
        return values[name]

    return _TOKEN.sub(sub, template)
