"""Errors about an adapter that cannot be loaded name no server path (issue 18, low item
"load-error messages that leak server paths").

A client pushing or asking for a bad adapter used to read where the fleet keeps its files:
the base-model check listed the model's directory among the accepted names (registry push
and replica load alike), the vLLM engine's refusals named the directory the replica unpacked
the adapter to ("no PEFT adapter directory at /…", "files gone from /…") and passed vLLM's own
exception text on. Now the messages say what is wrong without the path; the replica logs the
full text (``AdapterLoadError.detail``).

Real registry app (push), the real adapter cache with real archives (load), the vLLM engine's
own checks (``VllmEngine`` not started: its checks run before vLLM is asked).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from services.inference.app import base_spec
from services.inference.engine.adapters import AdapterCache
from services.inference.engine.base import (
    AdapterHandle,
    AdapterLoadError,
    EngineConfig,
    EngineError,
)
from services.inference.settings import InferenceSettings
from shared.schemas.registry import Resolution
from tests.security.test_durable_writes import AUTH, _registry
from tests.support.adapters import make_adapter, pack, set_config
from tests.support.digest_engine import DigestEngine


def assert_no_path(message: str, *paths: Path) -> None:
    for p in paths:
        for shown in {str(p), str(p.resolve())}:
            assert shown not in message, message
    assert "/tmp/" not in message and "/work/" not in message, message


@pytest.fixture
def foreign_archive(tmp_path: Path, model_dir: Path) -> Path:
    """A LoRA made on tiny-llama that says it was trained on a model in a server directory."""
    ad = make_adapter(model_dir, tmp_path / "ad")
    set_config(ad, base_model_name_or_path="/srv/trainer/models/other-llama")
    return pack(ad, tmp_path / "foreign.tar.gz")


async def test_registry_push_refusal_names_no_model_directory(
    tmp_path: Path, model_dir: Path, foreign_archive: Path
) -> None:
    app = _registry(tmp_path / "reg", model_dir)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry", headers=AUTH
        ) as http,
    ):
        with foreign_archive.open("rb") as fh:
            r = await http.post(
                "/v1/adapters/a/versions",
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model":"tiny-llama"}'},
            )
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "other-llama" in message and "tiny-llama" in message  # still says what is wrong
    assert_no_path(message, model_dir, tmp_path, Path("/srv/trainer/models"))


async def test_replica_load_refusal_names_no_model_or_cache_directory(
    tmp_path: Path, model_dir: Path, foreign_archive: Path
) -> None:
    from transformers import AutoTokenizer

    async def fetch(res: Resolution, dest: Path) -> Path:
        shutil.copyfile(foreign_archive, dest)
        return dest

    settings = InferenceSettings(home=tmp_path / "replica", model_dir=model_dir)
    cache = AdapterCache(
        DigestEngine(AutoTokenizer.from_pretrained(str(model_dir))),  # type: ignore[arg-type]
        fetch,
        root=tmp_path / "adapters",
        base=base_spec(settings),
        max_rank=16,
        capacity=4,
    )
    res = Resolution(
        model="a@v1",
        kind="adapter",
        base_model=settings.base_model,
        ref="acme/a@v1",
        sha256=hashlib.sha256(foreign_archive.read_bytes()).hexdigest(),
    )
    with pytest.raises(AdapterLoadError) as caught:
        await cache.ensure(res)
    assert caught.value.reason == "base_model_mismatch"
    assert_no_path(caught.value.message, model_dir, tmp_path / "adapters")
    await cache.close()


def test_vllm_engine_refusals_name_no_adapter_directory(tmp_path: Path, model_dir: Path) -> None:
    from services.inference.engine.vllm_engine import VllmEngine

    engine = VllmEngine(EngineConfig(model_path=model_dir, model_id="tiny-llama", device="cpu"))
    unpacked = tmp_path / "adapters" / "acme+a+v1-0123"
    cases = {"missing": unpacked}
    no_weights = tmp_path / "adapters" / "acme+b+v1-4567"
    no_weights.mkdir(parents=True)
    (no_weights / "adapter_config.json").write_text('{"r": 8}')
    cases["no weights"] = no_weights
    for why, path in cases.items():
        with pytest.raises(AdapterLoadError) as caught:
            engine._check_adapter(AdapterHandle(ref="acme/a@v1", int_id=1, path=path))
        assert "acme/a@v1" in caught.value.message, why
        assert_no_path(caught.value.message, path, tmp_path)
        assert str(path) in caught.value.detail  # the replica's log keeps it


def test_engine_errors_hide_paths_from_vllm_exception_texts() -> None:
    vllm_text = (
        "Loading lora acme/a@v1 failed: No adapter found for "
        "/var/lib/tunefleet/inference/adapters/acme+a+v1-ab12/adapter_model.safetensors"
    )
    load = AdapterLoadError(f"adapter acme/a@v1: vLLM refused it: {vllm_text}", ref="acme/a@v1")
    gen = EngineError(f"generation failed: {vllm_text}")
    for err in (load, gen):
        assert "/var/lib" not in err.message and "<path>" in err.message
        assert "acme/a@v1" in err.message  # refs are not paths
    assert "http://registry:8001/v1" in EngineError("at http://registry:8001/v1").message
