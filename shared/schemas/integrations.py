"""Wire models of ``/v1/integrations`` (API.md: integrations). What a create accepts is
``gateway.domain.integrations.IntegrationSpec``; these are the other bodies and answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BATCH = 100

Record = dict[str, Any]


class IntegrationOut(BaseModel):
    object: Literal["integration"] = "integration"
    id: str
    name: str
    system: str
    task: str
    model: str
    input_mapping: dict[str, str]
    template: str
    output: dict[str, Any] = Field(description="output spec; _options: id_field, max_tokens")
    created: int


class IntegrationDeleted(BaseModel):
    object: Literal["integration"] = "integration"
    id: str
    deleted: Literal[True] = True


class InvokeRequest(BaseModel):
    """Exactly one of ``record`` and ``records``."""

    record: Record | None = None
    records: list[Record] | None = Field(default=None, min_length=1, max_length=MAX_BATCH)


class InvokeOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Record] = Field(description="{<id field>: …, <output.field>: answer} per record")
    ids: list[str] = Field(description="completion ids, to send feedback for")
    has_more: bool = False


class TestSample(BaseModel):
    record: Record
    expected: Any


class TestRequest(BaseModel):
    samples: list[TestSample] = Field(min_length=1, max_length=MAX_BATCH)


class TestRow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    index: int
    id: Any = Field(description="the record's id field, as sent")
    expected: str
    predicted: str
    passed: bool = Field(alias="pass")


class TestReport(BaseModel):
    """Stores nothing: a pass/fail table and the accuracy over the samples."""

    object: Literal["integration.test"] = "integration.test"
    integration: str
    results: list[TestRow]
    passed: int
    total: int
    accuracy: float
