"""``tunefleet demo``: the product end to end, over the public API only, as a customer would.

Onboard a tenant with keys → upload a Salesforce-style case export with a field mapping
(and a system message: the cases become chat conversations) → show the preparation report
(PII redacted, duplicates dropped) → fine-tune a LoRA adapter with a live progress bar →
base vs tuned on held-out data → promote to ``production`` → ask it through
``/v1/chat/completions`` → define a Salesforce connector (chat, the same system message) and
run it on new records → where to look next.

Runs unattended (``CI=true``, no terminal): no prompts, plain progress lines, exit 1 on the
first failure with one readable line.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gateway.cli.common import conn, fail
from gateway.cli.watch import sparkline, step_points, watch_job
from shared.clients.gateway import GatewayClient
from shared.datasets.samples import TICKET_LABELS, ticket_examples
from shared.errors import Conflict, TunefleetError

console = Console(stderr=True)
ADAPTER = "support-router"
SYSTEM = "Route the Salesforce support case to one queue."
# Source field → training role: the CRM's own column names, no reformatting by the customer;
# the system message makes each case a chat conversation (system, case as user, queue as
# assistant), trained through the chat template and served by /v1/chat/completions.
MAPPING = {"Subject": "prompt", "Description": "prompt", "Type": "label", "$system": SYSTEM}
PII = [  # planted in a few cases: the prep report must count them as redacted
    "Please call me back on +1 415 555 0134.",
    "My email is jane.doe@example.com if you need it.",
    "Card 4111 1111 1111 1111 was charged twice.",
]


def case_rows(n: int, seed: int, *, start: int = 0) -> list[dict[str, str]]:
    """Salesforce ``Case`` export rows from the ticket samples (Id/Subject/Description/Type)."""
    rows = []
    for i, ex in enumerate(ticket_examples(n, seed=seed)):
        words = ex["text"].split()
        rows.append(
            {
                "Id": f"500Dn00000{start + i:05d}",
                "Subject": " ".join(words[:4]),
                "Description": ex["text"],
                "Type": ex["label"],
                "Priority": ("Low", "Medium", "High")[i % 3],
            }
        )
    return rows


def export_csv(n: int = 160, seed: int = 1) -> bytes:
    """The training export: sample cases, a few with PII, and some exact duplicates."""
    rows = case_rows(n, seed)
    for i, sentence in enumerate(PII):
        rows[i * 7]["Description"] += " " + sentence
    rows += [dict(r) for r in rows[:8]]  # re-exported cases: the same rows twice
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def admin_key(home: Path, given: str | None) -> str:
    if given:
        return given
    key_file = home / "admin_key"
    if key_file.exists():
        return key_file.read_text().strip()
    fail(f"no admin key: pass --key, set TUNEFLEET_API_KEY, or run 'tunefleet up' ({key_file})")
    raise AssertionError("unreachable")


def step(n: int, title: str) -> None:
    console.rule(f"[bold]{n}. {title}")


async def run_demo(url: str, key: str, workdir: Path, *, tenant: str, max_steps: int) -> None:
    async with GatewayClient(url, key, timeout=120) as admin:
        step(1, f"Onboard tenant {tenant!r} with keys")
        try:
            await admin.create_tenant(tenant, "Demo Corp")
            console.print(f"tenant {tenant} created")
        except Conflict:
            console.print(f"tenant {tenant} exists: reusing it")
        integrator = (await admin.create_key(tenant, "integrator", "demo integrator"))["key"]
        app_key = (await admin.create_key(tenant, "app", "demo CRM connector"))["key"]
        console.print("keys: integrator (data, jobs, adapters) and app (inference only)")

    async with GatewayClient(url, integrator, timeout=300) as api:
        step(2, "Upload a Salesforce case export with a field mapping")
        export = workdir / "salesforce_cases.csv"
        export.write_bytes(export_csv())
        console.print(f"{export} ({export.stat().st_size} bytes), mapping {MAPPING}")
        uploaded = await api.upload_file(export, mapping=MAPPING)
        show_report(uploaded)

        step(3, "Fine-tune a LoRA adapter")
        job = await api.create_job(
            {
                "model": "tiny-llama",
                "training_file": uploaded["id"],
                "suffix": ADAPTER,
                "task": "classification",
                "training_method": "lora",
                "seed": 7,
                "hyperparameters": {"n_epochs": 2, "batch_size": 8, "max_steps": max_steps},
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "metadata": {"source": "tunefleet demo"},
            },
            idempotency_key=f"demo-{tenant}-{uploaded['id']}",
        )
        console.print(f"job {job['id']} ({job['status']})")
        job = await watch_job(api, job["id"], console, poll_s=1.0)
        losses = [
            float(p["train_loss"])
            for p in step_points(await api.job_events(job["id"]))
            if p.get("train_loss") is not None
        ]
        if losses:
            console.print(f"loss {losses[0]:.3f} → {losses[-1]:.3f}  {sparkline(losses)}")
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            raise TunefleetError(
                f"job {job['id']} {job['status']}: {err.get('message')}",
                code=err.get("code") or "job_failed",
            )

        step(4, "Base vs tuned on held-out cases")
        console.print(compare_table(job.get("result") or {}))

        step(5, "Promote to production")
        name, _, version = str(job["fine_tuned_model"]).partition("@")
        moved = await api.set_alias(name, "production", int(version.lstrip("v")))  # "@v1" or "@1"
        console.print(f"{name}@production → v{moved['version']} (hot swap on every replica)")

        step(6, "Ask it like any OpenAI chat model")
        case = case_rows(1, seed=5, start=99000)[0]
        answer = await api.chat(
            f"{name}@production",
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{case['Subject']}\n{case['Description']}"},
            ],
            temperature=0,
            choices_allowed=list(TICKET_LABELS),
        )
        said = answer["choices"][0]["message"]["content"]
        console.print(f"chat.completions: {case['Description']!r} → {said} (truth: {case['Type']})")

        step(7, "A Salesforce connector on the production adapter")
        spec = {
            "name": "case-router",
            "system": "salesforce",
            "task": "classification",
            "model": f"{name}@production",
            "input_mapping": {"subject": "$.Subject", "description": "$.Description"},
            "template": "{subject}\n{description}",  # the mapping's join, as in training
            "system_prompt": SYSTEM,  # chat-trained: the connector calls chat completions
            "output": {"field": "Type", "labels": list(TICKET_LABELS)},
        }
        try:
            await api.create_integration(spec)
        except Conflict:
            console.print("integration case-router exists: reusing it")
        held_out = case_rows(8, seed=3, start=90000)
        test = await api.test_integration(
            "case-router",
            [
                {
                    "record": {k: r[k] for k in ("Id", "Subject", "Description")},
                    "expected": r["Type"],
                }
                for r in held_out
            ],
        )
        console.print(f"connector test on 8 held-out cases: accuracy {test['accuracy']:.0%}")

    async with GatewayClient(url, app_key, timeout=300) as crm:
        new = [
            {k: r[k] for k in ("Id", "Subject", "Description")}
            for r in case_rows(5, seed=4, start=95000)
        ]
        answer = await crm.invoke_integration("case-router", new)
        table = Table("Id", "Subject", "Type (model)", title="new Salesforce cases, classified")
        for rec, out in zip(new, answer["data"], strict=True):
            table.add_row(rec["Id"], rec["Subject"], str(out.get("Type")))
        console.print(table)

    step(8, "Where to look next")
    console.print(
        Panel.fit(
            f"web console  {url}/console/  (sign in with an API key)\n"
            f"API docs     {url}/docs\n"
            f"metrics      {url}/metrics\n"
            f"tenant keys  integrator {integrator[:8]}…  app {app_key[:8]}… (shown once, above)",
            title="tunefleet",
        )
    )


def show_report(file_obj: dict[str, Any]) -> None:
    report = file_obj.get("prep_report") or {}
    dedup = report.get("dedup") or {}
    table = Table("prep report", "value", title=f"{file_obj['id']} ({file_obj.get('status')})")
    table.add_row("rows in → out", f"{report.get('rows_in')} → {report.get('rows_out')}")
    table.add_row(
        "PII redacted",
        ", ".join(f"{k}: {v}" for k, v in report.get("pii_redacted", {}).items()) or "none",
    )
    table.add_row(
        "duplicates dropped",
        ", ".join(f"{k}: {v}" for k, v in dedup.items() if isinstance(v, int)) or "0",
    )
    labels = (report.get("labels") or {}).get("counts")
    if labels:
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in labels.items()))
    split = report.get("split") or {}
    table.add_row("split", ", ".join(f"{k}: {v}" for k, v in split.items() if isinstance(v, int)))
    console.print(table)


def compare_table(result: dict[str, Any]) -> Table:
    base, tuned = result.get("base") or {}, result.get("tuned") or {}
    n = tuned.get("n") or base.get("n")
    title = f"held-out cases: {n}" if n else None
    table = Table("metric", "base tiny-llama", "tuned adapter", "change", title=title)
    for metric in sorted((set(base) | set(tuned)) - {"n"}):
        b, t = base.get(metric), tuned.get(metric)
        if not (isinstance(b, int | float) and isinstance(t, int | float)):
            continue  # labels such as "task" are not metrics
        table.add_row(metric, f"{b:.4f}", f"{t:.4f}", f"{t - b:+.4f}")
    return table


def demo(
    ctx: typer.Context,
    home: Annotated[Path, typer.Option(envvar="TUNEFLEET_HOME", help="state directory")] = Path(
        "var"
    ),
    tenant: Annotated[str, typer.Option(help="tenant to create or reuse")] = "demo",
    max_steps: Annotated[
        int, typer.Option(help="cap on training steps (2 CPU cores: keep small)")
    ] = 60,
) -> None:
    """Run the end-to-end product demo against a running fleet ('tunefleet up')."""
    c = conn(ctx)
    url = c.url or os.environ.get("TUNEFLEET_URL") or "http://127.0.0.1:8000"
    key = admin_key(home, c.key)
    workdir = home / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        asyncio.run(run_demo(url, key, workdir, tenant=tenant, max_steps=max_steps))
    except TunefleetError as exc:
        fail(f"{exc.message} ({exc.code})")
    console.print(f"[green]demo finished in {time.monotonic() - started:.0f}s[/green]")
