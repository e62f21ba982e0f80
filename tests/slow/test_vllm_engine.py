"""VllmEngine on a real vLLM (CPU) engine serving tiny-llama and real PEFT adapters.

One engine serves the whole module (starting one takes ~30-45 s on 2 cores).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, SamplingParams

from services.inference.engine.base import (
    AdapterHandle,
    AdapterLoadError,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    InferenceEngine,
    InvalidGenerationRequest,
    collect,
)
from services.inference.engine.vllm_engine import VllmEngine
from tests.support.adapters import make_adapter

PROMPT = "Ticket: my invoice is wrong\nCategory:"
CATEGORIES = ["billing", "outage", "account", "shipping"]
# Ids for handles made by hand here; far above what the shared engine's own
# new_adapter_id() hands the service tests, so the two never collide on one engine.
_ids = itertools.count(1_000_000)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(vllm_engine: VllmEngine) -> AsyncIterator[VllmEngine]:
    """The session's one engine (tests/conftest.py checks no process outlives it)."""
    print(f"\n[vllm] engine start: {vllm_engine.start_seconds:.1f}s on {vllm_engine.device}")
    assert vllm_engine._engine_procs, "expected the engine to run child processes"
    yield vllm_engine


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {
        "a1": make_adapter(model_dir, root / "a1", r=8, seed=1),
        "a2": make_adapter(model_dir, root / "a2", r=8, seed=2),
        "rank32": make_adapter(model_dir, root / "rank32", r=32, seed=3),
        "corrupt": make_adapter(model_dir, root / "corrupt", r=8, seed=4),
    }
    weights = out["corrupt"] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return out


def handle(ref: str, path: Path) -> AdapterHandle:
    return AdapterHandle(ref=ref, int_id=next(_ids), path=path)


def request(**kw: object) -> GenerationRequest:
    args: dict[str, object] = {
        "request_id": f"t-{next(_ids)}",
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0.0,
    }
    args.update(kw)
    return GenerationRequest(**args)  # type: ignore[arg-type]


async def run(engine: VllmEngine, req: GenerationRequest) -> GenerationResult:
    return await collect(engine.generate(req))


async def assert_serves(engine: VllmEngine) -> None:
    res = await run(engine, request(max_tokens=4))
    assert res.completion_tokens > 0
    assert not engine.is_dead()


@pytest.mark.slow
async def test_is_an_inference_engine(engine: VllmEngine) -> None:
    assert isinstance(engine, InferenceEngine)
    assert engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert engine.stats()["dead"] is False


@pytest.mark.slow
async def test_greedy_base_generation(engine: VllmEngine) -> None:
    res = await run(engine, request())
    print(f"[vllm] base greedy: {res.text!r}")
    assert res.text.strip()
    assert res.prompt_tokens == len(engine.tokenizer(PROMPT)["input_ids"]) > 0
    assert 0 < res.completion_tokens <= 16
    assert res.choices[0].finish_reason in ("stop", "length")
    again = await run(engine, request())
    assert again.text == res.text


@pytest.mark.slow
async def test_ignore_eos_and_min_tokens(engine: VllmEngine) -> None:
    params = VllmEngine.sampling_params(request(ignore_eos=True, min_tokens=3))
    assert params.ignore_eos is True and params.min_tokens == 3
    chat = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Classify: my invoice is wrong"}],
        add_generation_prompt=True,
        tokenize=True,
    )
    ids = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
    # The base model ends this answer with EOS well before 64 tokens...
    natural = await run(engine, request(prompt=None, prompt_token_ids=ids, max_tokens=64))
    assert natural.choices[0].finish_reason == "stop" and natural.completion_tokens < 64
    # ...unless asked to ignore it (benchmarks: equal work per request) or to go on longer.
    full = await run(
        engine, request(prompt=None, prompt_token_ids=ids, max_tokens=64, ignore_eos=True)
    )
    assert full.completion_tokens == 64 and full.choices[0].finish_reason == "length"
    longer = natural.completion_tokens + 5
    at_least = await run(
        engine, request(prompt=None, prompt_token_ids=ids, max_tokens=64, min_tokens=longer)
    )
    assert at_least.completion_tokens >= longer
    with pytest.raises(InvalidGenerationRequest):
        request(max_tokens=4, min_tokens=5)


@pytest.mark.slow
async def test_base_and_two_adapters_in_one_batch(
    engine: VllmEngine, adapters: dict[str, Path]
) -> None:
    h1, h2 = handle("t/a1@1", adapters["a1"]), handle("t/a2@1", adapters["a2"])
    await engine.add_adapter(h1)
    await engine.add_adapter(h2)
    base, one, two = await asyncio.gather(
        run(engine, request()), run(engine, request(adapter=h1)), run(engine, request(adapter=h2))
    )
    print(f"[vllm] base={base.text!r}\n       a1={one.text!r}\n       a2={two.text!r}")
    texts = [base.text, one.text, two.text]
    assert all(r.completion_tokens > 0 for r in (base, one, two))
    assert len(set(texts)) == 3, texts
    # Greedy and adapter-specific: a lone rerun of adapter 1 gives the same text.
    assert (await run(engine, request(adapter=h1))).text == one.text
    await engine.remove_adapter(h2)
    assert h2.int_id not in await engine.llm.list_loras()


@pytest.mark.slow
async def test_streaming_deltas_concatenate_to_final_output(engine: VllmEngine) -> None:
    chunks: list[GenerationChunk] = [c async for c in engine.generate(request(max_tokens=24))]
    assert len(chunks) >= 3
    assert [c.first_token for c in chunks] == [True] + [False] * (len(chunks) - 1)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason in ("stop", "length")
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts)
    streamed = "".join(c.text_delta for c in chunks)
    # The same request through vLLM directly, non-streamed (final output only).
    params = SamplingParams(
        temperature=0.0, max_tokens=24, output_kind=RequestOutputKind.FINAL_ONLY
    )
    (engine_input,) = await engine.llm.renderer.render_cmpl_async([{"prompt": PROMPT}])
    finals = [o async for o in engine.llm.generate(engine_input, params, "raw-final")]
    assert len(finals) == 1
    assert streamed == finals[0].outputs[0].text
    assert chunks[-1].completion_tokens == len(finals[0].outputs[0].token_ids)


@pytest.mark.slow
async def test_structured_choice(engine: VllmEngine, adapters: dict[str, Path]) -> None:
    res = await run(engine, request(choices=CATEGORIES))
    print(f"[vllm] choice: {res.text!r}")
    assert res.text in CATEGORIES
    res = await run(
        engine,
        request(
            choices=CATEGORIES,
            temperature=1.0,
            seed=5,
            adapter=handle("t/a1-choice@1", adapters["a1"]),
        ),
    )
    assert res.text in CATEGORIES


@pytest.mark.slow
async def test_json_schema(engine: VllmEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"category": {"enum": CATEGORIES}},
        "required": ["category"],
        "additionalProperties": False,
    }
    res = await run(engine, request(json_schema=schema, max_tokens=40))
    print(f"[vllm] json: {res.text!r}")
    assert json.loads(res.text)["category"] in CATEGORIES


@pytest.mark.slow
async def test_n2_sampling_with_seed(engine: VllmEngine) -> None:
    res = await run(engine, request(n=2, temperature=1.0, seed=1234, max_tokens=12))
    print(f"[vllm] n=2: {[c.text for c in res.choices]!r}")
    assert [c.index for c in res.choices] == [0, 1]
    assert all(c.completion_tokens > 0 and c.finish_reason for c in res.choices)
    again = await run(engine, request(n=2, temperature=1.0, seed=1234, max_tokens=12))
    assert [c.text for c in again.choices] == [c.text for c in res.choices]


@pytest.mark.slow
async def test_closing_a_stream_aborts_the_request(engine: VllmEngine) -> None:
    stream = engine.generate(request(max_tokens=200))
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(50):
        if engine.stats()["unfinished_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.stats()["unfinished_requests"] == 0
    req = request(max_tokens=200)
    chunks: list[GenerationChunk] = []
    async for chunk in engine.generate(req):
        chunks.append(chunk)
        if len(chunks) == 1:
            await engine.abort(req.request_id)
    assert chunks[-1].finish_reason == "abort"
    await assert_serves(engine)


@pytest.mark.slow
async def test_rank_above_limit_is_refused(engine: VllmEngine, adapters: dict[str, Path]) -> None:
    h = handle("t/rank32@1", adapters["rank32"])
    with pytest.raises(AdapterLoadError) as err:
        await engine.add_adapter(h)
    assert err.value.reason == "rank_too_large"
    await assert_serves(engine)
    # vLLM itself, given the adapter directly, also raises (a plain Exception) and lives on.
    with pytest.raises(Exception, match="greater than max_lora_rank") as raw:
        await engine.llm.add_lora(LoRARequest("raw-rank32", h.int_id, str(h.path)))
    print(f"[vllm] raw add_lora(rank 32): {type(raw.value).__name__}: {raw.value}")
    assert h.int_id not in await engine.llm.list_loras()
    await assert_serves(engine)
    # Nor may a request use it.
    with pytest.raises(AdapterLoadError):
        await run(engine, request(adapter=h))
    await assert_serves(engine)


@pytest.mark.slow
async def test_missing_path_is_refused(engine: VllmEngine, tmp_path: Path) -> None:
    h = handle("t/missing@1", tmp_path / "does-not-exist")
    with pytest.raises(AdapterLoadError) as err:
        await engine.add_adapter(h)
    assert err.value.reason == "not_found"
    await assert_serves(engine)
    with pytest.raises(Exception, match="No adapter found") as raw:
        await engine.llm.add_lora(LoRARequest("raw-missing", h.int_id, str(h.path)))
    print(f"[vllm] raw add_lora(missing): {type(raw.value).__name__}: {raw.value}")
    await assert_serves(engine)
    with pytest.raises(AdapterLoadError):
        await run(engine, request(adapter=h))
    await assert_serves(engine)


@pytest.mark.slow
async def test_corrupt_weights_are_refused_by_vllm(
    engine: VllmEngine, adapters: dict[str, Path]
) -> None:
    h = handle("t/corrupt@1", adapters["corrupt"])
    with pytest.raises(AdapterLoadError) as err:
        await engine.add_adapter(h)
    print(f"[vllm] corrupt: {err.value.reason}: {err.value}")
    assert err.value.reason == "corrupt"
    assert h.int_id not in await engine.llm.list_loras()
    await assert_serves(engine)


@pytest.mark.slow
async def test_stats(engine: VllmEngine) -> None:
    stats = engine.stats()
    assert {"running", "waiting", "kv_cache_usage", "unfinished_requests"} <= stats.keys()
    assert stats["device"] == "cpu" and stats["start_seconds"] > 0
