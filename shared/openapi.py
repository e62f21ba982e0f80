"""OpenAPI for routes that read their own body (streamed uploads, bodies hashed for
``Idempotency-Key`` before they are parsed): the request schema they document is given
with ``openapi_extra`` instead of a body parameter, which would make FastAPI read the body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``#/$defs/…`` reference replaced by the definition itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema (validation mode) as one self-contained object."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, defs)
    return inlined


def json_body(model: type[BaseModel], **extra: Any) -> dict[str, Any]:
    """``openapi_extra`` documenting a required JSON body of ``model`` (plus ``extra``)."""
    body = {"required": True, "content": {"application/json": {"schema": schema_of(model)}}}
    return {"requestBody": body, **extra}


def multipart_body(
    fields: dict[str, dict[str, Any]], required: list[str], **extra: Any
) -> dict[str, Any]:
    """``openapi_extra`` documenting a ``multipart/form-data`` body of ``fields``."""
    schema = {"type": "object", "properties": fields, "required": required}
    body = {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    return {"requestBody": body, **extra}


BINARY = {"type": "string", "format": "binary"}


def binary_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route answering raw bytes (an archive, a file's content)."""
    return {200: {"description": description, "content": {media_type: {"schema": BINARY}}}}
