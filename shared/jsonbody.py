"""Parse untrusted JSON text into a clear 400, whatever is wrong with it.

``json.loads`` raises ``RecursionError`` (not ``JSONDecodeError``) past ~1,000 nesting levels,
and ``UnicodeDecodeError`` on bytes that are not UTF-8; a handler that catches only the
first turns hostile input into a 500. Every place that parses a request's JSON by hand
goes through :func:`loads_untrusted`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


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


def form_model(raw: str, model: type[M], *, param: str) -> M:
    """A multipart form field holding JSON (``metadata`` of an archive upload) as ``model``;
    400 naming the field inside it (``metadata.base_model``) when it does not fit."""
    try:
        return model.model_validate(loads_untrusted(raw, what=param, param=param))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{param}.{field}: {err['msg']}", param=f"{param}.{field}") from exc
