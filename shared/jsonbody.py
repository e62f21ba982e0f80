"""Parse untrusted JSON text into a clear 400, whatever is wrong with it.

``json.loads`` raises ``RecursionError`` (not ``JSONDecodeError``) past ~1,000 nesting levels,
and ``UnicodeDecodeError`` on bytes that are not UTF-8; a handler that catches only the
first turns hostile input into a 500. Every place that parses a request's JSON by hand
goes through :func:`loads_untrusted`.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidRequest


def loads_untrusted(raw: str | bytes, *, what: str, param: str | None = None) -> Any:
    """``json.loads`` that raises :class:`InvalidRequest` naming ``what``/``param``."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"{what} is not valid JSON: {exc.msg} at char {exc.pos}", param=param
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not UTF-8 text", param=param) from exc
    except RecursionError as exc:
        raise InvalidRequest(f"{what} is nested too deeply", param=param) from exc
