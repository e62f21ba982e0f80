"""Bring an uploaded base model from the registry into a directory of one's own.

One place for every service that runs a merged model (an inference replica serving a tenant
base, the training service training on one): stream the archive with the internal token,
check its sha256 against the catalog's, unpack it with the same checks the registry applied
(``shared.models.artifact``), then rename it into ``<root>/<model id>-<sha256>`` (the id in
the name lets an erasure find every copy of a model by id once the registry has forgotten
it). The rename is the
commit: a directory under its final name is complete and verified, so a second start reuses
it and a crash mid-way leaves only a ``.fetch-*`` scratch directory behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import anyio

from shared.adapters.extract import ArchiveLimits
from shared.clients.registry import RegistryClient
from shared.errors import NotFound
from shared.models.artifact import unpack_model_archive

# The registry enforced its own (configured) limits at upload; these bound what a replica
# accepts from the wire whatever the registry says.
DOWNLOAD_LIMITS = ArchiveLimits(
    max_archive_bytes=256 * 2**30, max_members=256, max_uncompressed_bytes=512 * 2**30
)


async def fetch_base_model(
    registry: RegistryClient,
    tenant: str,
    model_id: str,
    root: Path,
    *,
    limits: ArchiveLimits = DOWNLOAD_LIMITS,
) -> Path:
    """The unpacked, verified directory of ``model_id`` (``tenant``'s catalog) under ``root``."""
    info = await registry.get_base_model(tenant, model_id)
    if info.artifact_sha256 is None:
        raise NotFound(
            f"base model {model_id!r} has no archive in the registry (a seeded model "
            "directory: serve it from the replica's own models directory)",
            param="base_model",
            code="base_model_has_no_archive",
        )
    dest = root / f"{model_id}-{info.artifact_sha256}"
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        archive = await registry.download_base_model(
            tenant, model_id, work / "model.tar.gz", sha256=info.artifact_sha256
        )
        await anyio.to_thread.run_sync(unpack_model_archive, archive, work / "model", limits)
        try:
            (work / "model").rename(dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent fetch that won the rename
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
