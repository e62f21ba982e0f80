"""``python -m services.training.ray.jobrunner --job-id … --service-url …``: one job on Ray.

This is the entrypoint the training service submits through the Ray Jobs API. It reads its
spec and every split of its prepared dataset from the service (per-job token in
``TUNEFLEET_RUNNER_TOKEN``; the splits reach the Ray Train workers through the object
store, never a local path), evaluates the base model on the test split (the reported
numbers; validation drives sweeps, pruning and ``auto_promote``), trains with
:func:`services.training.ray.driver.run_training` (events and checkpoints stream back as
they happen; checkpoints live on the spec's ``storage_path``), evaluates the result
(evaluations, pruning and the merge of a hybrid result are Ray tasks with one worker's
resources, :mod:`services.training.ray.worker_tasks`, not work for this driver on the head), and
sends it: an adapter archive (``lora``) or the path of a full model directory (``full``,
``transfer``, ``hybrid`` merged into its base). Reports are retried with backoff so a
training-service restart in the middle of a run loses nothing but a few metric events.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from shared.rendering import encode_training_row
from shared.schemas.training import RunnerSpec

log = logging.getLogger("tunefleet.jobrunner")
EVAL_TASKS = ("classification", "sentiment", "translation", "generation")
MAX_EVAL = 200


class Reporter:
    """The runner's side of ``/internal/runner/jobs/{id}``: sync httpx with retries."""

    def __init__(self, base_url: str, job_id: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=f"{base_url.rstrip('/')}/internal/runner/jobs/{job_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
        )

    def call(self, method: str, path: str, *, patience_s: float = 300.0, **kw: Any) -> Any:
        """Retry connection errors and 5xx for up to ``patience_s`` (service restarts)."""
        deadline = time.monotonic() + patience_s
        delay = 0.5
        while True:
            try:
                resp = self.http.request(method, path, **kw)
                if resp.status_code < 500:
                    resp.raise_for_status()
                    return resp
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"training service unreachable for {path}")
            time.sleep(delay)
            delay = min(5.0, delay * 2)

    def event(
        self, message: str, *, data: dict[str, Any] | None = None, status: str | None = None
    ) -> None:
        """Best effort (metrics must never stall training); a status change is retried."""
        body = {"message": message, "data": data, "status": status}
        try:
            self.call("POST", "/events", json=body, patience_s=300.0 if status else 20.0)
        except Exception:
            log.warning("dropped an event report")


def _read_splits(rep: Reporter) -> dict[str, list[dict[str, Any]]]:
    """Every non-empty split of the job's dataset (``train``, ``validation``, ``test``) as
    prepared rows (chat or prompt/completion, rendered later by :mod:`shared.rendering`)."""
    splits = {}
    for name in rep.call("GET", "/data").json()["splits"]:
        text = rep.call("GET", f"/data/{name}").text
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if rows:
            splits[name] = rows
    return splits


def _evaluate_on(source: Any, spec: RunnerSpec, rows: list[dict[str, Any]]) -> dict:
    """Score ``source`` (a :class:`~services.training.ray.worker_tasks.ModelSource`) as a Ray
    task with one worker's resources (1 CPU, or 1 GPU): not in this driver on the head."""
    from services.training.ray.worker_tasks import evaluate_remote

    if not rows or spec.task not in EVAL_TASKS:
        return {}
    return evaluate_remote(source, rows[:MAX_EVAL], spec.task, spec.labels, use_gpu=spec.use_gpu)


def _plan(spec: RunnerSpec, n_train: int) -> tuple[int, int, int]:
    """(total steps, checkpoint_every, report_every) as the train loop will count them."""
    hp = spec.hyperparameters
    per_epoch = max(1, math.ceil(n_train / (spec.num_workers * int(hp["batch_size"]))))
    total = int(hp.get("max_steps") or per_epoch * int(hp["n_epochs"]))
    ckpt = spec.checkpoint_every or max(1, math.ceil(total / 3))
    return total, ckpt, max(1, min(20, total // 20))  # ~20 reports, at least every 20 steps


def _incumbent(rep: Reporter, spec: RunnerSpec, work: Path, rows: list[dict[str, Any]]) -> dict:
    """Evaluate the version behind the auto_promote alias on this job's validation set."""
    import tarfile

    from services.training.ray.worker_tasks import ModelSource

    resp = rep.call("GET", "/incumbent")
    archive = work / "incumbent.tar.gz"
    archive.write_bytes(resp.content)
    dest = work / "incumbent"
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = spec.base_model_path
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return _evaluate_on(ModelSource.adapter(spec.base_model_path, dest), spec, rows)


def run(rep: Reporter, spec: RunnerSpec, work: Path) -> None:
    from services.training.ray.cluster import ensure_ray
    from services.training.ray.driver import TrainSpec, run_training
    from services.training.ray.evaluate import load_tokenizer
    from services.training.ray.worker_tasks import ModelSource

    splits = _read_splits(rep)
    train_rows, valid_rows = splits.get("train", []), splits.get("validation", [])
    # the reported numbers come from held-out rows nothing was selected on (datasets prepared
    # before the test split existed fall back to validation)
    test_rows = splits.get("test") or valid_rows
    total, ckpt_every, report_every = _plan(spec, len(train_rows))
    ensure_ray(work / "ray", log_to_driver=os.environ.get("TF_RAY_LOG_TO_DRIVER", "1") != "0")
    rep.event(
        f"Fine-tuning started: {spec.method} on {spec.num_workers} Ray workers, {total} steps",
        status="running",
        data={"total_steps": total, "num_workers": spec.num_workers},
    )
    tok = load_tokenizer(spec.base_model_path)
    base_eval = _evaluate_on(ModelSource(spec.base_model_path), spec, test_rows)
    if base_eval:
        rep.event("Evaluated the base model on the test split", data={"base": base_eval})

    def on_report(m: dict[str, Any]) -> None:
        if "step" not in m:
            return
        keep = (
            "step",
            "train_loss",
            "valid_loss",
            "tokens_per_second",
            "resumed_from",
            "setup_seconds",
            "warm_start",
        )
        data: dict[str, Any] = {k: m[k] for k in keep if k in m}
        rep.event(
            f"Step {m['step']}/{m.get('total_steps', total)}: "
            f"training loss={m.get('train_loss', float('nan')):.4f}",
            data=data,
        )
        if m.get("checkpoint_path"):
            try:
                rep.call(
                    "POST",
                    "/checkpoints",
                    patience_s=60,
                    json={"step": m["step"], "metrics": data, "path": m["checkpoint_path"]},
                )
            except Exception:
                log.warning("dropped a checkpoint report")

    hp = dict(spec.hyperparameters)
    train_spec = TrainSpec(
        base_model_path=Path(spec.base_model_path),
        # the workers see what they train and validate on; the test split stays here
        datasets={name: rows for name, rows in splits.items() if name != "test"},
        method=spec.method,
        task=spec.task,
        lora={"r": 8, "alpha": 16, "dropout": 0.05, **spec.lora},
        hyperparameters=hp,
        seed=spec.seed,
        checkpoint_every=ckpt_every,
        report_every=report_every,
        num_workers=spec.num_workers,
        use_gpu=spec.use_gpu,
        max_failures=1,
        name=spec.job_id,
        warm_ttl_s=float(os.environ.get("TUNEFLEET_WARM_RUNNER_TTL_S") or 0.0),
    )
    result: dict[str, Any] = {"base": base_eval}
    if spec.sweep:
        adapter_dir, model_dir, checkpoint, result["sweep"] = _sweep(rep, spec, train_spec, work)
        result["final_metrics"] = result["sweep"]["best"]["metrics"]
    else:
        outcome = run_training(
            train_spec,
            storage_path=spec.storage_path,
            on_report=on_report,
            export_dir=work / "export",
        )
        adapter_dir, model_dir = outcome.adapter_dir, outcome.model_dir
        checkpoint = outcome.checkpoint_path
        result["final_metrics"] = _final(outcome.final_metrics)
    if spec.prune and adapter_dir is not None:
        adapter_dir, result["prune"] = _prune(spec, adapter_dir, work, valid_rows)
        rep.event("Pruned the adapter", data={"prune": result["prune"]})
    tuned_dir = adapter_dir or model_dir
    assert tuned_dir is not None, "training produced no weights"
    tuned = (  # an adapter's few MB travel with the task; a full model stays on the storage
        ModelSource.adapter(spec.base_model_path, adapter_dir)
        if adapter_dir is not None
        else ModelSource(spec.base_model_path, checkpoint=checkpoint)
    )
    result["tuned"] = _evaluate_on(tuned, spec, test_rows)
    result["eval_split"] = "test" if test_rows is not valid_rows else "validation"
    if spec.compare_alias:
        # promotion decides on validation: the test numbers stay untouched by any choice
        result["gate_tuned"] = _evaluate_on(tuned, spec, valid_rows)
        incumbent = _incumbent(rep, spec, work, valid_rows)
        result["incumbent"] = {**incumbent, "version": spec.compare_version}
    max_len = int(hp.get("max_len", 256))
    n_tokens = sum(len(encode_training_row(tok, r, max_len)[0]) for r in train_rows)
    mean_len = n_tokens / max(1, len(train_rows))
    trained = int(mean_len * total * spec.num_workers * int(hp["batch_size"]))
    report = {"trained_tokens": trained, "result": result}
    if spec.method == "lora" and adapter_dir is not None:
        from shared.adapters.archive import pack_adapter_dir

        archive = pack_adapter_dir(adapter_dir, work / "adapter.tar.gz")
        with archive.open("rb") as fh:
            rep.call(
                "POST",
                "/result",
                patience_s=600,
                data={"report": json.dumps(report)},
                files={"archive": ("adapter.tar.gz", fh, "application/gzip")},
            )
        return
    out = Path(spec.model_output_dir)
    if out.exists():
        shutil.rmtree(out)
    if adapter_dir is not None:  # hybrid: merge (vLLM refuses modules_to_save), on a worker
        from services.training.ray.worker_tasks import merge_remote

        source = ModelSource.adapter(spec.base_model_path, adapter_dir)
        merge_remote(source, out, use_gpu=spec.use_gpu)
        tok.save_pretrained(out)
    else:
        shutil.copytree(tuned_dir, out)
    from services.training.ray.worker_tasks import pack_remote
    from shared.models.artifact import PACKED_NAME

    pack_remote(out, out / PACKED_NAME)  # the service uploads it as it is
    report["model_dir"] = str(out)
    rep.call("POST", "/result", patience_s=600, data={"report": json.dumps(report)})


# Tune pickles its callbacks (with the run config, into the experiment dir), so the sweep's
# on_trial must not carry the reporter (an httpx client, and the job token) with it: it is
# a module-level function finding the reporter here.
_trial_reporter: Reporter | None = None


def _forward_trial(e: dict[str, Any]) -> None:
    """Report one sweep trial event (``run_sweep``'s ``on_trial``)."""
    if _trial_reporter is None:
        return
    keep = ("step", "train_loss", "valid_loss", "tokens_per_second")
    data = {"trial_id": e.get("trial_id"), "event": e.get("event")}
    data.update({k: e[k] for k in keep if k in e})
    _trial_reporter.event(f"Sweep {e.get('event', 'event')}: trial {e.get('trial_id')}", data=data)


def _sweep(
    rep: Reporter, spec: RunnerSpec, base: Any, work: Path
) -> tuple[Any, Any, str | None, dict[str, Any]]:
    """Ray Tune over ``base``; every trial event is reported; returns the best weights
    (adapter dir, model dir, its checkpoint on the storage) and a summary."""
    from services.training.ray.sweep import parse_sweep, run_sweep

    sweep = parse_sweep(spec.sweep, task=spec.task, has_validation=base.has_split("validation"))

    global _trial_reporter
    _trial_reporter = rep
    out = run_sweep(
        base, sweep, spec.storage_path, on_trial=_forward_trial, export_dir=work / "sweep"
    )
    if out.best is None:
        raise RuntimeError("no sweep trial finished")

    def trial(t: Any) -> dict[str, Any]:
        metrics = {k: v for k, v in t.metrics.items() if isinstance(v, int | float)}
        return {"trial_id": t.trial_id, "config": t.config, "status": t.status, "metrics": metrics}

    summary = {
        "metric": out.metric,
        "mode": out.mode,
        "best": trial(out.best),
        "trials": [trial(t) for t in out.trials],
    }
    return out.adapter_dir, out.model_dir, out.best.checkpoint_path, summary


def _prune(
    spec: RunnerSpec, adapter_dir: Path, work: Path, rows: list[dict[str, Any]]
) -> tuple[Path, dict[str, Any]]:
    """SVD rank reduction (+ magnitude pruning) within the job's quality tolerance, as a
    Ray task (it scores every candidate rank) with one worker's resources."""
    from services.training.ray.prune import parse_prune
    from services.training.ray.worker_tasks import ModelSource, prune_remote

    if not rows:
        raise RuntimeError("prune needs a validation set to measure quality")
    prune = parse_prune(spec.prune)
    metric = {"translation": "chrf", "generation": "eval_loss"}.get(spec.task, "accuracy")
    out_dir, out = prune_remote(
        ModelSource.adapter(spec.base_model_path, adapter_dir),
        rows[:MAX_EVAL],
        spec.task,
        spec.labels,
        work / "pruned",
        use_gpu=spec.use_gpu,
        metric=metric,
        max_quality_drop=prune.max_quality_drop,
        magnitude_sparsity=prune.magnitude_sparsity,
    )
    out["metric"] = metric
    return out_dir, out


def _final(metrics: dict[str, Any] | None) -> dict[str, Any]:
    keep = ("step", "train_loss", "valid_loss", "tokens_per_second", "resumed_from")
    return {k: v for k, v in (metrics or {}).items() if k in keep}


def _work_root() -> str | None:
    """``TUNEFLEET_RUNNER_WORK_ROOT`` (set by the service: an erasure of the job's data finds
    the dir there if this process is killed before it removes it), else the temp dir."""
    root = os.environ.get("TUNEFLEET_RUNNER_WORK_ROOT")
    if not root:
        return None
    Path(root).mkdir(parents=True, exist_ok=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--service-url", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = os.environ.get("TUNEFLEET_RUNNER_TOKEN", "")
    rep = Reporter(args.service_url, args.job_id, token)
    work = Path(tempfile.mkdtemp(prefix=f"tf-{args.job_id}-", dir=_work_root()))
    try:
        spec = RunnerSpec.model_validate(rep.call("GET", "/spec").json())
        run(rep, spec, work)
        return 0
    except Exception as exc:
        log.exception("fine-tuning job failed")
        try:
            rep.call(
                "POST",
                "/failure",
                patience_s=120,
                json={
                    "code": "training_failed",
                    "message": f"{type(exc).__name__}: {str(exc)[:500]}",
                },
            )
        except Exception:
            log.warning("could not report the failure")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # Run the importable module, not this ``__main__`` copy: cloudpickle (Tune pickles its
    # callbacks) pickles ``__main__`` functions by value, globals included.
    from services.training.ray.jobrunner import main as _main

    sys.exit(_main())
