"""OpenAI-compatible wire models (completions, chat completions, models).

Field names and shapes follow OpenAI's; tunefleet additions (``choices_allowed``) are additive.
A field the fleet cannot honour is refused with a 400 naming it, as OpenAI refuses arguments it
does not know, never silently dropped (:mod:`shared.schemas.openai_params`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.errors import InvalidRequest
from shared.schemas.openai_params import refuse_unsupported

MAX_N = 8
MAX_CHOICES_ALLOWED = 256


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class SamplingFields(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="OpenAI's newer name for max_tokens"
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: list[str] | None = Field(default=None, description="a string or up to 4 strings")
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    choices_allowed: list[str] | None = Field(
        default=None, description="tunefleet: constrain the answer to one of these labels"
    )
    user: str | None = None
    # vLLM's extensions (same names as its OpenAI server): generate past EOS / at least N tokens.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_silent_drops(cls, data: Any) -> Any:
        # Raises InvalidRequest, not ValueError: pydantic lets it through, so the envelope
        # carries code unsupported_parameter/unknown_parameter and param = the field's name.
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        return refuse_unsupported(data, known)

    @model_validator(mode="after")
    def _max_completion_tokens(self) -> SamplingFields:
        cap = self.max_completion_tokens
        if cap is None:
            return self
        given = self.max_tokens if "max_tokens" in self.model_fields_set else None
        if given is not None and given != cap:
            raise InvalidRequest(
                f"max_tokens ({given}) and max_completion_tokens ({cap}) disagree; send one",
                param="max_completion_tokens",
                code="conflicting_parameters",
            )
        self.max_tokens = cap
        return self

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: object) -> object:
        stops = [v] if isinstance(v, str) else v
        if isinstance(stops, list) and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("choices_allowed")
    @classmethod
    def _choices(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v or len(v) > MAX_CHOICES_ALLOWED or any(not c.strip() for c in v):
            raise ValueError(f"choices_allowed takes 1 to {MAX_CHOICES_ALLOWED} non-empty labels")
        return v

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingFields:
        if self.choices_allowed and self.response_format and self.response_format.type != "text":
            raise ValueError("use either choices_allowed or response_format, not both")
        return self

    def json_schema(self) -> dict[str, Any] | None:
        rf = self.response_format
        if rf is None or rf.type == "text":
            return None
        if rf.type == "json_object":
            return {"type": "object"}
        assert rf.json_schema is not None
        return rf.json_schema.schema_


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="one prompt or a batch of prompts")
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= 64:
            raise ValueError("prompt lists take 1 to 64 prompts")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """Plain text of the message (text parts of multi-part content joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError("only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=512)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AbandonedUsageOut(BaseModel):
    """What a replica generated for a non-streamed call its caller left (internal)."""

    object: Literal["inference.abandoned_usage"] = "inference.abandoned_usage"
    request_id: str
    prompt_tokens: int
    completion_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = Field(
        default=None, description="tunefleet: the immutable id this one resolves to now"
    )
