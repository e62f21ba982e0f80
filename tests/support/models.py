"""Uploaded base models in tests: a model directory packed as the registry's archive."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx

from shared.models.artifact import pack_model_dir

_PACKED: dict[Path, Path] = {}


def model_archive(model_dir: Path) -> Path:
    """``model_dir`` as a model archive in a scratch directory (packed once per test process
    and directory: tiny-llama's 22 MB take a few seconds to gzip on this box)."""
    cached = _PACKED.get(model_dir)
    if cached is None or not cached.exists():
        out = Path(tempfile.mkdtemp(prefix="tf-model-archive-")) / f"{model_dir.name}.tar.gz"
        cached = _PACKED[model_dir] = pack_model_dir(model_dir, out)
    return cached


async def upload_model(
    http: httpx.AsyncClient,
    model_id: str,
    archive: Path,
    *,
    headers: dict[str, str] | None = None,
    **meta: object,
) -> httpx.Response:
    """``POST /v1/base-models`` on a registry (internal token on ``http``)."""
    with archive.open("rb") as fh:
        return await http.post(
            "/v1/base-models",
            headers=headers,
            files={"file": (archive.name, fh, "application/gzip")},
            data={"metadata": json.dumps({"id": model_id, **meta})},
        )
