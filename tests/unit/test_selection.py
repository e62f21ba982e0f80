"""Base-model selection input checks (the scoring itself runs in tests/slow/test_sweep_prune)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.training.selection import few_shot_prefix, rank_base_models, read_examples
from shared.errors import InvalidRequest


@pytest.fixture
def model(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _rows(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_few_shot_prefix_uses_the_training_format() -> None:
    shots = [{"prompt": "Review: ok\nSentiment:", "completion": " neutral\n"}]
    assert few_shot_prefix(shots) == "Review: ok\nSentiment: neutral\n\n"


def test_read_examples_names_the_bad_line(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "a", "completion": " b"})
    path = _rows(tmp_path / "v.jsonl", [good, "", good, "{not json"])
    with pytest.raises(InvalidRequest) as exc:
        read_examples(path, 10)
    assert exc.value.param == "validation_file" and "line 4" in exc.value.message
    assert len(read_examples(path, 2)) == 2  # stops before the bad line
    path = _rows(tmp_path / "w.jsonl", [good, json.dumps({"prompt": "a"})])
    with pytest.raises(InvalidRequest) as exc:
        read_examples(path, 10)
    assert "line 2" in exc.value.message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model_dirs": {}}, "models"),
        ({"model_dirs": {"ghost": Path("/nonexistent")}}, "models"),
        ({"task": "poetry"}, "task"),
        ({"few_shot": -1}, "few_shot"),
        ({"few_shot": 5}, "validation_file"),  # the file has only 3 rows
    ],
)
def test_bad_selection_requests_name_the_field(
    kwargs: dict, param: str, model: Path, tmp_path: Path
) -> None:
    row = json.dumps({"prompt": "Review: fine\nSentiment:", "completion": " neutral"})
    valid = _rows(tmp_path / "v.jsonl", [row] * 3)
    args = {"model_dirs": {"tiny": model}, "valid_path": valid, "task": "sentiment"}
    args.update(kwargs)
    with pytest.raises(InvalidRequest) as exc:
        rank_base_models(**args)
    assert exc.value.param == param
