"""``POST /v1/feedback``: the correct value for a served prediction (role app+)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.deps import Caller, State

router = APIRouter(tags=["feedback"])


class FeedbackIn(BaseModel):
    request_id: str = Field(min_length=1, max_length=200, description="X-Request-Id or the id")
    correct: str = Field(max_length=10_000, description="the value the model should have given")


@router.post("/v1/feedback")
async def feedback(body: FeedbackIn, st: State, who: Caller) -> dict[str, Any]:
    """Scores the prediction and updates ``tunefleet_gateway_feedback_accuracy{tenant,adapter}``."""
    who.require("infer")
    return st.feedback.record(who.tenant, body.request_id, body.correct)
