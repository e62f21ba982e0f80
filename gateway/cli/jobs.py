"""``tunefleet jobs``: create, watch, cancel and list fine-tuning jobs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.common import JsonOpt, call, emit_json, err, fail, out, parse_json_arg, show
from gateway.cli.watch import sparkline, step_points, watch_job

app = typer.Typer(help="fine-tuning jobs", no_args_is_help=True)
JOB_COLUMNS = ["id", "status", "model", "training_file", "fine_tuned_model", "trained_tokens"]


@app.command("create")
def create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="base model, e.g. tiny-llama")],
    training_file: Annotated[str, typer.Option(help="file-… id of the uploaded data")],
    validation_file: Annotated[str | None, typer.Option(help="file-… id")] = None,
    suffix: Annotated[str | None, typer.Option(help="adapter name for the result")] = None,
    task: Annotated[str | None, typer.Option(help="classification|sentiment|...")] = None,
    method: Annotated[str, typer.Option(help="transfer|lora|hybrid|full")] = "lora",
    epochs: Annotated[str, typer.Option(help="n_epochs or 'auto'")] = "auto",
    batch_size: Annotated[str, typer.Option(help="batch size or 'auto'")] = "auto",
    seed: Annotated[int | None, typer.Option()] = None,
    extra: Annotated[
        str | None, typer.Option(help="JSON (or @file) merged into the request body")
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow progress until the job ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a fine-tuning job (OpenAI shape plus tunefleet extras)."""
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "training_method": method,
        "hyperparameters": {"n_epochs": _auto(epochs), "batch_size": _auto(batch_size)},
    }
    for key, value in (
        ("validation_file", validation_file),
        ("suffix", suffix),
        ("task", task),
        ("seed", seed),
    ):
        if value is not None:
            body[key] = value
    more = parse_json_arg(extra, "--extra")
    if more is not None and not isinstance(more, dict):
        fail("--extra must be a JSON object")
    body.update(more or {})
    job = call(ctx, lambda c: c.create_job(body))
    if watch:
        job = _watch(ctx, job["id"], as_json)
    show(job, as_json, title="job")
    if watch and job.get("status") != "succeeded":
        raise typer.Exit(1)


@app.command("watch")
def watch_cmd(
    ctx: typer.Context,
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job: progress bar (step, loss, tokens/s) and loss sparkline until it ends."""
    job = _watch(ctx, job_id, as_json, timeout)
    show(job, as_json, title="job")
    if job.get("status") != "succeeded":
        raise typer.Exit(1)


def _watch(
    ctx: typer.Context, job_id: str, as_json: bool, timeout: float | None = None
) -> dict[str, Any]:
    job = call(ctx, lambda c: watch_job(c, job_id, err, timeout_s=timeout))
    if not as_json and job.get("error"):
        e = job["error"]
        err.print(f"[red]job {job['status']}:[/red] {e.get('message')} ({e.get('code')})")
    return job


@app.command("cancel")
def cancel(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """Stop a job (idempotent)."""
    show(call(ctx, lambda c: c.cancel_job(job_id)), as_json, title="job")


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs of your tenant."""
    show(call(ctx, lambda c: c.list_jobs(limit=limit)), as_json, JOB_COLUMNS, "jobs")


@app.command("get")
def get(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """One job, with its loss sparkline."""

    async def fetch(c: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await c.get_job(job_id), await c.job_events(job_id)

    job, events = call(ctx, fetch)
    if as_json:
        emit_json(job)
        return
    show(job, False, title="job")
    losses = [float(p["train_loss"]) for p in step_points(events) if p.get("train_loss")]
    if losses:
        out.print(f"loss {losses[0]:.3f} → {losses[-1]:.3f}  {sparkline(losses)}")


def _auto(value: str) -> int | float | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            fail(f"expected a number or 'auto', got {value!r}")
    raise AssertionError("unreachable")
