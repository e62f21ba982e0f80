"""Sweeps, pruning and base-model selection on the real Ray head and ``tiny-llama`` (CPU).

One module-scoped 4-trial sweep (learning rate x LoRA rank, ASHA on, 1 worker per trial)
trains sentiment adapters; its best adapter is then pruned (SVD rank reduction within an
accuracy tolerance) and merged into a "tuned base" that model selection must rank first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from services.training.ray.driver import TrainSpec
from services.training.ray.evaluate import evaluate, load_model, load_tokenizer
from services.training.ray.prune import prune_adapter
from services.training.ray.sweep import (
    SweepOutcome,
    parse_sweep,
    reap_orphaned_placement_groups,
    run_sweep,
)
from services.training.selection import rank_base_models
from shared.datasets import samples
from tests.support.ray_cluster import start_test_ray, stop_test_ray

pytestmark = pytest.mark.slow

LABELS = samples.labels_for("sentiment")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("data")
    return {
        "train": samples.sentiment_examples(160, seed=1),
        "validation": samples.sentiment_examples(45, seed=2),
        "valid_path": _write(d / "valid.jsonl", samples.sentiment_examples(45, seed=2)),
    }


def _assert_cpus_released(timeout: float = 30.0) -> None:
    """Every CPU is free again: no worker group of a stopped trial kept its reservation."""
    import ray

    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < total and time.monotonic() < deadline:
        reap_orphaned_placement_groups()
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0.0) == total, ray.available_resources()


@pytest.fixture(scope="module")
def sweep_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, model_dir: Path):
    t0 = time.perf_counter()
    start_test_ray(tmp_path_factory.mktemp("ray"))
    t_head = time.perf_counter() - t0
    events: list[dict] = []
    base = TrainSpec(
        base_model_path=model_dir,
        datasets={"train": data["train"], "validation": data["validation"]},
        task="sentiment",
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        hyperparameters={"max_steps": 16, "batch_size": 8, "max_len": 96},
        num_workers=1,
        seed=3,
        report_every=4,
        name="sentiment",
    )
    sweep = parse_sweep(
        {
            "parameters": {"learning_rate": [3e-5, 3e-3], "r": [2, 8]},
            "num_trials": 4,
            "metric": "valid_loss",
            "scheduler": "asha",
            "max_concurrent": 2,
        },
        task="sentiment",
    )
    try:
        t0 = time.perf_counter()
        outcome = run_sweep(base, sweep, tmp_path_factory.mktemp("sweeps"), on_trial=events.append)
        print(f"\n[sweep] head up {t_head:.1f}s; 4 trials in {time.perf_counter() - t0:.1f}s")
        _assert_cpus_released()
        yield outcome, events
    finally:
        leftovers = stop_test_ray()
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def test_sweep_runs_four_trials_and_picks_the_best(sweep_run) -> None:
    outcome, events = sweep_run
    assert isinstance(outcome, SweepOutcome)
    for t in outcome.trials:
        print(f"    {t.trial_id} {t.config} {t.status} {t.metrics}")
    assert len(outcome.trials) == 4
    assert sorted((t.config["learning_rate"], t.config["r"]) for t in outcome.trials) == [
        (3e-5, 2),
        (3e-5, 8),
        (3e-3, 2),
        (3e-3, 8),
    ]
    assert all(t.status in ("completed", "stopped") for t in outcome.trials), outcome.trials
    done = [t for t in outcome.trials if t.status == "completed"]
    best = min(done, key=lambda t: t.metrics["valid_loss"])
    assert outcome.best is not None and outcome.best.trial_id == best.trial_id
    assert outcome.metric == "valid_loss" and outcome.mode == "min"
    assert outcome.best.config["learning_rate"] == 3e-3  # 100x the rate wins in 16 steps
    assert outcome.adapter_dir is not None
    cfg = json.loads((outcome.adapter_dir / "adapter_config.json").read_text())
    assert cfg["r"] == outcome.best.config["r"]
    # every trial is in the events: started, some results, and how it ended
    started = {e["trial_id"] for e in events if e["event"] == "trial_started"}
    ended = {
        e["trial_id"]: e["event"]
        for e in events
        if e["event"] in ("trial_completed", "trial_stopped", "trial_failed")
    }
    assert started == set(ended) == {t.trial_id for t in outcome.trials}
    assert {e["trial_id"] for e in events if e["event"] == "trial_result"} == started
    assert all(ended[t.trial_id] == f"trial_{t.status}" for t in outcome.trials), (
        ended,
        outcome.trials,
    )
    assert (Path(outcome.path) / "sweep.json").is_file()


@pytest.fixture(scope="module")
def held_out() -> list[dict]:
    return samples.sentiment_examples(30, seed=4)


def test_pruning_reduces_rank_of_a_trained_adapter(
    sweep_run, held_out, model_dir: Path, tmp_path: Path
) -> None:
    from shared.adapters.archive import BaseModelSpec, inspect_adapter_dir
    from shared.adapters.safetensors_header import linear_shapes_from_model_dir

    outcome, _ = sweep_run
    # ASHA decides which trials run to the end (timing-dependent on a busy machine): prune
    # the highest-rank trial that finished with an adapter, preferring the r=8 one.
    done = sorted(
        (t for t in outcome.trials if t.adapter_dir),
        key=lambda t: (t.config["r"], t.config["learning_rate"]),
        reverse=True,
    )
    assert done and done[0].config["r"] >= 2, outcome.trials
    src, rank = Path(done[0].adapter_dir), done[0].config["r"]
    tok = load_tokenizer(model_dir)

    def accuracy(path: Path) -> float:
        return float(evaluate(load_model(path), tok, held_out, "sentiment", LABELS)["accuracy"])

    t0 = time.perf_counter()
    report = prune_adapter(
        src, tmp_path / "pruned", accuracy, max_quality_drop=0.05, magnitude_sparsity=0.3
    )
    print(f"\n[prune] {time.perf_counter() - t0:.1f}s: {json.dumps(report.to_dict(), default=str)}")
    assert report.before.rank == rank and report.after.rank < rank
    assert report.after.bytes < report.before.bytes
    assert report.after.nonzeros < report.before.nonzeros
    assert report.metric_after >= report.metric_before - 0.05
    assert report.tried and all("metric" in t for t in report.tried)

    # the pruned dir is a PEFT adapter: it loads, has the new rank, and scores as reported
    model = load_model(tmp_path / "pruned")
    lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj")).lora_A["default"]
    assert lora_a.weight.shape[0] == report.after.rank
    assert report.tried[-1]["metric"] == report.metric_after  # the last passing candidate
    # ... and the registry's adapter validation accepts it
    spec = BaseModelSpec(
        id="tiny-llama",
        names=(str(model_dir),),
        linear_shapes=linear_shapes_from_model_dir(model_dir),
    )
    info = inspect_adapter_dir(tmp_path / "pruned", spec, max_rank=16)
    assert info.rank == report.after.rank


def test_model_selection_ranks_a_tuned_base_first(
    sweep_run, data, model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    outcome, _ = sweep_run
    assert outcome.adapter_dir is not None
    merged = tmp_path / "tuned-base"
    load_model(outcome.adapter_dir, merge=True).save_pretrained(str(merged))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, merged / name)

    t0 = time.perf_counter()
    ranking = rank_base_models(
        {"tiny-llama": model_dir, "tiny-llama-sentiment": merged},
        data["valid_path"],
        "sentiment",
        few_shot=2,
        max_examples=20,
    )
    print(f"\n[select] {time.perf_counter() - t0:.1f}s: {ranking}")
    assert [e["model"] for e in ranking] == ["tiny-llama-sentiment", "tiny-llama"]
    assert [e["rank"] for e in ranking] == [1, 2]
    assert ranking[0]["metric"] == "accuracy" and ranking[0]["n"] == 20
    assert ranking[0]["eval_loss"] < ranking[1]["eval_loss"]
