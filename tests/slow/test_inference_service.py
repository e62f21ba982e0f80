"""The inference service over HTTP, on the one shared vLLM engine, with a real registry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.modelref import RUNNING_HEADER
from tests.support.adapters import make_adapter, pack
from tests.support.fleet import Fleet, fleet

pytestmark = [pytest.mark.slow]
HEADER = "x-tunefleet-adapter-version"
LABELS = ["billing", "outage", "account", "shipping"]


@pytest.fixture(scope="module")
def archives(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inf-adapters")
    out = {}
    for name, r, seed in (("a1", 8, 1), ("a2", 8, 2), ("a3", 8, 3), ("rank32", 32, 4)):
        out[name] = pack(
            make_adapter(model_dir, root / name, r=r, seed=seed), root / f"{name}.tar.gz"
        )
    return out


@pytest.fixture
async def f(tmp_path: Path, model_dir: Path, vllm_engine: object) -> AsyncIterator[Fleet]:
    async with fleet(tmp_path, model_dir, vllm_engine, max_cpu_loras=2, max_loras=2) as fl:
        yield fl


def completion(model: str, prompt: str = "Ticket: my invoice is wrong\nCategory:", **kw: object):
    return {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, **kw}


async def test_ready_and_metrics(f: Fleet) -> None:
    assert (await f.inference.get("/readyz")).status_code == 200
    r = await f.inference.post("/v1/completions", json=completion("tiny-llama"))
    assert r.status_code == 200, r.text
    assert r.headers[HEADER] == "tiny-llama"
    body = r.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] > 0
    text = (await f.inference.get("/metrics")).text
    assert (
        'tunefleet_inference_requests_total{adapter="tiny-llama",status="ok",tenant="acme"}' in text
    )
    assert "tunefleet_inference_time_to_first_token_seconds_bucket" in text


async def test_ignore_eos_and_min_tokens_are_honoured(f: Fleet) -> None:
    async def tokens(**kw: object) -> tuple[int, str]:
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Classify: my invoice is wrong"}],
            "temperature": 0,
            **kw,
        }
        r = await f.inference.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["completion_tokens"], r.json()["choices"][0]["finish_reason"]

    natural, reason = await tokens(max_tokens=64)
    assert reason == "stop" and natural < 64
    assert await tokens(max_tokens=64, ignore_eos=True) == (64, "length")
    assert (await tokens(max_tokens=64, min_tokens=natural + 5))[0] >= natural + 5


async def test_base_and_two_adapters_in_one_batch(f: Fleet, archives: dict[str, Path]) -> None:
    await f.push("one", archives["a1"])
    await f.push("two", archives["a2"])
    models = ["tiny-llama", "one@1", "two@1"] * 2
    rs = await asyncio.gather(
        *(f.inference.post("/v1/completions", json=completion(m)) for m in models)
    )
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    texts = {r.headers[HEADER]: r.json()["choices"][0]["text"] for r in rs}
    assert set(texts) == {"tiny-llama", "acme/one@v1", "acme/two@v1"}
    assert len(set(texts.values())) == 3, texts  # three different models answered
    # same model, same greedy prompt: same answer
    assert rs[0].json()["choices"][0]["text"] == rs[3].json()["choices"][0]["text"]


async def test_chat_streaming_matches_non_streaming(f: Fleet) -> None:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    plain = (await f.inference.post("/v1/chat/completions", json=body)).json()
    r = await f.inference.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


async def test_structured_choice_and_json_schema(f: Fleet, archives: dict[str, Path]) -> None:
    await f.push("router", archives["a1"])
    for model in ("tiny-llama", "router@1"):
        r = await f.inference.post(
            "/v1/completions", json=completion(model, choices_allowed=LABELS, max_tokens=5)
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] in LABELS
    schema = {
        "type": "object",
        "properties": {"priority": {"enum": ["low", "high"]}},
        "required": ["priority"],
        "additionalProperties": False,
    }
    r = await f.inference.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "max_tokens": 20,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Rate: server down!"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema},
            },
        },
    )
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"])["priority"] in ("low", "high")


async def test_n_and_prompt_lists(f: Fleet) -> None:
    r = await f.inference.post(
        "/v1/completions",
        json=completion("tiny-llama", prompt=["Order", "Invoice"], n=2, temperature=1.0, seed=7),
    )
    assert r.status_code == 200, r.text
    assert sorted(c["index"] for c in r.json()["choices"]) == [0, 1, 2, 3]


async def test_bad_requests_are_clear(f: Fleet) -> None:
    r = await f.inference.post("/v1/completions", json=completion("no-such-model"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await f.inference.post("/v1/completions", json=completion("tiny-llama", prompt="x " * 900))
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert "512" in r.json()["error"]["message"]
    r = await f.inference.post("/v1/completions", json=completion("tiny-llama", max_tokens=100000))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = await f.inference.post("/v1/completions", json=completion("tiny-llama", temperature=5))
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = await f.inference.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = await f.inference.post(
        "/v1/completions", json=completion("tiny-llama"), headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
    # the ref a gateway forwards is served as given, and only within the caller's tenant
    ref = {"X-Tunefleet-Model-Ref": "globex/router@v1"}
    r = await f.inference.post("/v1/completions", json=completion("router"), headers=ref)
    assert r.status_code == 400, r.text
    ref = {"X-Tunefleet-Model-Ref": "tiny-llama"}
    r = await f.inference.post("/v1/completions", json=completion("anything"), headers=ref)
    assert r.status_code == 200 and r.headers[HEADER] == "tiny-llama", r.text


async def test_bad_adapters_are_422_and_engine_keeps_serving(
    f: Fleet, archives: dict[str, Path]
) -> None:
    # registry allows rank 32 (its limit is 64); this replica's engine allows 16
    await f.push("big", archives["rank32"])
    r = await f.inference.post("/v1/completions", json=completion("big@1"))
    assert r.status_code == 422, r.text
    assert "rank" in r.json()["error"]["message"]
    # the archive vanished from the registry's store
    v = await f.push("lost", archives["a3"])
    blob = f.home / "artifacts" / "sha256" / v["sha256"][:2] / v["sha256"][2:]
    blob.rename(blob.with_suffix(".moved"))
    r = await f.inference.post("/v1/completions", json=completion("lost@1"))
    assert r.status_code == 422, r.text
    blob.with_suffix(".moved").rename(blob)
    r = await f.inference.post("/v1/completions", json=completion("tiny-llama"))
    assert r.status_code == 200  # the engine lives on
    assert (
        'tunefleet_inference_adapter_load_failures_total{reason="adapter_rank_too_large"}'
        in (await f.inference.get("/metrics")).text
    )


async def test_hot_swap_under_load_zero_failures(f: Fleet, archives: dict[str, Path]) -> None:
    await f.push("swap", archives["a1"])
    await f.push("swap", archives["a2"])
    await f.promote("swap", 1)
    seen: list[tuple[float, str, int]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            r = await f.inference.post("/v1/completions", json=completion("swap", max_tokens=4))
            seen.append((time.monotonic(), r.headers.get(HEADER, ""), r.status_code))

    workers = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(2.0)
    await f.promote("swap", 2)
    moved_at = time.monotonic()
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*workers)
    assert seen and all(status == 200 for _, _, status in seen), seen
    before = {v for t, v, _ in seen if t < moved_at}
    assert before == {"acme/swap@v1"}
    late = [v for t, v, _ in seen if t > moved_at + 1.0]
    assert late and set(late) == {"acme/swap@v2"}, late


async def test_eviction_reload_pin_and_admin(f: Fleet, archives: dict[str, Path]) -> None:
    for name in ("e1", "e2", "e3"):
        await f.push(name, archives["a1" if name != "e2" else "a2"])
    for name in ("e1", "e2", "e3"):  # capacity is 2: e1 gets evicted
        r = await f.inference.post("/v1/completions", json=completion(f"{name}@1"))
        assert r.status_code == 200, r.text
    loaded = (await f.inference.get("/admin/adapters")).json()["data"]
    assert [a["ref"] for a in loaded] == ["acme/e2@v1", "acme/e3@v1"]
    r = await f.inference.post("/v1/completions", json=completion("e1@1"))  # reload
    assert r.status_code == 200 and r.headers[HEADER] == "acme/e1@v1"
    assert (
        "tunefleet_inference_adapter_evictions_total 2.0"
        in (await f.inference.get("/metrics")).text
    )
    pin = await f.inference.post("/admin/adapters/pin", json={"ref": "acme/e1@v1"})
    assert pin.json()["pinned"] is True
    for name in ("e2", "e3", "e2"):
        await f.inference.post("/v1/completions", json=completion(f"{name}@1"))
    refs = [a["ref"] for a in (await f.inference.get("/admin/adapters")).json()["data"]]
    assert "acme/e1@v1" in refs
    r = await f.inference.post("/admin/adapters/unload", json={"ref": "acme/e1@v1"})
    assert r.status_code == 200
    r = await f.inference.post("/admin/adapters/unload", json={"ref": "acme/e1@v1"})
    assert r.status_code == 404
    r = await f.inference.post("/admin/adapters/prewarm", json={"model": "e1@1"})
    assert r.status_code == 200 and r.json()["ref"] == "acme/e1@v1"


async def test_models_list_and_tenant_isolation(f: Fleet, archives: dict[str, Path]) -> None:
    await f.push("mine", archives["a1"])
    await f.promote("mine", 1)
    ids = [m["id"] for m in (await f.inference.get("/v1/models")).json()["data"]]
    assert ids[:1] == ["tiny-llama"] and {"mine", "mine@v1", "mine@production"} <= set(ids)
    other = {"X-Tenant-Id": "globex"}
    r = await f.inference.post("/v1/completions", json=completion("mine@1"), headers=other)
    assert r.status_code == 404
    ids = [m["id"] for m in (await f.inference.get("/v1/models", headers=other)).json()["data"]]
    assert ids == ["tiny-llama"]


async def test_burst_past_the_admission_bound_gets_503_with_retry_after(
    tmp_path: Path, model_dir: Path, vllm_engine: object
) -> None:
    # Bound: max_num_seqs + max_waiting sequences in flight (just max_waiting = 3 while the
    # app does not pass max_running to the Server).
    async with fleet(tmp_path, model_dir, vllm_engine, max_waiting=3, max_num_seqs=1) as fl:
        server = fl.inference_app.state.server
        long = completion("tiny-llama", max_tokens=256)
        admitted = [
            asyncio.create_task(fl.inference.post("/v1/completions", json=long))
            for _ in range(server.max_admitted)
        ]
        async with asyncio.timeout(60):  # fill the bound, then burst
            while server.admitted < server.max_admitted:
                await asyncio.sleep(0.01)
        ready = (await fl.inference.get("/readyz")).json()  # what every gateway's spill reads
        assert ready["running"] == server.max_admitted and ready["max_running"] == 1, ready
        burst = await asyncio.gather(
            *(fl.inference.post("/v1/completions", json=completion("tiny-llama")) for _ in range(5))
        )
        for r in burst:
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) >= 1
            err = r.json()["error"]
            assert err["code"] == "engine_overloaded" and "overloaded" in err["message"]
        for r in await asyncio.gather(*admitted):  # the admitted ones finish normally
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] > 0
            assert 1 <= int(r.headers[RUNNING_HEADER]) <= server.max_admitted
        metrics = (await fl.inference.get("/metrics")).text
        assert 'adapter="tiny-llama",status="503",tenant="acme"} 5.0' in metrics
        assert server.admitted == 0  # nothing stays counted: the next request is admitted
        r = await fl.inference.post("/v1/completions", json=completion("tiny-llama"))
        assert r.status_code == 200, r.text
