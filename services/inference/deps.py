"""Dependencies of the inference routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.inference.domain.serving import Server


def server(request: Request) -> Server:
    srv: Server = request.app.state.server
    return srv


Srv = Annotated[Server, Depends(server)]
