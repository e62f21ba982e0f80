"""``POST /v1/fine_tuning/model_selection``: pick a base model / method for a dataset.

The selection logic lives in ``services.training.selection`` (written separately); until it
exists this route answers ``not_supported`` instead of guessing.
"""

from __future__ import annotations

import importlib
from typing import Any

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.training.deps import State
from services.training.domain import files
from shared.auth import TenantId
from shared.errors import Unprocessable
from shared.schemas.training import Task

router = APIRouter(tags=["fine-tuning"])


class ModelSelectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    training_file: str = Field(max_length=64)
    task: Task
    candidates: list[str] | None = Field(default=None, max_length=16)
    methods: list[str] | None = Field(default=None, max_length=4)


@router.post("/v1/fine_tuning/model_selection")
async def model_selection(body: ModelSelectionRequest, st: State, tenant: TenantId) -> Any:
    with st.db.session() as s:
        files.get_file(s, tenant, body.training_file, param="training_file")
    try:
        selection = importlib.import_module("services.training.selection")
    except ImportError:
        selection = None
    select = getattr(selection, "select_model", None)
    if select is None:
        raise Unprocessable(
            "model selection is not available in this training service yet",
            code="not_supported",
        )
    return await anyio.to_thread.run_sync(lambda: select(**body.model_dump()))
