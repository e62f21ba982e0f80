"""A non-streamed generation is abandoned (its upstream call closed) when the client goes
away, and only then: the plain watcher task that replaced the per-request task group."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.responses import Response
from starlette.requests import Request

from shared.disconnect import cancel_on_disconnect


def _request(gone: asyncio.Event) -> Request:
    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


async def test_client_gone_cancels_the_work() -> None:
    gone, cancelled = asyncio.Event(), []

    async def work() -> Response:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return Response(b"late")

    task = asyncio.create_task(cancel_on_disconnect(_request(gone), work))
    await asyncio.sleep(0.05)
    gone.set()
    resp = await asyncio.wait_for(task, 2)
    assert resp.status_code == 499 and cancelled


async def test_finished_work_answers_and_other_cancellations_propagate() -> None:
    async def quick() -> Response:
        return Response(b"ok")

    resp = await cancel_on_disconnect(_request(asyncio.Event()), quick)
    assert resp.body == b"ok"

    async def slow() -> Response:
        await asyncio.sleep(10)
        return Response(b"late")

    task = asyncio.create_task(cancel_on_disconnect(_request(asyncio.Event()), slow))
    await asyncio.sleep(0.05)
    task.cancel()  # e.g. the server shutting down: not a client disconnect
    with pytest.raises(asyncio.CancelledError):
        await task
