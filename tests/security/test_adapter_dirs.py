"""Adapters of different tenants never share a directory (issue 18, low item "adapter
directory names that collide across tenants").

The replica unpacks each (ref, sha256) into its own directory. The name used to be the ref
with ``/`` and ``@`` turned into ``__``, which tenant and adapter names may contain too:
``acme/x__y@v1`` and ``acme__x/y@v1`` (two tenants) got one directory when their bytes were
equal (anyone can push a copy of a public adapter), so evicting one tenant's adapter deleted
the files the other's was loaded from, and concurrent loads shared one staging directory.

The real adapter cache loads real archives (made from tiny-llama) into ``DigestEngine``, which
reads the weights from the directory it is handed, as vLLM does.

Training outputs are keyed on job ids (random, per job: ``<data>/models/<job>``, runner dirs
``tf-<job>-*``), and a merged model's catalog id carries 10 random hex digits of its job; the
catalog refuses (409) an id that exists, so those do not collide silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

from services.inference.app import base_spec
from services.inference.engine.adapters import AdapterCache
from services.inference.settings import InferenceSettings
from shared.schemas.registry import Resolution
from tests.support.adapters import make_adapter, pack
from tests.support.digest_engine import DigestEngine, weights_digest


async def test_equal_bytes_under_look_alike_refs_of_two_tenants_get_their_own_dirs(
    tmp_path: Path, model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    archive = pack(make_adapter(model_dir, tmp_path / "ad"), tmp_path / "a.tar.gz")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()

    async def fetch(res: Resolution, dest: Path) -> Path:
        await asyncio.sleep(0.05)  # a download: lets the two loads overlap
        shutil.copyfile(archive, dest)
        return dest

    settings = InferenceSettings(home=tmp_path / "replica", model_dir=model_dir)
    engine = DigestEngine(AutoTokenizer.from_pretrained(str(model_dir)))
    cache = AdapterCache(
        engine,  # type: ignore[arg-type]
        fetch,
        root=tmp_path / "adapters",
        base=base_spec(settings),
        max_rank=16,
        capacity=8,
    )

    def res(tenant: str, name: str) -> Resolution:
        return Resolution(
            model=f"{name}@v1",
            kind="adapter",
            base_model=settings.base_model,
            ref=f"{tenant}/{name}@v1",
            tenant=tenant,
            adapter=name,
            version=1,
            sha256=sha,
        )

    a, b = res("acme", "x__y"), res("acme__x", "y")
    loaded_a, loaded_b = await asyncio.gather(cache.ensure(a), cache.ensure(b))
    assert loaded_a.handle.path != loaded_b.handle.path
    await cache.unload(a.ref)  # acme's adapter evicted: its files go
    assert not loaded_a.handle.path.exists()
    # the other tenant's copy is untouched and still what its engine entry was loaded from
    assert weights_digest(loaded_b.handle.path) == engine._digests[loaded_b.handle.int_id]
    await cache.close()
