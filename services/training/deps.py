"""FastAPI dependencies: state on ``app.state`` reaches handlers through these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from services.training.domain.erasures import Erasures
from services.training.domain.lifecycle import JobLifecycle
from services.training.settings import TrainingSettings
from services.training.storage.files import BlobStore
from shared.db import Database


@dataclass
class TrainingState:
    settings: TrainingSettings
    db: Database
    store: BlobStore
    lifecycle: JobLifecycle
    erasures: Erasures


def training_state(request: Request) -> TrainingState:
    state: TrainingState = request.app.state.training
    return state


def runner_token(request: Request) -> str:
    """The bearer token a job runner presents (checked against its job by the domain)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


State = Annotated[TrainingState, Depends(training_state)]
RunnerToken = Annotated[str, Depends(runner_token)]
