"""OpenAI conventions through the real front door: ``tunefleet up`` starts every service as a
process and the official ``openai`` SDK talks to the gateway over loopback.

* ``GET /v1/models`` lists what a tenant can call, including each adapter version's canonical
  id ``name@vN`` (a LoRA job's ``fine_tuned_model``); ``models.retrieve`` takes every form that
  resolves (``name``, ``name@production``, ``name@staging``, ``name@v1``, ``name@1``); anything
  else is 404 ``model_not_found``.
* Fields the fleet cannot honour are refused with 400 naming the parameter, through the gateway
  and on inference directly; their no-op values are accepted.
* ``max_completion_tokens`` bounds the answer like ``max_tokens``.
* One job: its ``fine_tuned_model`` is listed, retrievable, and answers a chat.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shared.datasets import samples
from tests.support.adapters import make_adapter, pack
from tests.support.postgres import free_port
from tests.unit.test_openai_params import MEANINGFUL

pytestmark = [pytest.mark.slow]
ADMIN = "tf-openai-conventions-admin"
MESSAGES: list[Any] = [{"role": "user", "content": "Where is my order?"}]


@dataclass
class UpFleet:
    gateway: str
    inference: str
    home: Path
    keys: dict[str, dict[str, str]]  # tenant -> role -> API key

    def sdk(self, tenant: str = "acme", role: str = "app") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gateway}/v1", api_key=self.keys[tenant][role], max_retries=0
        )

    def direct(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """The same request on the inference replica itself (internal token)."""
        token = (self.home / "internal_token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "X-Tenant-Id": "acme"}
        return httpx.post(f"{self.inference}{path}", json=body, headers=headers, timeout=120)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def _onboard(gateway: str, tenant: str) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(f"{gateway}/admin/tenants", json={"id": tenant}, headers=admin)
    assert r.status_code == 201, r.text
    keys = {}
    for role in ("app", "integrator"):
        r = httpx.post(
            f"{gateway}/admin/keys", json={"tenant": tenant, "role": role}, headers=admin
        )
        assert r.status_code == 201, r.text
        keys[role] = str(r.json()["key"])
    return keys


@pytest.fixture(scope="module")
def fleet(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpFleet]:
    home = tmp_path_factory.mktemp("openai-fleet")
    gw, inf = free_port(), free_port()
    env = {
        **os.environ,
        "TUNEFLEET_HOME": str(home),
        "TUNEFLEET_ADMIN_KEY": ADMIN,
        "TUNEFLEET_REGISTRY_PORT": str(free_port()),
        "TUNEFLEET_INFERENCE_PORT": str(inf),
        "TUNEFLEET_TRAINING_PORT": str(free_port()),
        "TUNEFLEET_GATEWAY_PORT": str(gw),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
        "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
        "TUNEFLEET_TRAINING_RAY_NUM_CPUS": "2",
        "CI": "true",
    }
    env.pop("DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    up = _cli("up", "--detach", env=env)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        url = f"http://127.0.0.1:{gw}"
        keys = {t: _onboard(url, t) for t in ("acme", "globex")}
        yield UpFleet(url, f"http://127.0.0.1:{inf}", home, keys)
    finally:
        down = _cli("down", env=env)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def router(fleet: UpFleet, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Adapter ``router`` with v1 (production) and v2 (staging), pushed through the gateway."""
    root = tmp_path_factory.mktemp("openai-adapters")
    h = {"Authorization": f"Bearer {fleet.keys['acme']['integrator']}"}
    for seed in (1, 2):
        archive = pack(make_adapter(model_dir, root / f"a{seed}", seed=seed), root / f"{seed}.tgz")
        with archive.open("rb") as fh:
            r = httpx.post(
                f"{fleet.gateway}/v1/adapters/router/versions",
                headers=h,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model": "tiny-llama"}'},
                timeout=60,
            )
        assert r.status_code == 201, r.text
    for alias, version in (("production", 1), ("staging", 2)):
        r = httpx.put(
            f"{fleet.gateway}/v1/adapters/router/aliases/{alias}",
            json={"version": version},
            headers=h,
        )
        assert r.status_code == 200, r.text
    return "router"


def test_models_list_and_retrieve_every_form(fleet: UpFleet, router: str) -> None:
    client = fleet.sdk()
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny-llama"
    forms = {"router": "router@v1", "router@production": "router@v1", "router@v1": "router@v1"}
    forms |= {"router@staging": "router@v2", "router@v2": "router@v2"}
    assert set(forms) <= set(ids)
    assert "router@1" not in ids  # one canonical id per version in the list ...
    forms |= {"router@1": "router@v1", "router@2": "router@v2", "tiny-llama": "tiny-llama"}
    for form, root in forms.items():  # ... but every form that resolves is retrievable
        card = client.models.retrieve(form)
        assert (card.id, card.object, card.to_dict()["root"]) == (form, "model", root)
        assert card.owned_by == ("system" if form == "tiny-llama" else "acme")
    for unknown in ("router@v9", "router@canary", "nope", "Not A Model!", "ft:tiny:acme:x:1"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(unknown)
        assert info.value.code == "model_not_found", unknown
    # tenant-scoped: globex neither lists nor retrieves acme's adapter
    other = fleet.sdk("globex")
    assert [m.id for m in other.models.list()] == ["tiny-llama"]
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve("router@v1")


@pytest.mark.parametrize("field", sorted(MEANINGFUL))
def test_unsupported_parameters_are_refused_by_name(fleet: UpFleet, field: str) -> None:
    client = fleet.sdk()
    value = MEANINGFUL[field]
    calls = {
        "chat": lambda: client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=2, extra_body={field: value}
        ),
        "completions": lambda: client.completions.create(
            model="tiny-llama", prompt="Order", max_tokens=2, extra_body={field: value}
        ),
    }
    for path, call in calls.items():
        with pytest.raises(openai.BadRequestError) as info:
            call()
        err = info.value
        assert (err.code, err.param) == ("unsupported_parameter", field), (path, err.body)
        body = {"model": "tiny-llama", "max_tokens": 2, field: value}
        body |= {"messages": MESSAGES} if path == "chat" else {"prompt": "Order"}
        r = fleet.direct(f"/v1/{'chat/' if path == 'chat' else ''}completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_sdk_arguments_refused_or_honoured(fleet: UpFleet, router: str) -> None:
    """The SDK's own keyword arguments, as a customer writes them."""
    client = fleet.sdk()
    refused: list[tuple[str, dict[str, Any]]] = [
        ("tools", {"tools": [{"type": "function", "function": {"name": "lookup"}}]}),
        ("logprobs", {"logprobs": True, "top_logprobs": 2}),
        ("presence_penalty", {"presence_penalty": 1.0}),
        ("logit_bias", {"logit_bias": {"1": 5}}),
        ("n", {"n": 9}),
    ]
    for param, kwargs in refused:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny-llama", messages=MESSAGES, **kwargs)
        assert info.value.param == param, info.value.body
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, extra_body={"top_k": 5}
        )
    assert (info.value.code, info.value.param) == ("unknown_parameter", "top_k")
    # honoured: n > 1; accepted: no-op values and bookkeeping
    chat = client.chat.completions.create(
        model="router",
        messages=MESSAGES,
        n=2,
        max_tokens=4,
        presence_penalty=0,
        frequency_penalty=0,
        logprobs=False,
        user="u-1",
        metadata={"ticket": "42"},
        store=False,
    )
    assert [c.index for c in chat.choices] == [0, 1]


def test_max_completion_tokens_bounds_the_answer(fleet: UpFleet, router: str) -> None:
    client = fleet.sdk()
    for model in ("tiny-llama", router):
        for cap in (1, 3):
            chat = client.chat.completions.create(
                model=model, messages=MESSAGES, temperature=0, max_completion_tokens=cap
            )
            assert chat.usage is not None and chat.usage.completion_tokens <= cap
            if chat.usage.completion_tokens == cap:
                assert chat.choices[0].finish_reason == "length"
        text = client.completions.create(
            model=model, prompt="Order", temperature=0, extra_body={"max_completion_tokens": 2}
        )
        assert text.usage is not None and text.usage.completion_tokens <= 2
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        temperature=0,
        max_completion_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert usage and usage[-1].completion_tokens <= 2
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=4, max_completion_tokens=3
        )
    assert (info.value.code, info.value.param) == (
        "conflicting_parameters",
        "max_completion_tokens",
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_completion_tokens=100_000
        )
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "max_completion_tokens"


def test_job_fine_tuned_model_is_a_listed_retrievable_model(fleet: UpFleet) -> None:
    integrator = fleet.sdk(role="integrator")
    rows = samples.sentiment_examples(48, seed=11)
    data = "".join(
        json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows
    )
    file = integrator.files.create(
        file=("reviews.jsonl", io.BytesIO(data.encode())), purpose="fine-tune"
    )
    t0 = time.perf_counter()
    job = integrator.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=file.id,
        suffix="oai-sentiment",
        hyperparameters={"n_epochs": 1, "batch_size": 8},
        extra_body={
            "task": "sentiment",
            "training_method": "lora",
            "resources": {"num_workers": 1},
        },
    )
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(2)
        job = integrator.fine_tuning.jobs.retrieve(job.id)
    events = [e.message for e in integrator.fine_tuning.jobs.list_events(job.id)]
    assert job.status == "succeeded", (job.error, events[:5])
    print(f"\n[openai job] succeeded in {time.perf_counter() - t0:.1f}s")
    model = job.fine_tuned_model
    assert model == "oai-sentiment@v1"
    client = fleet.sdk()
    assert model in [m.id for m in client.models.list()]
    card = client.models.retrieve(model)
    assert card.id == model and card.owned_by == "acme"
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_completion_tokens=2
    )
    assert raw.headers["x-tunefleet-adapter-version"] == f"acme/{model}"
    assert raw.parse().usage is not None
