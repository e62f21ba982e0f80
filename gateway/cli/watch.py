"""Follow a fine-tuning job: a rich progress bar over its events (step, loss, tokens/s) and a
loss sparkline, until the job reaches a final state. Without a terminal (CI) it prints one
plain line per new step instead of redrawing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.clients.gateway import GatewayClient

FINAL = {"succeeded", "failed", "cancelled"}
BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Unicode block sparkline of the last ``width`` values (flat series draw mid-height)."""
    tail = values[-width:]
    if not tail:
        return ""
    lo, hi = min(tail), max(tail)
    span = hi - lo
    if span <= 0:
        return BARS[3] * len(tail)
    return "".join(BARS[min(7, int((v - lo) / span * 7.999))] for v in tail)


def step_points(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events carrying a training step, oldest first, one per step (the API lists newest first)."""
    seen: dict[int, dict[str, Any]] = {}
    for e in events:
        data = e.get("data") or {}
        if isinstance(data, dict) and data.get("step") is not None:
            seen.setdefault(int(data["step"]), data)
    return [seen[s] for s in sorted(seen)]


async def watch_job(
    client: GatewayClient,
    job_id: str,
    console: Console,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the job and its events until it ends; return the final job object."""
    live = console.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.fields[job]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  {task.fields[spark]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not live,
    )
    task = progress.add_task("train", total=None, job=job_id, loss="-", tps="-", spark="")
    shown = 0
    losses: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    with progress:
        while True:
            job = await client.get_job(job_id)
            points = step_points(await client.job_events(job_id, limit=100))
            for p in points[shown:] if len(points) > shown else []:
                if p.get("train_loss") is not None:
                    losses.append(float(p["train_loss"]))
                if on_point:
                    on_point(p)
                if not live:
                    console.print(_plain(p), highlight=False)
            shown = max(shown, len(points))
            if points:
                last = points[-1]
                progress.update(
                    task,
                    completed=int(last.get("step", 0)),
                    total=last.get("total_steps") or None,
                    loss=_fmt(last.get("train_loss")),
                    tps=_fmt(last.get("tokens_per_second"), 0),
                    spark=sparkline(losses),
                )
            if job.get("status") in FINAL:
                if points and points[-1].get("total_steps") and job["status"] == "succeeded":
                    progress.update(task, completed=points[-1]["total_steps"])
                return job
            if deadline is not None and loop.time() > deadline:
                return job
            await asyncio.sleep(poll_s)


def _plain(p: dict[str, Any]) -> str:
    total = f"/{p['total_steps']}" if p.get("total_steps") else ""
    return (
        f"step {p.get('step')}{total}  loss {_fmt(p.get('train_loss'))}  "
        f"valid {_fmt(p.get('valid_loss'))}  {_fmt(p.get('tokens_per_second'), 0)} tok/s"
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)
