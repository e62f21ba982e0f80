"""``POST /v1/fine_tuning/model_selection``: rank catalog base models on a tenant's file.

The file goes through the same preparation as training data (PII redacted, normalized) here,
then :func:`services.training.selection.rank_base_models` scores each candidate few-shot on it
as a Ray task on a worker (:func:`services.training.ray.worker_tasks.select_remote`): loading
and running models is a worker's job, not the API process's (issue 17 item 3).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter

from services.training.data.example import Example
from services.training.data.pipeline import prepare_stream, to_jsonl
from services.training.deps import State
from services.training.domain import files
from services.training.ray.worker_tasks import select_remote
from services.training.selection import MAX_MODELS, rank_base_models
from shared.auth import TenantId
from shared.errors import InvalidRequest
from shared.modelref import NAME_RE
from shared.offloop import in_session
from shared.schemas.training import ModelSelectionRequest

router = APIRouter(tags=["fine-tuning"])


@router.post("/v1/fine_tuning/model_selection")
async def model_selection(body: ModelSelectionRequest, st: State, tenant: TenantId) -> Any:
    row = await in_session(
        st.db, lambda s: files.get_file(s, tenant, body.validation_file, param="validation_file")
    )
    listed = {m.id for m in await st.lifecycle.registry.list_base_models(tenant)}
    names = body.models or sorted(listed)
    for i, name in enumerate(names):
        if not NAME_RE.fullmatch(name) or name not in listed:
            raise InvalidRequest(f"models[{i}]: {name!r} is not in the catalog", param="models")
    if len(names) > MAX_MODELS:  # before fetching any of them
        raise InvalidRequest(f"give between 1 and {MAX_MODELS} base models", param="models")
    # uploaded (merged) models are fetched from the registry into a local directory
    catalog = {n: await st.lifecycle.base_path(tenant, n) for n in names}
    tok = await st.lifecycle.tokenizer(tenant, names[0])
    # read line by line (an encrypted one decrypted a chunk at a time), off the loop
    data = await anyio.to_thread.run_sync(
        lambda: st.store.source(files.file_key(row.id), tenant=row.tenant)
    )

    def on_ray(*args: Any) -> list[dict[str, Any]]:  # once the input is known to be good
        st.lifecycle.backend.connect()  # the service is a Ray driver from here on
        timeout_s = st.settings.selection_timeout_s
        return select_remote(*args, use_gpu=body.use_gpu, timeout_s=timeout_s)

    def run() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="tf-select-") as tmp:
            path = Path(tmp) / "rows.jsonl"
            with path.open("wb") as out:  # rendered by the scorer, as served
                report = prepare_stream(
                    data,
                    row.filename,
                    mapping=row.mapping,
                    task=body.task,
                    tokenizer=tok,
                    max_len=st.settings.max_len,
                    validation_fraction=0.0,
                    sink=_TrainRows(out),
                    spill_dir=Path(tmp),
                )
            labels = sorted(report.labels.counts if report.labels else {})
            return list(
                rank_base_models(
                    {n: Path(catalog[n]) for n in names},
                    path,
                    body.task,
                    labels=labels or None,
                    few_shot=body.few_shot,
                    max_examples=body.max_examples,
                    scorer=on_ray,
                )
            )

    ranked = await anyio.to_thread.run_sync(run)
    return {"object": "fine_tuning.model_selection", "task": body.task, "data": ranked}


class _TrainRows:
    """The prepared rows (all train: no validation split here) as JSON Lines into ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, split: str, example: Example) -> None:
        self.out.write(to_jsonl([example]))
