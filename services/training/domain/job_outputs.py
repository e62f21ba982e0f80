"""A job's derived copies outside SQL and the blob store, found by the job id, and erased.

A job trained on erased data leaves that data, or weights fitted to it, in three places:

* its Ray Train run on the storage path, ``<storage>/<job_id>/`` (checkpoints and results;
  a sweep's trials live under the same name): a local path or an S3-style URI;
* the runner's work dir, ``<runner_work>/tf-<job_id>-*`` (exported weights, the pruned
  adapter, the packed archive): the runner removes it when it ends, a killed runner leaves
  it. Runners started before the work root existed used the system temp dir and the last
  8 characters of the id (``tf-<id[-8:]>-*``), looked for too;
* a ``full``/``transfer``/``hybrid`` result, ``<data_root>/models/<job_id>/`` (merged
  weights), uploaded to the registry as a tenant base model, and the copies this service
  fetched back to train on it, ``<data_root>/bases/<model id>-<sha256>/``.

The runner's work dir and the model dir are on this machine's disk (or storage mounted at
the same path where the runner runs); the run is wherever ``storage`` says.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.training.ray import storage as ray_storage

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # a job id, safe to put in a path or a glob
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # glob-safe too


@dataclass(frozen=True)
class Removed:
    """Which of a job's copies existed and are gone now."""

    run: bool = False
    runner_dirs: int = 0
    model_dir: bool = False


@dataclass(frozen=True)
class JobOutputs:
    data_root: Path
    storage: str  # Ray Train storage: a path or a URI (settings.ray_storage())
    runner_work: Path

    def model_dir(self, job_id: str) -> Path:
        return self.data_root / "models" / _checked(job_id)

    def run_path(self, job_id: str) -> str:
        return ray_storage.join(self.storage, _checked(job_id))

    def runner_dirs(self, job_id: str) -> list[Path]:
        job_id = _checked(job_id)
        found = list(self.runner_work.glob(f"tf-{job_id}-*")) if self.runner_work.is_dir() else []
        legacy = Path(tempfile.gettempdir())
        found += legacy.glob(f"tf-{job_id[-8:]}-*")
        return sorted({p for p in found if p.is_dir()})

    def remove(self, job_id: str) -> Removed:
        """Delete every copy of ``job_id``; idempotent (a rerun finds nothing)."""
        run = _remove_tree(self.run_path(job_id))
        dirs = self.runner_dirs(job_id)
        for d in dirs:
            _rmtree(d)
        model = self.model_dir(job_id)
        had_model = model.exists()
        _rmtree(model)
        return Removed(run=run, runner_dirs=len(dirs), model_dir=had_model)

    def remove_fetched(self, model: str) -> int:
        """Delete this service's fetched copies of base model ``model``; how many there were."""
        if not _MODEL_ID.match(model):
            raise ValueError(f"not a model id: {model!r}")
        root = self.data_root / "bases"
        found = [p for p in root.glob(f"{model}-*") if p.is_dir()] if root.is_dir() else []
        for d in found:
            _rmtree(d)
        return len(found)


def _checked(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id


def _rmtree(path: Path) -> None:
    """Delete a tree; already gone is fine, any other failure raises (the erasure then stays
    pending and is finished later, never reported done with copies left)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _remove_tree(target: str) -> bool:
    """Delete a directory at a path or a URI; True when there was one."""
    if not ray_storage.is_uri(target):
        path = Path(target)
        if not path.exists():
            return False
        _rmtree(path)
        return True
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(target)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return False
    fs.delete_dir(inner)
    return True
