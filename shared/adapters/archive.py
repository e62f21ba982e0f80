"""Validation of PEFT LoRA adapter archives (``.tar.gz``) against a base model.

Used by the registry before anything is stored and by inference replicas before an adapter is
handed to vLLM (a bad adapter kills the engine), so everything here is strict: the archive is
extracted member by member (never ``extractall``), only regular, known files are written, sizes
are bounded on the declared and on the actual decompressed bytes, and the adapter's config and
safetensors header are checked against the base model's module shapes.

Extraction lives in ``shared.adapters.extract`` and the config/weights checks in
``shared.adapters.checks``; this module ties them together and keeps the public API.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.adapters.checks import (
    check_base_model_name,
    check_lora_tensors,
    config_alpha,
    config_ranks,
    load_adapter_config,
    resolve_target_modules,
)
from shared.adapters.extract import (
    ALLOWED_FILES,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ArchiveLimits,
    safe_extract,
)
from shared.adapters.safetensors_header import linear_shapes_from_model_dir, read_safetensors_header
from shared.errors import InvalidRequest, Unprocessable

__all__ = [
    "ALLOWED_FILES",
    "AdapterInfo",
    "ArchiveLimits",
    "BaseModelSpec",
    "inspect_adapter_dir",
    "linear_shapes_from_model_dir",
    "pack_adapter_dir",
    "read_safetensors_header",
    "safe_extract",
    "validate_archive",
]


@dataclass(frozen=True)
class BaseModelSpec:
    """What the validator must know about a base model."""

    id: str  # catalog id, e.g. "tiny-llama"
    names: tuple[str, ...]  # other accepted base_model_name_or_path values (path, hub id, ...)
    linear_shapes: Mapping[str, tuple[int, int]]  # module path -> (out, in), embed/lm_head too


@dataclass(frozen=True)
class AdapterInfo:
    """What validation learned about an adapter. ``rank`` is the largest configured rank."""

    peft_type: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name: str | None
    files: tuple[str, ...]
    weights_bytes: int
    config: dict[str, Any]


def pack_adapter_dir(adapter_dir: Path, out: Path) -> Path:
    """Write a deterministic ``.tar.gz`` of ``adapter_dir``'s files at the archive root.

    Sorted names, mtime 0, uid/gid 0, no owner names, mode 0644, gzip mtime 0 and no gzip file
    name: the same files give the same bytes. Anything that is not a regular file (subdirectory,
    symlink) raises ``ValueError``. Returns ``out``.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    entries = sorted(adapter_dir.iterdir(), key=lambda p: p.name)
    for p in entries:
        if p.is_symlink() or not p.is_file():
            raise ValueError(f"{p} is not a regular file; cannot pack it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        for p in entries:
            info = tarfile.TarInfo(p.name)
            info.size, info.mtime, info.mode = p.stat().st_size, 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with p.open("rb") as fh:
                tf.addfile(info, fh)
    return out


def validate_archive(
    archive: Path,
    workdir: Path,
    base: BaseModelSpec,
    *,
    max_rank: int,
    limits: ArchiveLimits = ArchiveLimits(),
) -> tuple[Path, AdapterInfo]:
    """Extract ``archive`` into a fresh subdirectory of ``workdir`` and inspect it.

    Returns ``(adapter_dir, info)``; on failure the subdirectory is removed and the error raised.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    adapter_dir = Path(tempfile.mkdtemp(prefix="adapter-", dir=workdir))
    try:
        safe_extract(archive, adapter_dir, limits)
        return adapter_dir, inspect_adapter_dir(adapter_dir, base, max_rank=max_rank)
    except BaseException:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- adapter checks


def _invalid(message: str, param: str = CONFIG_FILE) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_adapter")


def inspect_adapter_dir(adapter_dir: Path, base: BaseModelSpec, *, max_rank: int) -> AdapterInfo:
    """Check an extracted PEFT LoRA adapter directory against ``base``; describe it.

    Raises ``InvalidRequest`` (400) for malformed adapters and ``Unprocessable`` (422) for
    well-formed ones this deployment cannot serve (type, rank, modules_to_save, base mismatch).
    """
    adapter_dir = Path(adapter_dir)
    for fname in (CONFIG_FILE, WEIGHTS_FILE):
        path = adapter_dir / fname
        if path.is_symlink() or not path.is_file():
            raise _invalid(
                f"adapter is missing {fname} (a LoRA adapter needs {CONFIG_FILE} and "
                f"{WEIGHTS_FILE})",
                param=fname,
            )
    config = load_adapter_config(adapter_dir / CONFIG_FILE)
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str):
        raise _invalid(f"{CONFIG_FILE} has no peft_type string", param="peft_type")
    if peft_type != "LORA":
        raise Unprocessable(
            f"adapter type {peft_type!r} is not supported; only LoRA adapters "
            '(peft_type "LORA") can be served',
            param="peft_type",
            code="unsupported_adapter_type",
        )
    if config.get("use_dora"):
        raise Unprocessable(
            "DoRA adapters (use_dora=true) are not supported: vLLM cannot serve them",
            param="use_dora",
            code="unsupported_adapter_type",
        )
    if config.get("bias", "none") not in (None, "none"):
        raise Unprocessable(
            f'LoRA bias {config["bias"]!r} is not supported; train with bias="none"',
            param="bias",
            code="unsupported_adapter_type",
        )
    ranks = config_ranks(config)
    if max(ranks) > max_rank:
        raise Unprocessable(
            f"adapter rank {max(ranks)} exceeds the maximum LoRA rank {max_rank} "
            "of this deployment",
            param="r",
            code="adapter_rank_too_large",
        )
    alpha = config_alpha(config)
    to_save = config.get("modules_to_save")
    if to_save is not None and not isinstance(to_save, list):
        raise _invalid("modules_to_save must be null or a list", param="modules_to_save")
    if to_save:
        raise Unprocessable(
            f"adapter sets modules_to_save={to_save!r}: vLLM cannot serve such "
            "adapters for causal LMs; merge it and register it as a full model "
            "instead",
            param="modules_to_save",
            code="modules_to_save_unsupported",
        )
    base_name = check_base_model_name(config.get("base_model_name_or_path"), base.id, base.names)
    targeted = resolve_target_modules(config.get("target_modules"), base.linear_shapes, base.id)
    weights = adapter_dir / WEIGHTS_FILE
    check_lora_tensors(
        read_safetensors_header(weights),
        base.linear_shapes,
        base_id=base.id,
        targeted=targeted,
        ranks=ranks,
        max_rank=max_rank,
    )
    return AdapterInfo(
        peft_type=peft_type,
        rank=max(ranks),
        alpha=alpha,
        target_modules=tuple(sorted({p.rsplit(".", 1)[-1] for p in targeted})),
        base_model_name=base_name,
        files=tuple(
            sorted(p.name for p in adapter_dir.iterdir() if p.is_file() and not p.is_symlink())
        ),
        weights_bytes=weights.stat().st_size,
        config=config,
    )
