"""FastAPI dependencies: state on ``app.state`` reaches handlers through these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.registry.domain.adapters import PushPolicy
from services.registry.domain.dispatch import WebhookDispatcher
from services.registry.domain.model_artifacts import ModelPolicy
from services.registry.settings import RegistrySettings
from services.registry.storage.artifacts import FileArtifactStore
from shared.db import Database


@dataclass
class RegistryState:
    settings: RegistrySettings
    db: Database
    store: FileArtifactStore
    dispatcher: WebhookDispatcher
    policy: PushPolicy
    model_policy: ModelPolicy


def registry_state(request: Request) -> RegistryState:
    state: RegistryState = request.app.state.registry
    return state


def actor_header(x_tunefleet_actor: Annotated[str | None, Header()] = None) -> str:
    """Who acts (the gateway passes the API key id); internal callers otherwise."""
    return (x_tunefleet_actor or "internal")[:128]


State = Annotated[RegistryState, Depends(registry_state)]
Actor = Annotated[str, Depends(actor_header)]
