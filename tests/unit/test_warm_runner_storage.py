"""The warm runner's checkpoint storage and the per-phase breakdown (no Ray cluster):
checkpoints copied to ``<run>/checkpoint_<step>`` with state.json as the completeness mark,
the 2 newest kept, the newest restored; phases computed from a final report's timestamps."""

from __future__ import annotations

import json
from pathlib import Path

from services.training.ray.driver import run_phases
from services.training.ray.warm import _checkpoints, _persist, _restored


def _ckpt(tmp: Path, step: int) -> Path:
    d = tmp / f"local-{step}"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * step)
    (d / "optimizer.pt").write_bytes(b"o")
    (d / "state.json").write_text(json.dumps({"step": step}))
    return d


def test_checkpoints_keep_the_two_newest_and_restore_the_last(tmp_path: Path) -> None:
    run = str(tmp_path / "runs" / "job-1")
    with _restored(run) as nothing:
        assert nothing is None  # a fresh run
    paths = [_persist(_ckpt(tmp_path, step), run, step) for step in (4, 8, 12)]
    assert paths[-1] == f"{run}/checkpoint_000012"
    assert [s for s, _ in _checkpoints(run)] == [8, 12]
    # a copy cut short before its state.json is not a checkpoint
    (Path(run) / "checkpoint_000016" / "adapter").mkdir(parents=True)
    with _restored(run) as d:
        assert d is not None and json.loads((d / "state.json").read_text())["step"] == 12
        assert (d / "adapter" / "adapter_model.safetensors").read_bytes() == b"w" * 12


def test_phases_from_the_final_report() -> None:
    final = {
        "loop_started_at": 110.0,
        "setup_seconds": 4.0,
        "checkpoint_seconds": 0.5,
        "reported_at": 130.0,
    }
    phases = run_phases(final, started_at=99.5, fit_started_at=100.0, fit_ended_at=131.0)
    assert phases == {
        "submit": 0.5,
        "start": 10.0,
        "setup": 4.0,
        "train": 15.5,
        "checkpoint": 0.5,
        "finish": 1.0,
    }
    assert run_phases({"step": 3}, started_at=0, fit_started_at=0, fit_ended_at=1) == {}
