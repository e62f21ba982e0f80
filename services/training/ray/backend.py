"""``RayBackend``: the training service's only door to Ray (the Jobs API).

Each fine-tuning job is one Ray job whose entrypoint is ``python -m
services.training.ray.jobrunner``; the service submits, polls and stops it through
``JobSubmissionClient`` (token auth header added from the env set by ``ensure_ray``). The
Ray connection is made lazily — on the first submission, or at start when there are jobs to
reconcile — so a service with no training work never starts a head. All calls block:
callers run them in a worker thread.

The embedded head is started from ONE long-lived thread owned by the backend: Ray spawns
the head's processes with ``PR_SET_PDEATHSIG=SIGKILL``, which fires when the *thread* that
forked them exits, and anyio retires idle worker threads after 10 s — a head started from
an anyio worker died with it.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.training.ray.cluster import RayInfo, ensure_ray, shutdown_ray
from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[3]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayBackend:
    def __init__(
        self,
        temp_dir: Path,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        python: str | None = None,
        work_root: Path | None = None,
        warm_ttl_s: float = 0.0,
    ) -> None:
        self.temp_dir = temp_dir
        self.work_root = work_root
        self.warm_ttl_s = warm_ttl_s  # the runners' TrainSpec.warm_ttl_s
        self.address = address
        self.num_cpus = num_cpus
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._client: Any = None
        self._info: RayInfo | None = None
        self._started_here = False
        # never idles out, so processes it forks keep their parent thread (see module doc)
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-head-owner")

    def connect(self) -> RayInfo:
        """Join ``address`` / an already connected Ray, or start the embedded head."""
        with self._lock:
            if self._info is not None:
                return self._info
            import ray
            from ray.job_submission import JobSubmissionClient

            was_connected = ray.is_initialized()
            try:
                info = self._owner.submit(
                    ensure_ray, self.temp_dir, address=self.address, num_cpus=self.num_cpus
                ).result()
            except Exception as exc:
                raise ServiceUnavailable(
                    f"cannot reach Ray: {type(exc).__name__}", code="ray_unavailable"
                ) from exc
            if not info.jobs_url:
                raise ServiceUnavailable("Ray has no Jobs API (dashboard)", code="ray_unavailable")
            self._client = JobSubmissionClient(info.jobs_url)
            self._started_here = not was_connected
            self._info = info
            return info

    @property
    def connected(self) -> bool:
        return self._info is not None

    def submit(self, job_id: str, callback_url: str, runner_token: str) -> str:
        """Submit the runner for ``job_id``; returns the Ray submission id."""
        self.connect()
        entry = " ".join(
            shlex.quote(p)
            for p in (
                self.python,
                "-m",
                "services.training.ray.jobrunner",
                "--job-id",
                job_id,
                "--service-url",
                callback_url,
            )
        )
        env = {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            # the runner's credential: a per-job token, never the fleet's internal token
            "TUNEFLEET_RUNNER_TOKEN": runner_token,
            "TUNEFLEET_WARM_RUNNER_TTL_S": str(self.warm_ttl_s),
        }
        if self.work_root is not None:  # where an erasure looks for a killed runner's dir
            env["TUNEFLEET_RUNNER_WORK_ROOT"] = str(self.work_root)
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TF_RAY_LOG_TO_DRIVER"):
            if key in os.environ:
                env[key] = os.environ[key]
        submission_id = f"tf-{job_id}"
        self._client.submit_job(
            entrypoint=entry,
            submission_id=submission_id,
            runtime_env={"env_vars": env},
            metadata={"tunefleet_job": job_id},
        )
        return submission_id

    def status(self, submission_id: str) -> tuple[str, str | None]:
        """(Ray job status name, its message); ``("MISSING", None)`` if Ray lost it."""
        self.connect()
        try:
            info = self._client.get_job_info(submission_id)
        except RuntimeError as exc:  # the SDK raises RuntimeError for 404s
            if "does not exist" in str(exc) or "404" in str(exc):
                return "MISSING", None
            raise
        return str(
            info.status.value if hasattr(info.status, "value") else info.status
        ), info.message

    def stop(self, submission_id: str) -> None:
        self.connect()
        try:
            self._client.stop_job(submission_id)
        except RuntimeError as exc:
            log.warning("stop_job failed", extra={"error": str(exc)[:200]})

    def close(self) -> None:
        """Stop the embedded head if this backend started it."""
        with self._lock:
            if self._info is not None and self._started_here:
                self._owner.submit(shutdown_ray).result()
            self._info = None
            self._client = None
        self._owner.shutdown(wait=False)
