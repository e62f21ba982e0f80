"""Full-weight results (``hybrid`` merged into its base; ``full``/``transfer`` the same way)
are uploaded to the registry as a new tenant-owned base model (an archive, since vLLM refuses
LoRA adapters with ``modules_to_save``). End to end for ``full``: the job trains, its model is
uploaded, an inference replica configured to serve that base by id downloads it from the
registry (its own home: nothing of the training host's is read), verifies and serves it, and
a chat request through the gateway is answered by it."""

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
from tests.support.fleet import ADMIN_KEY
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


def run_job(stack: TrainingStack, method: str, suffix: str) -> dict[str, Any]:
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in samples.sentiment_examples(80, seed=4)
    ]
    f = stack.upload(rows).json()
    r = stack.create_job(
        training_file=f["id"],
        task="sentiment",
        training_method=method,
        suffix=suffix,
        seed=1,
        resources={"num_workers": 1},
        hyperparameters={"batch_size": 8, "max_steps": 6, "max_len": 96},
    )
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    job = stack.wait_job(r.json()["id"], timeout=600)
    print(f"{method} job: {job['status']} in {time.monotonic() - t0:.1f}s")
    return job


@pytest.fixture(scope="module")
def merged_job(stack: TrainingStack) -> dict[str, Any]:
    """One ``hybrid`` job (its merged model)."""
    return run_job(stack, "hybrid", "merged")


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


def test_transfer_job_trains_only_the_head_and_registers_a_base_model(
    stack: TrainingStack, model_dir: Path
) -> None:
    """``transfer``: the base frozen, only ``lm_head`` trained; the result is a whole model
    (PEFT has no "modules_to_save only" adapter) registered like ``hybrid``/``full``."""
    from safetensors.torch import load_file

    job = run_job(stack, "transfer", "head")
    assert job["status"] == "succeeded", job
    model = job["fine_tuned_model"]
    assert model.startswith("head-") and job["result"]["registered_as"] == "base_model"
    out = stack.settings.data_root() / "models" / job["id"]
    tuned, base = load_file(out / "model.safetensors"), load_file(model_dir / "model.safetensors")
    changed = sorted(k for k in base if not bool((tuned[k] == base[k]).all()))
    assert changed == ["lm_head.weight"], changed
    reg = httpx.get(
        f"{stack.registry_url}/v1/base-models/{model}",
        headers=dict(stack.http.headers) | stack.headers(),
    )
    assert reg.status_code == 200 and reg.json()["owned_by"] == "acme", reg.text


class _ToReplica(httpx.AsyncBaseTransport):
    """The gateway's upstream: ``http://inference`` is the in-process replica, every other
    host (the registry on loopback) the network."""

    def __init__(self, app: Any) -> None:
        self.app = httpx.ASGITransport(app=app)
        self.net = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "inference":
            return await self.app.handle_async_request(request)
        return await self.net.handle_async_request(request)


async def wait_ready(http: httpx.AsyncClient, timeout: float = 300) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (ready := await http.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.2)
    return ready


async def test_full_job_served_by_a_replica_that_downloads_it_through_the_gateway(
    stack: TrainingStack, tmp_path: Path
) -> None:
    from gateway.app import create_app as create_gateway
    from gateway.settings import GatewaySettings
    from services.inference.app import create_app
    from services.inference.engine.base_source import materialize_base
    from services.inference.engine.vllm_engine import VllmEngine
    from services.inference.settings import InferenceSettings, engine_config

    job = run_job(stack, "full", "whole")
    assert job["status"] == "succeeded", job
    model = job["fine_tuned_model"]
    assert model.startswith("whole-") and job["result"]["registered_as"] == "base_model"
    settings = InferenceSettings(
        home=tmp_path / "replica",  # its own directory: nothing of the training host's
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
    assert served == settings.bases_dir() / f"{model}-{sha}" and (served / "config.json").is_file()
    again = await materialize_base(settings.model_copy(update={"model_dir": None}))
    assert again.base_dir() == served  # verified once, reused at the next start

    t0 = time.monotonic()
    app = create_app(settings, VllmEngine(engine_config(settings)))
    gw_app = create_gateway(
        GatewaySettings(
            home=tmp_path / "gateway",
            internal_token=TOKEN,
            admin_key=ADMIN_KEY,
            registry_url=stack.registry_url,
            inference_urls=["http://inference"],
            training_url=stack.training_url,
        ),
        upstream_transport=_ToReplica(app),
    )
    async with (
        LifespanManager(app, startup_timeout=300, shutdown_timeout=120),
        LifespanManager(gw_app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://inference",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"},
        ) as inf,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw_app), base_url="http://gateway", timeout=120
        ) as gw,
    ):
        assert (await wait_ready(inf)).json()["bases"] == [model]
        engine_s = time.monotonic() - t0
        await wait_ready(gw, 30)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert (await gw.post("/admin/tenants", json={"id": "acme"}, headers=admin)).is_success
        r = await gw.post(
            "/admin/keys", json={"tenant": "acme", "role": "integrator"}, headers=admin
        )
        key = {"Authorization": f"Bearer {r.json()['key']}"}
        listed = await gw.get("/v1/models", headers=key)
        assert model in [m["id"] for m in listed.json()["data"]], listed.text
        t0 = time.monotonic()
        r = await gw.post(
            "/v1/chat/completions",
            headers=key,
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Review: great phone. Sentiment?"}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
        chat_s = time.monotonic() - t0
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == model and body["usage"]["completion_tokens"] > 0
    print(
        f"full model {model}: fetched+verified+unpacked {fetched_s:.2f}s, engine ready "
        f"{engine_s:.1f}s, chat through the gateway {chat_s * 1000:.0f} ms "
        f"({body['choices'][0]['message']['content']!r}); metrics base {job['result'].get('base')} "
        f"tuned {job['result'].get('tuned')}"
    )
