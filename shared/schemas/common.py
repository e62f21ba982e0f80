"""Shapes every list endpoint shares (API.md: lists, cursor pagination)."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class Page(BaseModel):
    """``?after=<id>&limit=<n>`` — cursor is the last id of the previous page."""

    after: str | None = None
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class Deleted(BaseModel):
    """What a DELETE answers (the object's kind in ``object``)."""

    id: str
    object: str
    deleted: Literal[True] = True
