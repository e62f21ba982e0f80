"""Fine-tune and call the result the way customers do: the official ``openai`` SDK against the
gateway running as a real process (``tunefleet up``: registry, vLLM inference, training on
an embedded Ray head, gateway), with data worded unlike the held-out cases it is scored on.

* chat JSONL (system + user + assistant label) → job → ``chat.completions`` with
  ``choices_allowed`` written as users write labels: tuned ≥ 0.9, base ≤ 0.5;
* prompt/completion JSONL → job → ``completions`` on the same held-out cases;
* EN→DE translation through chat: chrF ≥ base + 20;
* video game review sentiment, in wording the base's pretraining corpus never contains
  (issue 15, item 8): tuned ≥ 0.9, base near chance.

Every job runs with the default recipe (no hyperparameters given). The held-out cases are
drawn like a customer's next tickets: other draws from the task's generator
(:mod:`shared.datasets.quality`), none of them worded like any training row (not even after
removing digits, punctuation and case: the preparation's near-duplicate form). How the tiny
base fares on cases that paraphrase the training templates (other sentence frames, other
entities) is measured by ``benchmarks/quality.py`` (BENCHMARKS.md), not asserted here.
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
import sacrebleu

from shared.datasets import quality as Q
from tests.support.heldout import fresh_cases
from tests.support.postgres import free_port

pytestmark = [pytest.mark.slow]
ADMIN = "tf-e2e-sdk-admin"
N_TRAIN, N_HELDOUT = 400, 40


@dataclass
class Front:
    url: str
    integrator: openai.OpenAI
    app: openai.OpenAI


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Front]:
    home = tmp_path_factory.mktemp("sdk-fleet")
    port = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_HOME": str(home),
        "TUNEFLEET_ADMIN_KEY": ADMIN,
        "TUNEFLEET_REGISTRY_PORT": str(free_port()),
        "TUNEFLEET_INFERENCE_PORT": str(free_port()),
        "TUNEFLEET_TRAINING_PORT": str(free_port()),
        "TUNEFLEET_GATEWAY_PORT": str(port),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
        "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "64",
    }
    env.pop("DATABASE_URL", None)
    up = _cli("up", "--detach", env=env)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        url = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{url}/admin/tenants", json={"id": "acme"}, headers=admin, timeout=30)
        assert r.status_code == 201, r.text
        keys = {}
        for role in ("integrator", "app"):
            r = httpx.post(
                f"{url}/admin/keys", json={"tenant": "acme", "role": role}, headers=admin
            )
            assert r.status_code == 201, r.text
            keys[role] = r.json()["key"]

        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)

        yield Front(url, client(keys["integrator"]), client(keys["app"]))
    finally:
        down = _cli("down", env=env)
        assert down.returncode == 0, down.stderr[-2000:]


def _fine_tune(front: Front, rows: list[dict[str, Any]], task: str, suffix: str) -> Any:
    """Upload rows and fine-tune with the default recipe; the succeeded job."""
    sdk = front.integrator
    uploaded = sdk.files.create(
        file=(f"{suffix}.jsonl", io.BytesIO(Q.to_jsonl(rows))), purpose="fine-tune"
    )
    job = sdk.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, suffix=suffix, extra_body={"task": task}
    )
    t0 = time.monotonic()
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - t0 < 900, f"job {job.id} still {job.status}"
        time.sleep(2)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    print(f"\n{suffix}: job {time.monotonic() - t0:.0f}s, result {json.dumps(job.result)[:600]}")
    return job


def _heldout(task: str, n: int = N_HELDOUT) -> list[Q.Case]:
    return fresh_cases(task, n, n_train=N_TRAIN)


def _chat_label(front: Front, model: str, task: str, text: str) -> str:
    out = front.app.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": Q.system_prompt(task)},
            {"role": "user", "content": text},
        ],
        temperature=0,
        extra_body={"choices_allowed": list(Q.labels(task))},
    )
    return out.choices[0].message.content or ""


def _accuracy(answers: list[str], cases: list[Q.Case]) -> float:
    return sum(a == c.answer for a, c in zip(answers, cases, strict=True)) / len(cases)


def test_chat_fine_tune_answers_through_chat_completions(front: Front) -> None:
    task = "router"
    job = _fine_tune(front, Q.chat_rows(task, "train", N_TRAIN), "classification", "router")
    held = _heldout(task)
    base = _accuracy([_chat_label(front, "tiny-llama", task, c.text) for c in held], held)
    tuned_answers = [_chat_label(front, job.fine_tuned_model, task, c.text) for c in held]
    tuned = _accuracy(tuned_answers, held)
    print(f"router chat: base {base:.2f} tuned {tuned:.2f} on {len(held)} held-out cases")
    assert set(tuned_answers) <= set(Q.labels(task))  # labels come back as written
    assert base <= 0.5
    assert tuned >= 0.9
    # the job's own test-split number is computed the way it is served
    assert job.result["tuned"]["accuracy"] >= 0.9
    # response_format with a JSON-schema enum yields the label the adapter learnt
    schema = {
        "type": "object",
        "properties": {"queue": {"type": "string", "enum": list(Q.labels(task))}},
        "required": ["queue"],
    }
    out = front.app.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[
            {"role": "system", "content": Q.system_prompt(task)},
            {"role": "user", "content": held[0].text},
        ],
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "q", "schema": schema}},
    )
    assert json.loads(out.choices[0].message.content or "")["queue"] in Q.labels(task)
    # fine_tuned_model is the id OpenAI's API promises: listed, and retrievable
    assert job.fine_tuned_model in {m.id for m in front.app.models.list()}
    assert front.app.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model


def test_prompt_completion_fine_tune_answers_through_completions(front: Front) -> None:
    task = "router"
    job = _fine_tune(front, Q.prompt_rows(task, "train", N_TRAIN), "classification", "router-pc")
    held = _heldout(task)

    def label(model: str, text: str) -> str:
        out = front.app.completions.create(
            model=model,
            prompt=Q.completion_prompt(task, text),
            temperature=0,
            max_tokens=8,
            extra_body={"choices_allowed": list(Q.labels(task))},
        )
        return out.choices[0].text

    base = _accuracy([label("tiny-llama", c.text) for c in held], held)
    tuned = _accuracy([label(job.fine_tuned_model, c.text) for c in held], held)
    print(f"router completions: base {base:.2f} tuned {tuned:.2f} on {len(held)} cases")
    assert base <= 0.5
    assert tuned >= 0.9


def test_translation_through_chat(front: Front) -> None:
    task = "translation"
    job = _fine_tune(front, Q.chat_rows(task, "train", N_TRAIN), "translation", "en-de")
    held = _heldout(task)

    def translate(model: str, text: str) -> str:
        out = front.app.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": Q.system_prompt(task)},
                {"role": "user", "content": text},
            ],
            temperature=0,
            max_completion_tokens=48,
        )
        return (out.choices[0].message.content or "").strip()

    refs = [[c.answer for c in held]]
    base = sacrebleu.corpus_chrf([translate("tiny-llama", c.text) for c in held], refs).score
    tuned = sacrebleu.corpus_chrf([translate(job.fine_tuned_model, c.text) for c in held], refs)
    print(f"translation chat: chrF base {base:.1f} tuned {tuned.score:.1f}")
    assert tuned.score >= base + 20


def test_default_recipe_learns_wording_the_base_never_read(front: Front) -> None:
    """Reviews of video games: neither the titles, the game parts nor the sentiment words
    occur in the corpus tiny-llama was pretrained on (``Q.FOREIGN_TASKS``). The default
    recipe (LoRA on the linears, embed_tokens and lm_head; ~40 steps per epoch) ties them to
    the labels; with the linears alone it stayed near chance (BENCHMARKS.md)."""
    task = "games"
    assert task in Q.FOREIGN_TASKS
    job = _fine_tune(front, Q.chat_rows(task, "train", N_TRAIN), "sentiment", "games")
    held = _heldout(task, 39)  # 13 per label
    base = _accuracy([_chat_label(front, "tiny-llama", task, c.text) for c in held], held)
    tuned = _accuracy([_chat_label(front, job.fine_tuned_model, task, c.text) for c in held], held)
    print(f"games chat: base {base:.2f} tuned {tuned:.2f} on {len(held)} held-out cases")
    assert base <= 0.5
    assert tuned >= 0.9
    assert job.result["tuned"]["accuracy"] >= 0.9  # the job's own test split agrees


def test_files_and_jobs_stay_inside_the_tenant(front: Front) -> None:
    """What the jobs above left behind: the tenant's own, invisible (404) to another tenant,
    out of reach of an app key, and audited."""
    sdk = front.integrator
    jobs = list(sdk.fine_tuning.jobs.list())
    assert len(jobs) == 4
    sdk.files.create(
        file=("more.jsonl", io.BytesIO(Q.to_jsonl(_rows_for_audit()))), purpose="fine-tune"
    )
    files = list(sdk.files.list())
    assert len(files) == 5
    job = jobs[0]
    assert [e.object for e in sdk.fine_tuning.jobs.list_events(job.id)][:1] == [
        "fine_tuning.job.event"
    ]
    assert all(c.fine_tuned_model_checkpoint for c in sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert sdk.fine_tuning.jobs.cancel(job.id).id == job.id  # idempotent on a finished job
    admin = {"Authorization": f"Bearer {ADMIN}"}
    httpx.post(f"{front.url}/admin/tenants", json={"id": "globex"}, headers=admin)
    r = httpx.post(
        f"{front.url}/admin/keys", json={"tenant": "globex", "role": "integrator"}, headers=admin
    )
    other = openai.OpenAI(base_url=f"{front.url}/v1", api_key=r.json()["key"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(files[0].id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(files[0].id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(str(job.fine_tuned_model))
    assert list(other.files.list()) == []
    with pytest.raises(openai.PermissionDeniedError):
        front.app.files.list()
    with pytest.raises(openai.PermissionDeniedError):
        front.app.fine_tuning.jobs.create(model="tiny-llama", training_file=files[0].id)
    # the newest 100 entries (the jobs' polling is audited too: reads of job data)
    url = f"{front.url}/admin/audit?tenant=acme&limit=100"
    actions = {e["action"] for e in httpx.get(url, headers=admin).json()["data"]}
    assert {"post /v1/files", "post /v1/fine_tuning/jobs/{job_id}/cancel"} <= actions


def _rows_for_audit() -> list[dict[str, Any]]:
    return Q.chat_rows("router", "train", 20, seed=3)
