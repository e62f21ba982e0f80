"""Finish a job from its runner's result: register the weights, then mark it succeeded.

* ``lora`` → the adapter archive becomes a new version of the adapter named by ``suffix``
  (``ft-<job>`` without one) in the registry, with lineage; ``fine_tuned_model`` is
  ``name@vN``.
* ``full`` / ``transfer`` / ``hybrid`` → a full model directory (hybrid is merged by the
  runner: vLLM refuses LoRAs with ``modules_to_save``), packed and uploaded to the registry
  as an archive, a new tenant-owned *base* model ``<name>-<job>`` (``fine_tuned_model``)
  that replicas download and verify like adapters: no host's path leaves this service.
* ``auto_promote {alias, gate}`` moves the alias to the new version only if the tuned metric
  beats the version currently behind the alias, both evaluated by the runner on this job's
  own validation set (no version behind the alias: promote). The job's reported base and
  tuned metrics are on the test split, which no decision looks at.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import anyio

from services.training.domain import jobs
from services.training.storage.tables import JobRow
from shared.clients.registry import RegistryClient
from shared.db import Database
from shared.errors import Conflict, InvalidRequest, TunefleetError
from shared.models.artifact import PACKED_NAME, pack_model_dir
from shared.offloop import in_session
from shared.schemas.registry import BaseModelMetadata, Lineage, VersionMetadata
from shared.schemas.training import JobCreate, RunnerResult

log = logging.getLogger(__name__)


def adapter_name(row: JobRow) -> str:
    return row.suffix or "ft-" + row.id.removeprefix("ftjob-")


def task_metric(task: str, gate: str = "auto") -> str:
    if gate != "auto":
        return gate
    return {"classification": "accuracy", "sentiment": "accuracy", "translation": "chrf"}.get(
        task, "eval_loss"
    )


def _better(metric: str, new: float, old: float) -> bool:
    return new < old if metric.endswith("loss") or metric.endswith("ppl") else new > old


def _flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for side in ("base", "tuned"):
        for key, value in (result.get(side) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{side}_{key}"] = float(value)
    return out


async def finish(
    db: Database,
    registry: RegistryClient,
    job_id: str,
    report: RunnerResult,
    archive: Path | None,
    *,
    models_root: Path,
) -> None:
    """Register the result and move the job to ``succeeded`` (or ``failed``).

    ``models_root``: where runners write merged models (a ``model_dir`` elsewhere is refused).
    Database work runs in worker threads: this is awaited by an HTTP handler."""
    row = await in_session(db, lambda s: s.get(JobRow, job_id))
    assert row is not None
    if row.status in ("succeeded", "failed", "cancelled"):
        if row.status == "succeeded":
            return  # a retried report after a restart: already done
        raise Conflict(f"job {job_id} is {row.status}", code="job_finished")
    body = JobCreate.model_validate(row.request)
    tenant, name, dataset_id = row.tenant, adapter_name(row), row.dataset_id
    result = dict(report.result)
    lineage = Lineage(
        job_id=job_id,
        dataset_id=dataset_id,
        training_file=body.training_file,
        base_model=body.model,
        method=body.training_method,
        metrics=_flat_metrics(result),
    )
    try:
        if archive is not None:
            meta = VersionMetadata(
                base_model=body.model,
                description=f"fine-tuned by {job_id}",
                lineage=lineage,
                labels={"task": body.task, "job": job_id},
            )
            version = await registry.push_version(
                tenant, name, archive, meta, actor=job_id, max_adapters=row.max_adapters
            )
            model = f"{name}@v{version.version}"
            if body.auto_promote is not None:
                result["promotion"] = await _promote(
                    registry, tenant, name, version.version, body, result
                )
        elif report.model_dir:
            model = f"{name}-{job_id.removeprefix('ftjob-')[-10:]}"
            await _upload_model(registry, tenant, model, _own_dir(report.model_dir, models_root))
            result["registered_as"] = "base_model"
        else:
            raise TunefleetError("the runner sent neither an adapter nor a model", code="no_result")
    except TunefleetError as exc:
        why = f"could not register the result: {exc.message}"
        await anyio.to_thread.run_sync(jobs.fail, db, job_id, "registry_push_failed", why)
        return
    await anyio.to_thread.run_sync(
        lambda: jobs.advance(
            db,
            job_id,
            "succeeded",
            fine_tuned_model=model,
            trained_tokens=report.trained_tokens,
            result=result,
            message=f"The job has successfully completed: {model}",
            data={"fine_tuned_model": model, **_flat_metrics(result)},
        )
    )


def _own_dir(reported: str, models_root: Path) -> Path:
    """The runner's model directory, which must be one this service gave out."""
    path = Path(reported).resolve()
    if path.parent != models_root.resolve() or not path.is_dir():
        raise InvalidRequest(
            "model_dir is not a job output directory of this service", param="model_dir"
        )
    return path


async def _upload_model(registry: RegistryClient, tenant: str, model: str, path: Path) -> None:
    """Stream the merged model's archive to the registry: the one the runner had a Ray worker
    pack (``PACKED_NAME``, removed once uploaded), or packed here (off the loop) when absent."""
    packed = path / PACKED_NAME
    if packed.is_file() and not packed.is_symlink():
        await registry.push_base_model(tenant, packed, BaseModelMetadata(id=model))
        packed.unlink()
        return
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=path.parent) as tmp:
        archive = Path(tmp) / f"{model}.tar.gz"
        await anyio.to_thread.run_sync(pack_model_dir, path, archive)
        await registry.push_base_model(tenant, archive, BaseModelMetadata(id=model))


async def _promote(
    registry: RegistryClient,
    tenant: str,
    name: str,
    version: int,
    body: JobCreate,
    result: dict[str, Any],
) -> dict[str, Any]:
    assert body.auto_promote is not None
    alias = body.auto_promote.alias
    metric = task_metric(body.task, body.auto_promote.gate)
    # decided on validation (``gate_tuned``), like the incumbent; test stays for reporting
    tuned = (result.get("gate_tuned") or result.get("tuned") or {}).get(metric)
    incumbent = result.get("incumbent") or {}
    old = incumbent.get(metric)
    out: dict[str, Any] = {
        "alias": alias,
        "metric": metric,
        "tuned": tuned,
        "incumbent": old,
        "incumbent_version": incumbent.get("version"),
    }
    if tuned is None:
        out.update(moved=False, reason=f"no tuned metric {metric!r}")
    elif old is not None and not _better(metric, float(tuned), float(old)):
        out.update(moved=False, reason="tuned metric does not beat the incumbent")
    else:
        await registry.set_alias(tenant, name, alias, version, actor="auto_promote")
        out.update(moved=True)
    return out
