"""Full-weight results (``hybrid`` merged into its base; ``full``/``transfer`` the same way)
are uploaded to the registry as a new tenant-owned base model (an archive, since vLLM refuses
LoRA adapters with ``modules_to_save``), and an inference replica configured to serve that
base by id downloads it from the registry, verifies it and answers with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from shared.datasets import samples
from tests.support.engine import SMALL_ENGINE
from tests.support.ray_cluster import start_test_ray, stop_test_ray
from tests.support.training import TOKEN, TrainingStack, training_stack

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


@pytest.fixture(scope="module")
def merged_job(stack: TrainingStack) -> dict[str, Any]:
    """One ``hybrid`` job (its merged model) for the tests of this module."""
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
    return stack.wait_job(r.json()["id"], timeout=600)


def test_hybrid_result_is_registered_as_a_base_model(
    stack: TrainingStack, merged_job: dict[str, Any]
) -> None:
    job = merged_job
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
    # an artifact in the registry's blob store, not the training host's directory
    assert base["owned_by"] == "acme" and base["path"] is None
    assert len(base["artifact_sha256"]) == 64 and base["size_bytes"] > 0
    assert str(stack.home) not in reg.get("/v1/base-models").text


async def test_replica_downloads_the_merged_model_and_serves_it(
    stack: TrainingStack, merged_job: dict[str, Any], tmp_path: Path
) -> None:
    from services.inference.app import create_app
    from services.inference.engine.base_source import materialize_base
    from services.inference.engine.vllm_engine import VllmEngine
    from services.inference.settings import InferenceSettings, engine_config

    model = merged_job["fine_tuned_model"]
    settings = InferenceSettings(
        home=tmp_path,  # its own directory: nothing of the training host's is read
        internal_token=TOKEN,
        registry_url=stack.registry_url,
        base_model=model,
        base_source="registry",
        base_owner="acme",
        follow_events=False,
        **SMALL_ENGINE,
    )
    t0 = time.monotonic()
    settings = await materialize_base(settings)
    fetched_s = time.monotonic() - t0
    served = settings.base_dir()
    sha = httpx.get(
        f"{stack.registry_url}/v1/base-models/{model}",
        headers=dict(stack.http.headers) | stack.headers(),
    ).json()["artifact_sha256"]
    assert served == settings.bases_dir() / sha and (served / "config.json").is_file()
    assert (
        await materialize_base(settings.model_copy(update={"model_dir": None}))
    ).base_dir() == served
    engine = VllmEngine(engine_config(settings))
    app = create_app(settings, engine)
    async with (
        LifespanManager(app, startup_timeout=300, shutdown_timeout=120),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://inference",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"},
            timeout=120,
        ) as inf,
    ):
        deadline = time.monotonic() + 300
        while (ready := await inf.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            await asyncio.sleep(0.2)
        assert ready.json()["bases"] == [model]
        r = await inf.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Review: great phone. Sentiment?"}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model and r.json()["usage"]["completion_tokens"] > 0
    print(f"merged model fetched+verified+unpacked in {fetched_s:.2f}s")
