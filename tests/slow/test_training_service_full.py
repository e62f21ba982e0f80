"""Full-weight results (``hybrid`` merged into its base; ``full``/``transfer`` the same way)
are registered in the registry's catalog as a new tenant-owned base model, since vLLM
refuses LoRA adapters with ``modules_to_save``."""

from __future__ import annotations

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


def test_hybrid_result_is_registered_as_a_base_model(stack: TrainingStack) -> None:
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in samples.sentiment_examples(80, seed=4)
    ]
    f = stack.upload(rows).json()
    r = stack.create_job(
        training_file=f["id"],
        task="sentiment",
        training_method="hybrid",
        suffix="merged",
        seed=1,
        resources={"num_workers": 1},
        hyperparameters={"batch_size": 8, "max_steps": 6, "max_len": 96},
    )
    assert r.status_code == 200, r.text
    job = stack.wait_job(r.json()["id"], timeout=600)
    out = stack.settings.data_root() / "models" / job["id"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: a plain model dir
    assert job["status"] == "succeeded", job
    model = job["fine_tuned_model"]
    assert model.startswith("merged-") and job["result"]["registered_as"] == "base_model"
    reg = httpx.Client(
        base_url=stack.registry_url, headers=dict(stack.http.headers) | stack.headers()
    )
    base = reg.get(f"/v1/base-models/{model}").json()
    assert base["owned_by"] == "acme" and base["path"] == str(out.resolve())
