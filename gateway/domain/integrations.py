"""Connectors: a CRM/ERP/CMS record in, a model call, the answer back in the system's own
field names, so the system of record needs no prompt engineering.

An integration maps template variables to JSONPaths into the record, renders the template into
a prompt, calls ``model`` (an alias form, so a hot swap changes what every connector uses), and
writes the answer to ``output.field`` next to the record's id under the system's id field.
Labels (``output.labels``) are enforced by the engine (``choices_allowed``), never by parsing.

The call is the one the adapter was trained for: with ``system_prompt`` (chat-trained models, such
as an export uploaded with a ``"$system"`` mapping entry) a chat completion of that system
message and the rendered template as the user's turn; without it a plain completion of the
rendered template.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from jsonpath_ng import parse as parse_jsonpath  # type: ignore[import-untyped]
from pydantic import BaseModel, Field, field_validator, model_validator

from shared.errors import InvalidRequest
from shared.modelref import NAME_RE, parse_model
from shared.schemas.integrations import MAX_BATCH
from shared.schemas.openai import MAX_CHOICES_ALLOWED

System = Literal["salesforce", "dynamics", "sap", "hubspot", "zendesk", "generic"]
Task = Literal["classification", "sentiment", "translation", "generation"]
LABELLED_TASKS = ("classification", "sentiment")
# Where each system keeps a record's id (Dynamics 365: the entity's <name>id; cases here).
ID_FIELDS: dict[str, str] = {
    "salesforce": "Id",
    "dynamics": "incidentid",
    "sap": "ObjectID",
    "hubspot": "id",
    "zendesk": "id",
    "generic": "id",
}
VAR_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class OutputSpec(BaseModel):
    field: str = Field(min_length=1, max_length=200)
    labels: list[str] | None = Field(default=None, max_length=MAX_CHOICES_ALLOWED)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not x.strip() for x in v)):
            raise ValueError("labels must be non-empty strings")
        return v


class IntegrationSpec(BaseModel):
    """What ``POST /v1/integrations`` accepts (every error names its field)."""

    name: str = Field(pattern=NAME_RE.pattern)
    system: System
    task: Task = "classification"
    model: str = Field(min_length=1, max_length=200)
    input_mapping: dict[str, str] = Field(min_length=1, max_length=50)
    template: str = Field(min_length=1, max_length=20_000)
    output: OutputSpec
    id_field: str | None = Field(default=None, max_length=200)
    max_tokens: int = Field(default=64, ge=1, le=2048)
    system_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="call /v1/chat/completions with this system message (chat-trained models)",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        parse_model(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> IntegrationSpec:
        for var, path in self.input_mapping.items():
            if not re.match(VAR_RE, var):
                raise InvalidRequest(
                    f"input_mapping variable {var!r} must be an identifier", param="input_mapping"
                )
            try:
                parse_jsonpath(path)
            except Exception as exc:  # the parser raises several unrelated types
                raise InvalidRequest(
                    f"input_mapping.{var}: {path!r} is not a valid JSONPath ({exc})",
                    param=f"input_mapping.{var}",
                ) from exc
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise InvalidRequest(f"template is malformed: {exc}", param="template") from exc
        unknown = sorted(n for n in names if n not in self.input_mapping)
        if unknown:
            raise InvalidRequest(
                f"template uses {', '.join(unknown)} which input_mapping does not define",
                param="template",
            )
        if self.task in LABELLED_TASKS and not self.output.labels:
            raise InvalidRequest(
                f"task {self.task!r} needs output.labels (the allowed answers)",
                param="output.labels",
            )
        return self

    @property
    def record_id_field(self) -> str:
        return self.id_field or ID_FIELDS[self.system]


def extract(spec: IntegrationSpec, record: Any, where: str) -> dict[str, str]:
    """The template variables from one record; a missing value is a 400 naming it."""
    if not isinstance(record, dict):
        raise InvalidRequest(f"{where} must be a JSON object", param=where)
    out: dict[str, str] = {}
    for var, path in spec.input_mapping.items():
        found = [m.value for m in parse_jsonpath(path).find(record)]
        if not found or found[0] is None:
            raise InvalidRequest(
                f"{where} has no value at {path} (input_mapping.{var})", param=f"{where}.{var}"
            )
        value = found[0]
        out[var] = value if isinstance(value, str) else str(value)
    return out


def prompt_for(spec: IntegrationSpec, record: Any, where: str) -> str:
    return spec.template.format(**extract(spec, record, where))


def model_call(spec: IntegrationSpec, prompt: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of the model call for a rendered prompt: a chat completion when the
    integration has a system message, else a plain completion."""
    if spec.system_prompt is None:
        return "/v1/completions", completion_body(spec, prompt)
    body: dict[str, Any] = {
        "model": spec.model,
        "messages": [
            {"role": "system", "content": spec.system_prompt},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": spec.max_tokens,
        "temperature": 0,
    }
    if spec.output.labels:
        body["choices_allowed"] = list(spec.output.labels)
    return "/v1/chat/completions", body


def completion_body(spec: IntegrationSpec, prompt: str) -> dict[str, Any]:
    """A plain completion of the rendered template: connectors' adapters are trained on
    prompt/completion rows (the raw prompt, no chat template), and ``/v1/completions`` renders
    it exactly so (:mod:`shared.rendering`).

    Labels go as the user wrote them: inference holds the engine to each label as training
    spelled it after this prompt (``" billing"``, a new word) and answers ``"billing"``."""
    body: dict[str, Any] = {
        "model": spec.model,
        "prompt": prompt,
        "max_tokens": spec.max_tokens,
        "temperature": 0,
    }
    if spec.output.labels:
        body["choices_allowed"] = list(spec.output.labels)
    return body


def mapped(spec: IntegrationSpec, record: dict[str, Any], answer: str) -> dict[str, Any]:
    """The answer in the system's field names: ``{<id field>: id, <output.field>: answer}``."""
    out: dict[str, Any] = {}
    if spec.record_id_field in record:
        out[spec.record_id_field] = record[spec.record_id_field]
    out[spec.output.field] = answer.strip()
    return out


def records_of(body: Any) -> list[Any]:
    """``{"record": {...}}`` or ``{"records": [...]}`` (at most MAX_BATCH)."""
    if not isinstance(body, dict) or ("record" in body) == ("records" in body):
        raise InvalidRequest(
            'send either "record" (an object) or "records" (a list)', param="record"
        )
    if "record" in body:
        return [body["record"]]
    records = body["records"]
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_BATCH:
        raise InvalidRequest(f"records must be a list of 1 to {MAX_BATCH} objects", param="records")
    return records
