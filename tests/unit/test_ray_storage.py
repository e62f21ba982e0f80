"""Where Ray Train runs keep their checkpoints (``storage_path``: a path or a URI) and how a
train loop reads its splits (object refs, or plain rows without Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.training.ray import storage
from services.training.ray.datasets import count_rows, rows_of, split_rows
from services.training.settings import TrainingSettings


def test_default_storage_is_local_under_the_data_dir(tmp_path: Path) -> None:
    s = TrainingSettings(home=tmp_path)
    assert s.ray_storage() == str((tmp_path / "training" / "ray-runs").resolve())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://bucket/tunefleet/runs/", "s3://bucket/tunefleet/runs"),
        ("gs://bucket/runs", "gs://bucket/runs"),
        ("/mnt/shared/runs", "/mnt/shared/runs"),
    ],
)
def test_storage_path_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: str
) -> None:
    monkeypatch.setenv("TUNEFLEET_TRAINING_STORAGE_PATH", value)
    assert TrainingSettings(home=tmp_path).ray_storage() == expected


def test_relative_storage_path_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNEFLEET_TRAINING_STORAGE_PATH", "shared/runs")
    assert TrainingSettings(home=tmp_path).ray_storage() == str(tmp_path / "shared" / "runs")


def test_storage_root_join_and_write_for_paths_and_uris(tmp_path: Path) -> None:
    local = storage.storage_root(tmp_path / "a" / "runs")
    assert Path(local).is_dir() and Path(local).is_absolute()
    assert storage.storage_root("s3://b/p/") == "s3://b/p"  # a URI is not created locally
    assert storage.join("s3://b/p", "sweep-x", "/trials/") == "s3://b/p/sweep-x/trials"
    assert storage.join(local, "x") == f"{local}/x"
    storage.write_text(storage.join(local, "s", "sweep.json"), "{}")
    assert (Path(local) / "s" / "sweep.json").read_text() == "{}"
    uri = f"file://{tmp_path}/viauri/sweep.json"  # the pyarrow path, as for s3://
    storage.write_text(uri, '{"a": 1}')
    assert (tmp_path / "viauri" / "sweep.json").read_text() == '{"a": 1}'


def test_splits_are_read_by_name_from_rows() -> None:
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(5)]
    config = {"datasets": {"train": rows, "test": rows[:2]}}
    assert split_rows(config, "train") == rows
    assert split_rows(config, "train", 3) == rows[:3]
    assert split_rows(config, "test") == rows[:2]  # any split name travels the same way
    assert split_rows(config, "validation") == [] and split_rows({}, "train") == []
    assert rows_of(config["datasets"], "test") == rows[:2]
    assert count_rows(config["datasets"], "train") == 5
    assert count_rows(config["datasets"], "validation") == 0
