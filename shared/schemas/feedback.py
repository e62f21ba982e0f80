"""Wire models of ``POST /v1/feedback`` (API.md: feedback)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class FeedbackIn(BaseModel):
    request_id: str = Field(min_length=1, max_length=200, description="X-Request-Id or the id")
    correct: str = Field(max_length=10_000, description="the value the model should have given")


class FeedbackOut(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    adapter: str
    predicted: str
    correct: str
    match: bool
    accuracy: float = Field(description="running accuracy of the tenant's adapter")
    count: int
