"""A job's derived copies laid out on disk the way a training run leaves them, without
training (Ray is too heavy for these tests): the Ray Train run with checkpoints on the
storage path, a killed runner's work dir, and a full/hybrid result's model dir.

The paths are those the training service's settings name (``ray_storage()``,
``runner_work_root()``, ``data_root()/models``), so what erasure must find is exactly what
a real run would have written there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobCopies:
    run: Path
    runner_dir: Path
    model_dir: Path

    def all(self) -> list[Path]:
        return [self.run, self.runner_dir, self.model_dir]


def lay_out(
    *, data_root: Path, storage: Path, runner_work: Path, job_id: str, payload: bytes
) -> JobCopies:
    """Write ``payload`` (say, rows of the training data) into each copy of ``job_id``."""
    run = storage / job_id
    for n in (1, 2):  # Ray Train keeps checkpoint_<n>/ under the run's name
        ckpt = run / f"checkpoint_2026-12-03_20-00-0{n}.000000"
        (ckpt / "adapter").mkdir(parents=True)
        (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64 + payload)
        (ckpt / "train_state.json").write_text(json.dumps({"step": n * 10}))
    runner_dir = runner_work / f"tf-{job_id}-k1ll3d"  # tempfile.mkdtemp(prefix=..., dir=...)
    (runner_dir / "export" / "adapter").mkdir(parents=True)
    (runner_dir / "export" / "adapter" / "adapter_model.safetensors").write_bytes(payload)
    (runner_dir / "adapter.tar.gz").write_bytes(payload)
    model_dir = data_root / "models" / job_id  # a merged (hybrid/full) result
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"\0" * 64 + payload)
    (model_dir / "config.json").write_text("{}")
    return JobCopies(run, runner_dir, model_dir)
