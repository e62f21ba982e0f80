"""Fine-tuning quality: base vs tuned on held-out cases that paraphrase the training data,
and on new draws of the training family.

    .venv/bin/python benchmarks/quality.py [--tasks router,sentiment,translation,dining,hobby,games]
        [--n-train 400] [--n-heldout 60] [--seed 0] [--workers 2] [--model-dir DIR]
        [--url http://127.0.0.1:8000 --key KEY] [--hyperparameters JSON] [--lora JSON]
        [--out benchmarks/results/quality-<host>.json]

Data: :mod:`shared.datasets.quality` (train split = one template family, held-out split =
other sentence frames and other entities). For every task the script does what a customer
does with the official ``openai`` SDK against the gateway: upload the training split as
chat JSONL (``files.create``), ``fine_tuning.jobs.create`` with the default recipe (no
hyperparameters unless ``--hyperparameters``/``--lora`` are given), poll until the job
ends, then ask ``chat.completions`` (system + user, ``temperature=0``) for every held-out
case, once with the base model (``tiny-llama``) and once with ``job.fine_tuned_model``.
Classification passes ``extra_body={"choices_allowed": labels}`` and is scored by
accuracy and macro-F1; translation is plain chat scored by corpus chrF (sacrebleu).
Both models are also asked ``--n-heldout`` *new draws* of the training family (``new_draws``
in the JSON; :func:`tests.support.heldout.fresh_cases`, as the SDK end-to-end test draws
them): cases the generator makes like the training rows, balanced over the labels, none of
them worded like one (not even ignoring digits, punctuation and case, the preparation's
near-duplicate form), which is what a customer's next tickets look like.

Without ``--url`` the fleet is started as processes (registry, inference, training,
gateway; :class:`gateway.cli.supervisor.Supervisor`) on free loopback ports with a
temporary home and the base model from ``--model-dir`` (default
``$TUNEFLEET_HOME/models/tiny-llama``), and stopped at the end. The JSON result goes to
stdout (and ``--out``); progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, CpuMonitor, host_label, log, machine_info

from shared.datasets import quality as Q
from tests.support.heldout import fresh_cases

ADMIN_KEY = "tf-quality-admin-key"
TENANT = "quality"
JOB_TASK = {"translation": "translation", "sentiment": "sentiment"}  # others: classification


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    home = Path(os.environ.get("TUNEFLEET_HOME", ROOT / "var"))
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--tasks", default=",".join(Q.TASKS), help="comma-separated task names")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-heldout", type=int, default=60)
    p.add_argument("--seed", type=int, default=0, help="data seed (also the job seed)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers per job")
    p.add_argument("--model-dir", type=Path, default=home / "models" / "tiny-llama")
    p.add_argument("--url", help="gateway of a running fleet (default: start one)")
    p.add_argument("--key", help="integrator API key for --url")
    p.add_argument("--hyperparameters", type=json.loads, help="JSON, default: the recipe's")
    p.add_argument("--lora", type=json.loads, help="JSON LoRA settings, default: the recipe's")
    p.add_argument("--concurrency", type=int, default=8, help="parallel held-out requests")
    p.add_argument("--job-timeout", type=float, default=1800.0)
    p.add_argument("--out", type=Path, help="JSON file (default results/quality-<host>.json)")
    p.add_argument("--no-out", action="store_true", help="print only")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fleet ------------------------------------------------------------------------------


@contextlib.contextmanager
def started_fleet(model_dir: Path) -> Iterator[tuple[str, str]]:
    """(gateway url, integrator key) of a fleet started as processes for this run."""
    import httpx

    from gateway.cli.supervisor import Supervisor

    model_dir = model_dir.resolve()
    if not (model_dir / "model.safetensors").is_file():
        raise SystemExit(f"no base model in {model_dir}; run `make model` first")
    home = Path(tempfile.mkdtemp(prefix="tf-quality-"))
    gw_port = free_port()
    env = {
        "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
        "TUNEFLEET_REGISTRY_PORT": str(free_port()),
        "TUNEFLEET_INFERENCE_PORT": str(free_port()),
        "TUNEFLEET_TRAINING_PORT": str(free_port()),
        "TUNEFLEET_GATEWAY_PORT": str(gw_port),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
        "TF_RAY_LOG_TO_DRIVER": "0",
    }
    sup = Supervisor(home, env=env, say=log)
    sup.env.pop("DATABASE_URL", None)
    sup.up()
    try:
        gw = f"http://127.0.0.1:{gw_port}"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        httpx.post(f"{gw}/admin/tenants", json={"id": TENANT}, headers=admin).raise_for_status()
        r = httpx.post(
            f"{gw}/admin/keys", json={"tenant": TENANT, "role": "integrator"}, headers=admin
        )
        r.raise_for_status()
        yield gw, str(r.json()["key"])
    finally:
        sup.down()
        log(f"fleet stopped (home {home}, logs in {home / 'logs'})")


# --- scoring ----------------------------------------------------------------------------


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of the per-label F1 scores."""
    scores = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def score(task: str, cases: Sequence[Q.Case], answers: Sequence[str]) -> dict[str, Any]:
    gold = [c.answer for c in cases]
    if Q.labels(task):
        acc = sum(g == a for g, a in zip(gold, answers, strict=True)) / len(gold)
        return {
            "accuracy": round(acc, 4),
            "macro_f1": round(macro_f1(gold, answers, Q.labels(task)), 4),
            "distinct_answers": len(set(answers)),
        }
    import sacrebleu

    return {"chrf": round(float(sacrebleu.corpus_chrf(list(answers), [gold]).score), 2)}


# --- one task through the SDK -----------------------------------------------------------


async def ask_all(
    client: Any, task: str, model: str, cases: Sequence[Q.Case], conc: int
) -> list[str]:
    """The model's answer to every held-out case, through ``chat.completions``."""
    labels = list(Q.labels(task))
    gate = asyncio.Semaphore(conc)

    async def one(case: Q.Case) -> str:
        messages = [
            {"role": "system", "content": Q.system_prompt(task)},
            {"role": "user", "content": case.text},
        ]
        extra = {"choices_allowed": labels} if labels else None
        async with gate:
            resp = await client.chat.completions.create(
                model=model,
                messages=messages,
                temperature=0,
                max_tokens=48,
                extra_body=extra,
            )
        return (resp.choices[0].message.content or "").strip()

    return list(await asyncio.gather(*(one(c) for c in cases)))


async def run_task(client: Any, task: str, args: argparse.Namespace) -> dict[str, Any]:
    train = Q.chat_rows(task, "train", args.n_train, seed=args.seed)
    held = Q.cases(task, "heldout", args.n_heldout, seed=args.seed)
    uploaded = await client.files.create(
        file=(f"{task}-train.jsonl", io.BytesIO(Q.to_jsonl(train))), purpose="fine-tune"
    )
    held_rows = [Q.chat_row(task, c) for c in held]
    test_file = await client.files.create(
        file=(f"{task}-heldout.jsonl", io.BytesIO(Q.to_jsonl(held_rows))), purpose="fine-tune"
    )
    extra: dict[str, Any] = {
        "test_file": test_file.id,  # the job's own base/tuned numbers on the same cases
        "task": JOB_TASK.get(task, "classification" if Q.labels(task) else "generation"),
        "resources": {"num_workers": args.workers},
    }
    if args.lora:
        extra["lora"] = args.lora
    create: dict[str, Any] = {}
    if args.hyperparameters:
        create["method"] = {
            "type": "supervised",
            "supervised": {"hyperparameters": args.hyperparameters},
        }
    for attempt in range(2):
        t0 = time.perf_counter()
        job = await client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=uploaded.id,
            suffix=f"q-{task}",
            seed=args.seed,
            extra_body=extra,
            **create,
        )
        log(f"{task}: job {job.id} created")
        while job.status not in ("succeeded", "failed", "cancelled"):
            if time.perf_counter() - t0 > args.job_timeout:
                raise TimeoutError(f"{task}: job {job.id} still {job.status}")
            await asyncio.sleep(2)
            job = await client.fine_tuning.jobs.retrieve(job.id)
        # the embedded Ray head may still be starting on a loaded machine: try once more
        if not (job.error and job.error.code == "ray_unavailable") or attempt:
            break
        log(f"{task}: {job.error.message}; retrying once")
        await asyncio.sleep(20)
    wall = time.perf_counter() - t0
    log(f"{task}: job {job.status} in {wall:.0f}s -> {job.fine_tuned_model or job.error}")
    out: dict[str, Any] = {
        "n_train": len(train),
        "n_heldout": len(held),
        "job_id": job.id,
        "job_status": job.status,
        "job_wall_s": round(wall, 1),
        "job_server_s": (job.finished_at - job.created_at) if job.finished_at else None,
        "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
        "trained_tokens": job.trained_tokens,
    }
    extra_fields = job.model_extra or {}
    result = extra_fields.get("result") or {}
    out["job_reported"] = {k: result.get(k) for k in ("base", "tuned") if k in result}
    base_answers = await ask_all(client, task, "tiny-llama", held, args.concurrency)
    out["base"] = score(task, held, base_answers)
    if job.status != "succeeded":
        out["error"] = job.error.model_dump() if job.error else None
        return out
    tuned_answers = await ask_all(client, task, job.fine_tuned_model, held, args.concurrency)
    out["tuned"] = score(task, held, tuned_answers)
    fresh = fresh_cases(
        task, args.n_heldout, n_train=args.n_train, seed=args.seed + 1000, train_seed=args.seed
    )
    out["new_draws"] = {
        "n": len(fresh),
        "base": score(
            task, fresh, await ask_all(client, task, "tiny-llama", fresh, args.concurrency)
        ),
        "tuned": score(
            task, fresh, await ask_all(client, task, job.fine_tuned_model, fresh, args.concurrency)
        ),
    }
    out["examples"] = [
        {"text": c.text, "gold": c.answer, "base": b, "tuned": t}
        for c, b, t in list(zip(held, base_answers, tuned_answers, strict=True))[:3]
    ]
    log(f"{task}: base {out['base']} tuned {out['tuned']}; new draws {out['new_draws']}")
    return out


async def run_all(url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2, timeout=120)
    results: dict[str, Any] = {}
    for task in args.tasks.split(","):
        results[task] = await run_task(client, task, args)
        log(f"after {task}: " + json.dumps({task: results[task]}))  # partial results survive
    await client.close()
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for task in args.tasks.split(","):
        Q.task_spec(task)  # unknown task names fail before a fleet starts
    mon = CpuMonitor()
    t0 = time.perf_counter()
    if args.url:
        if not args.key:
            raise SystemExit("--url needs --key (an integrator API key)")
        tasks = asyncio.run(run_all(args.url.rstrip("/"), args.key, args))
    else:
        with started_fleet(args.model_dir) as (url, key):
            tasks = asyncio.run(run_all(url, key, args))
    manifest_path = args.model_dir / "manifest.json"
    base_manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    info = machine_info()
    result = {
        "benchmark": "quality",
        "command": "benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "base_model": {
            k: base_manifest.get(k) for k in ("weights_sha256", "num_parameters", "final_loss")
        },
        "data": {"n_train": args.n_train, "n_heldout": args.n_heldout, "seed": args.seed},
        "workers": args.workers,
        "tasks": tasks,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu": mon.result(),
        "machine": info,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_out:
        out = args.out or ROOT / "benchmarks" / "results" / f"quality-{host_label(info)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
