"""Parsing the ``model`` strings clients send: ``base``, ``name``, ``name@3``, ``name@staging``.

One parser for the whole fleet (registry resolution, gateway routing, inference). A bare name
means the ``production`` alias; the engine only ever sees immutable versions
(``tenant/name@vN``), so an alias move can never serve stale weights.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from shared.errors import InvalidRequest

MODEL_REF_HEADER = "X-Tunefleet-Model-Ref"
# An inference replica's answers carry the sequences it runs at that moment, from every
# gateway: each gateway's spill-over sees the others' load too (gateway.domain.routing).
RUNNING_HEADER = "X-Tunefleet-Replica-Running"
"""Set by the gateway on a generation it forwards: the immutable ref (``tenant/name@vN`` or a
base id) it resolved ``model`` to. The replica serves that ref as given."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model string. Exactly one of ``version``/``alias`` is set for adapters."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def selector(self) -> str:
        return f"v{self.version}" if self.version is not None else str(self.alias)


def parse_model(model: str, *, param: str = "model") -> ModelRef:
    """Parse ``name[@N|@vN|@alias]``. Raises InvalidRequest naming ``param``."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model must be a non-empty string", param=param)
    name, sep, selector = model.strip().partition("@")
    if not NAME_RE.fullmatch(name):  # fullmatch: "$" also matches before a final "\n"
        raise InvalidRequest(
            f"model name {name!r} is invalid: use lowercase letters, digits, '.', '_' or '-'",
            param=param,
            code="invalid_model",
        )
    if not sep:
        return ModelRef(name=name, alias=DEFAULT_ALIAS)
    digits = selector[1:] if selector[:1] == "v" else selector
    if digits.isascii() and digits.isdigit():  # "²".isdigit() is True, int("²") fails
        version = int(digits)
        if version < 1:
            raise InvalidRequest("adapter versions start at 1", param=param, code="invalid_model")
        return ModelRef(name=name, version=version)
    if ALIAS_RE.fullmatch(selector):
        return ModelRef(name=name, alias=selector)
    raise InvalidRequest(
        f"model selector {selector!r} is neither a version number nor an alias name",
        param=param,
        code="invalid_model",
    )


def version_ref(tenant: str, name: str, version: int) -> str:
    """The immutable identity of an adapter version, as the engine and headers show it."""
    return f"{tenant}/{name}@v{version}"


@functools.lru_cache(maxsize=4096)  # per request on the gateway; bounded, pure
def canonical_model(model: str) -> str:
    """One spelling per meaning, for caches and the registry query: ``a@1``, ``a@01``,
    ``a@v001`` are ``a@v1``; surrounding whitespace goes. A string the parser refuses is
    returned as given (the registry answers it, e.g. a base id outside the name rules)."""
    try:
        ref = parse_model(model)
    except InvalidRequest:
        return model
    if ref.version is not None:
        return f"{ref.name}@v{ref.version}"
    return ref.name if "@" not in model else f"{ref.name}@{ref.alias}"
