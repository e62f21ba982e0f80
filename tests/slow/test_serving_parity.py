"""The job's evaluator answers what the serving path answers, case for case.

A LoRA adapter fine-tuned on chat rows (and one on prompt/completion rows) is pushed to the
registry and asked through the gateway (vLLM, constrained decoding with ``choices_allowed``
as users write labels); the evaluator the job uses (:func:`services.training.ray.evaluate.
classify`) scores the same cases in PyTorch. Same rendering, same labels, same greedy
constrained decoding: the answers agree, so a job's reported metrics are what callers get.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.training.ray.evaluate import classify, load_model, load_tokenizer
from shared.adapters.archive import pack_adapter_dir
from shared.datasets import quality as Q
from tests.slow.test_gateway import auth, onboard
from tests.support.adapters import train_adapter
from tests.support.fleet import Fleet, fleet

pytestmark = [pytest.mark.slow]
TASK = "router"
N_CASES = 40


@pytest.fixture
async def f(tmp_path: Path, model_dir: Path, vllm_engine: object) -> AsyncIterator[Fleet]:
    async with fleet(tmp_path, model_dir, vllm_engine) as fl:
        yield fl


def _cases() -> list[Q.Case]:
    # both families: cases like the training rows and paraphrases, so answers vary
    return Q.cases(TASK, "train", N_CASES // 2, seed=99) + Q.cases(TASK, "heldout", N_CASES // 2)


async def _served(f: Fleet, key: str, model: str, chat: bool) -> list[str]:
    answers = []
    labels = list(Q.labels(TASK))
    for case in _cases():
        if chat:
            body: dict[str, Any] = {
                "messages": [
                    {"role": "system", "content": Q.system_prompt(TASK)},
                    {"role": "user", "content": case.text},
                ]
            }
            path = "/v1/chat/completions"
        else:
            body = {"prompt": Q.completion_prompt(TASK, case.text), "max_tokens": 8}
            path = "/v1/completions"
        r = await f.gateway.post(
            path,
            json={"model": model, "temperature": 0, "choices_allowed": labels, **body},
            headers=auth(key),
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        answers.append(choice["message"]["content"] if chat else choice["text"])
    return answers


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
async def test_evaluator_answers_like_the_serving_path(
    f: Fleet, model_dir: Path, tmp_path: Path, chat: bool
) -> None:
    make = Q.chat_rows if chat else Q.prompt_rows
    adapter = train_adapter(model_dir, make(TASK, "train", 160), tmp_path / "adapter", steps=60)
    keys = await onboard(f, "acme")
    archive = pack_adapter_dir(adapter, tmp_path / "adapter.tar.gz")
    with archive.open("rb") as fh:
        r = await f.gateway.post(
            "/v1/adapters/router/versions",
            headers=auth(keys["integrator"]),
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    served = await _served(f, keys["app"], "router@v1", chat)
    assert set(served) <= set(Q.labels(TASK))  # labels come back as written, no spaces

    rows = [(Q.chat_row if chat else Q.prompt_row)(TASK, c) for c in _cases()]
    model = load_model(adapter, base_model_path=model_dir, merge=True)
    evaluated = classify(model, load_tokenizer(model_dir), rows, list(Q.labels(TASK)))
    agree = sum(a == b for a, b in zip(served, evaluated, strict=True)) / len(rows)
    print(f"\n{'chat' if chat else 'completion'}: evaluator = served on {agree:.0%} of cases")
    assert len(set(served)) > 1  # the adapter discriminates: agreement is not trivial
    assert agree >= 0.95, list(zip(served, evaluated, strict=True))
