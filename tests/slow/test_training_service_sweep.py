"""A fine-tuning job with a Ray Tune sweep and SVD pruning, through the training service
(real Ray head, real registry): the best trial is kept, pruned within the quality tolerance,
and the pruned adapter is what the registry stores; ``auto_promote`` then keeps the alias
on that version when a later, worse job is measured against it on the same validation set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.datasets import samples
from tests.support.ray_cluster import start_test_ray, stop_test_ray
from tests.support.training import TrainingStack, training_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingStack]:
    start_test_ray(tmp_path_factory.mktemp("ray"))
    try:
        with training_stack(tmp_path_factory.mktemp("training"), model_dir) as st:
            yield st
    finally:
        leftovers = stop_test_ray()
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def test_sweep_then_prune_registers_the_pruned_best_trial(stack: TrainingStack) -> None:
    def upload(rows: list[dict], name: str) -> str:
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        r = stack.upload(rows, filename=name)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    train = upload(samples.sentiment_examples(200, seed=1), "train.jsonl")
    valid = upload(samples.sentiment_examples(40, seed=2), "valid.jsonl")
    t0 = time.perf_counter()
    r = stack.create_job(
        training_file=train,
        validation_file=valid,
        task="sentiment",
        suffix="swept",
        seed=3,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        resources={"num_workers": 1},
        hyperparameters={"batch_size": 8, "max_steps": 40, "max_len": 128},
        sweep={
            "parameters": {"learning_rate": [0.0005, 0.003]},
            "metric": "accuracy",
            "scheduler": "none",
        },
        prune={"max_quality_drop": 0.05},
        auto_promote={"alias": "production"},
    )
    assert r.status_code == 200, r.text
    job = stack.wait_job(r.json()["id"], timeout=900)
    result = job["result"]
    print(f"\n[sweep+prune job] {time.perf_counter() - t0:.1f}s sweep={result.get('sweep')}")
    print(f"[sweep+prune job] prune={result.get('prune')} tuned={result.get('tuned')}")
    assert job["status"] == "succeeded", job
    sweep = result["sweep"]
    assert len(sweep["trials"]) == 2 and sweep["metric"] == "accuracy"
    assert sweep["best"]["config"]["learning_rate"] in (0.0005, 0.003)
    prune = result["prune"]
    assert prune["after"]["rank"] <= prune["before"]["rank"] == 8
    assert prune["metric_before"] - prune["metric_after"] <= 0.05 + 1e-9
    assert job["fine_tuned_model"] == "swept@v1"
    assert any(e["message"].startswith("Sweep") for e in stack.events(job["id"]))
    reg = httpx.Client(
        base_url=stack.registry_url, headers=dict(stack.http.headers) | stack.headers()
    )
    assert reg.get("/v1/adapters/swept/versions/1").json()["rank"] == prune["after"]["rank"]
    assert result["promotion"]["moved"] is True  # nothing behind the alias yet

    # a much shorter run: registered as v2, but it does not beat v1 on the same validation
    # set (the runner evaluates the version behind the alias), so the alias stays
    r = stack.create_job(
        training_file=train,
        validation_file=valid,
        task="sentiment",
        suffix="swept",
        seed=3,
        resources={"num_workers": 1},
        hyperparameters={"batch_size": 8, "max_steps": 3, "max_len": 128},
        auto_promote={"alias": "production", "gate": "accuracy"},
    )
    second = stack.wait_job(r.json()["id"], timeout=600)
    promo = second["result"]["promotion"]
    print(f"[auto_promote] {promo}")
    assert second["status"] == "succeeded" and second["fine_tuned_model"] == "swept@v2"
    assert promo["moved"] is False and promo["incumbent_version"] == 1
    # the gate compares both versions on this job's validation split (the reported tuned
    # metrics are on the test split, which no decision looks at)
    gate = second["result"]["gate_tuned"]["accuracy"]
    assert promo["tuned"] == pytest.approx(gate) and gate <= promo["incumbent"]
    assert second["result"]["eval_split"] == "test"
    assert reg.get("/v1/adapters/swept").json()["aliases"] == {"production": 1}
