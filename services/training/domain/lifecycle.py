"""What moves a job along: prepare its data, submit it to Ray, watch Ray, finish it.

``JobLifecycle`` lives on ``app.state`` and owns one background task per job being
prepared plus one monitor task. The monitor is also the restart story: jobs are rows in
SQL, so a restarted service lists the active ones, asks Ray about each (the runner keeps
training while the service is down and retries its reports), re-launches those still
``validating_files``, and ends those whose Ray job ended without reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.orm import Session

from services.training.domain import files, hyper, jobs
from services.training.ray.backend import RayBackend
from services.training.storage.files import BlobStore
from services.training.storage.tables import DatasetRow, JobRow
from shared.clients.registry import RegistryClient
from shared.db import Database
from shared.errors import InvalidRequest, TunefleetError
from shared.models.download import fetch_base_model
from shared.offloop import in_session
from shared.schemas.training import JobCreate

log = logging.getLogger(__name__)


@dataclass
class BaseModelInfo:
    id: str
    path: str | None  # a seeded model's directory; None for an uploaded (merged) model
    artifact_sha256: str | None = None


class JobLifecycle:
    def __init__(
        self,
        *,
        db: Database,
        store: BlobStore,
        backend: RayBackend,
        registry: RegistryClient,
        callback_url: str,
        data_root: Path,
        max_len: int,
        poll_s: float,
        test_fraction: float = 0.1,
    ) -> None:
        self.db = db
        self.store = store
        self.backend = backend
        self.registry = registry
        self.callback_url = callback_url
        self.data_root = data_root
        self.max_len = max_len
        self.test_fraction = test_fraction
        self.poll_s = poll_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._tokenizer_lock = asyncio.Lock()
        self._tokens: dict[str, str] = {}  # job id -> runner token, until submitted

    # --- base models and tokenizers -------------------------------------------------

    async def base_model(self, tenant: str, model_id: str) -> BaseModelInfo:
        """A catalog entry from the registry; 400 naming ``model`` when unknown."""
        for m in await self.registry.list_base_models(tenant):
            if m.id == model_id:
                return BaseModelInfo(m.id, m.path, m.artifact_sha256)
        raise InvalidRequest(
            f"model {model_id!r} is not a base model in the catalog",
            param="model",
            code="model_not_found",
        )

    async def base_path(self, tenant: str, model_id: str) -> str:
        """A local directory of the base model: a seeded model's own, or an uploaded model's
        archive fetched from the registry (verified, unpacked once per sha256)."""
        info = await self.base_model(tenant, model_id)
        if info.path is not None:
            return info.path
        path = await fetch_base_model(self.registry, tenant, model_id, self.data_root / "bases")
        return str(path.resolve())

    async def tokenizer(self, tenant: str, model_id: str) -> Any:
        """The base model's tokenizer, loaded once per (tenant, model): tenants may own base
        models of the same name. Loads are serialized: after a restart, re-launched jobs and
        the first upload load at once, and two threads importing ``transformers`` for the
        first time make its lazy module raise ``cannot import name 'AutoTokenizer'``."""
        key = (tenant, model_id)
        async with self._tokenizer_lock:
            if key not in self._tokenizers:
                path = await self.base_path(tenant, model_id)

                def load() -> Any:
                    from transformers import AutoTokenizer

                    return AutoTokenizer.from_pretrained(path)

                self._tokenizers[key] = await anyio.to_thread.run_sync(load)
        return self._tokenizers[key]

    # --- launching ------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def launch(self, job_id: str, token: str | None) -> None:
        """Prepare and submit ``job_id`` in the background."""
        if token:
            self._tokens[job_id] = token
        self.spawn(self._launch(job_id))

    async def _launch(self, job_id: str) -> None:
        try:
            await self._prepare_and_submit(job_id)
        except TunefleetError as exc:
            jobs.fail(self.db, job_id, exc.code, exc.message, exc.param)
        except Exception as exc:  # a bug or Ray trouble: the job fails, the service lives
            log.exception("job launch failed", extra={"job_id": job_id})
            jobs.fail(self.db, job_id, "internal_error", f"{type(exc).__name__} while launching")
        finally:
            self._tokens.pop(job_id, None)

    async def _prepare_and_submit(self, job_id: str) -> None:
        row = await in_session(self.db, lambda s: s.get(JobRow, job_id))
        assert row is not None
        tenant, body = row.tenant, JobCreate.model_validate(row.request)
        seed = row.seed
        tok = await self.tokenizer(tenant, body.model)
        hp = body.effective_hyperparameters()
        max_len = hp.max_len or self.max_len
        ds: DatasetRow = await anyio.to_thread.run_sync(
            lambda: files.prepare_dataset(
                self.db,
                self.store,
                tenant=tenant,
                training_file=body.training_file,
                validation_file=body.validation_file,
                test_file=body.test_file,
                test_fraction=self.test_fraction,
                task=body.task,
                base_model=body.model,
                seed=seed,
                tokenizer=tok,
                max_len=max_len,
            )
        )

        def set_dataset(s: Session) -> None:
            row = s.get(JobRow, job_id)
            assert row is not None
            row.dataset_id = ds.id

        await in_session(self.db, set_dataset, write=True)
        n_train = int(ds.report["split"]["train"])
        resolved = hyper.resolve(
            hp,
            method=body.training_method,
            n_train=n_train,
            num_workers=body.resources.num_workers,
            max_len=max_len,
        )
        moved = await anyio.to_thread.run_sync(
            lambda: jobs.advance(
                self.db,
                job_id,
                "queued",
                dataset_id=ds.id,
                hyperparameters=resolved,
                message=f"Validated files; prepared dataset {ds.id}",
                data={"dataset_id": ds.id, "prep_report": ds.report},
            )
        )
        if not moved:  # cancelled meanwhile
            return
        token = self._tokens.get(job_id)
        if token is None:  # re-launched after a restart: the old token is only hashed
            token = await anyio.to_thread.run_sync(self._rotate_token, job_id)
        submission = await anyio.to_thread.run_sync(
            self.backend.submit, job_id, self.callback_url, token
        )

        def record_submission(s: Session) -> bool:
            """Store the Ray submission; True when a cancel came in meanwhile."""
            row = s.get(JobRow, job_id)
            assert row is not None
            row.ray_job_id = submission
            jobs.add_event(s, job_id, f"Submitted to Ray as {submission}")
            return row.cancel_requested

        cancelled = await in_session(self.db, record_submission, write=True)
        if cancelled:
            await anyio.to_thread.run_sync(self.backend.stop, submission)

    def _rotate_token(self, job_id: str) -> str:
        import secrets

        token = secrets.token_urlsafe(32)
        with self.db.session(write=True) as s:
            row = s.get(JobRow, job_id)
            assert row is not None
            row.runner_token_sha256 = jobs.token_hash(token)
        return token

    # --- auto_promote ---------------------------------------------------------------

    async def incumbent(self, row: JobRow, *, download: bool = False) -> Any:
        """The version behind the job's auto_promote alias (its archive path if
        ``download``), or None when the alias points nowhere yet."""
        from services.training.domain.results import adapter_name
        from shared.errors import NotFound

        body = JobCreate.model_validate(row.request)
        if body.auto_promote is None:
            return None
        name = adapter_name(row)
        try:
            res = await self.registry.resolve(row.tenant, f"{name}@{body.auto_promote.alias}")
        except NotFound:
            return None
        if res.version is None:
            return None
        if not download:
            return res.version
        import tempfile

        dest = Path(tempfile.mkdtemp(prefix="incumbent-")) / f"{name}-v{res.version}.tar.gz"
        return await self.registry.download_archive(row.tenant, name, res.version, dest)

    # --- cancel ---------------------------------------------------------------------

    async def cancel(self, tenant: str, job_id: str) -> None:
        """Idempotent: a terminal job stays as it is; otherwise it ends ``cancelled``."""

        def request_cancel() -> tuple[bool, str | None]:
            """(still running, its Ray submission); marks it cancel-requested."""
            with self.db.session(write=True) as s:
                row = jobs.get_job(s, tenant, job_id)
                if row.status in ("succeeded", "failed", "cancelled"):
                    return False, None
                row.cancel_requested = True
                submission = row.ray_job_id
            jobs.advance(self.db, job_id, "cancelled", message="Job cancelled")
            return True, submission

        running, submission = await anyio.to_thread.run_sync(request_cancel)
        if running and submission:
            await anyio.to_thread.run_sync(self.backend.stop, submission)

    # --- monitor / reconcile --------------------------------------------------------

    def start(self) -> None:
        """Resume work after a (re)start: jobs still preparing, or prepared but never
        handed to Ray, start over (the dataset is reused); the monitor does the rest."""
        with self.db.session() as s:
            pending = [
                r.id
                for r in jobs.active_jobs(s)
                if r.status == "validating_files" or not r.ray_job_id
            ]
        for job_id in pending:
            self.launch(job_id, None)
        self.spawn(self._monitor())

    async def _monitor(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("job monitor pass failed")
            await asyncio.sleep(self.poll_s)

    async def reconcile(self) -> None:
        """Compare every submitted, unfinished job with its Ray job."""
        active = await in_session(
            self.db, lambda s: [(r.id, r.ray_job_id) for r in jobs.active_jobs(s) if r.ray_job_id]
        )
        for job_id, submission in active:
            status, message = await anyio.to_thread.run_sync(self.backend.status, submission)
            if status in ("PENDING", "RUNNING"):
                continue
            if status == "MISSING":
                code, why = (
                    "ray_job_lost",
                    "the Ray cluster no longer knows this job (an embedded Ray head does not "
                    "outlive the service; set RAY_ADDRESS to keep jobs across restarts)",
                )
            elif status == "STOPPED":
                stopped = functools.partial(jobs.advance, message="Ray job was stopped")
                await anyio.to_thread.run_sync(stopped, self.db, job_id, "cancelled")
                continue
            elif status == "SUCCEEDED":
                # the runner reports before it exits; give a retried report a moment
                await asyncio.sleep(self.poll_s)
                code, why = "runner_lost", "the Ray job ended without reporting a result"
            else:
                # Ray appends the driver's last log lines; those stay in Ray's logs
                short = (message or "").split(", last available logs", 1)[0]
                detail = f": {short[:300]}" if short else ""
                code, why = "training_failed", f"Ray job {status.lower()}{detail}"
            await anyio.to_thread.run_sync(jobs.fail, self.db, job_id, code, why)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
