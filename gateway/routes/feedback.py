"""``POST /v1/feedback``: the correct value for a served prediction (role app+)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import Caller, State
from shared.schemas.feedback import FeedbackIn, FeedbackOut

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback")
async def feedback(body: FeedbackIn, st: State, who: Caller) -> FeedbackOut:
    """Scores the prediction and updates ``tunefleet_gateway_feedback_accuracy{tenant,adapter}``."""
    who.require("infer")
    return FeedbackOut.model_validate(
        await st.feedback.record(who.tenant, body.request_id, body.correct)
    )
