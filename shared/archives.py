"""Validation of PEFT LoRA adapter archives (``.tar.gz``) against a base model.

Used by the registry before anything is stored and by inference replicas before an adapter is
handed to vLLM (a bad adapter kills the engine), so everything here is strict: the archive is
extracted member by member (never ``extractall``), only regular, known files are written, sizes
are bounded on the declared and on the actual decompressed bytes, and the adapter's config and
safetensors header are checked against the base model's module shapes.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidRequest, PayloadTooLarge, Unprocessable
from shared.safetensors_header import (
    check_base_model_name,
    check_lora_tensors,
    config_alpha,
    config_ranks,
    linear_shapes_from_model_dir,
    load_adapter_config,
    read_safetensors_header,
    resolve_target_modules,
)

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

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "README.md"})
_CHUNK = 1 * 2**20  # largest single read: member data is read in chunks of this size
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on an uploaded archive (compressed size, entries, decompressed size, names)."""

    max_archive_bytes: int = 256 * 2**20
    max_members: int = 64
    max_uncompressed_bytes: int = 1 * 2**30
    max_name_length: int = 255


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


# --------------------------------------------------------------------------- extraction


def _bad_archive(reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"archive is not a valid .tar.gz: {reason}", param="archive", code="invalid_archive"
    )


def _too_large(reason: str) -> PayloadTooLarge:
    return PayloadTooLarge(reason, param="archive", code="archive_too_large")


class _BoundedGzip:
    """Seekable view of the decompressed stream that counts (and caps) every byte produced.

    Refusing single reads above ``_CHUNK`` bounds tarfile's in-memory pax/longname headers;
    forward seeks are done by reading, so skipped data is counted too.
    """

    def __init__(self, gz: gzip.GzipFile, cap: int) -> None:
        self._gz, self._cap, self._pos = gz, cap, 0
        self.last_block: tuple[int, bytes] = (-1, b"")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > _CHUNK:
            raise _too_large(f"archive holds a header block larger than {_CHUNK} bytes")
        start = self._pos
        if start + n > self._cap:
            n = self._cap - start + 1
        try:
            data = self._gz.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad_archive(f"corrupt or truncated gzip stream ({exc})") from None
        self._pos += len(data)
        if self._pos > self._cap:
            raise _too_large(f"archive decompresses to more than {self._cap} bytes")
        if n == _BLOCK:
            self.last_block = (start, data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < 0:
            raise _bad_archive("unsupported seek while reading the archive")
        while self._pos < target:
            if not self.read(min(_CHUNK, target - self._pos)):
                break
        if target < self._pos:  # rare: GzipFile rewinds and re-decompresses known bytes
            try:
                self._pos = self._gz.seek(target)
            except (OSError, EOFError, zlib.error) as exc:
                raise _bad_archive(f"corrupt gzip stream ({exc})") from None
        return self._pos


def _member_kind(m: tarfile.TarInfo) -> str:
    kinds = [
        (m.issym, "symlink"),
        (m.islnk, "hardlink"),
        (m.ischr, "character device"),
        (m.isblk, "block device"),
        (m.isfifo, "fifo"),
        (m.issparse, "sparse file"),
    ]
    return next((kind for test, kind in kinds if test()), f"entry of tar type {m.type!r}")


def _member_parts(name: str, limits: ArchiveLimits) -> list[str]:
    """Path components of a member name, or raise ``unsafe_archive_path``."""
    shown = repr(name[:120] + ("..." if len(name) > 120 else ""))

    def unsafe(reason: str) -> InvalidRequest:
        return InvalidRequest(
            f"archive member {shown} {reason}", param="archive", code="unsafe_archive_path"
        )

    if "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise unsafe("contains a NUL or control character")
    if len(name) > limits.max_name_length:
        raise unsafe(f"has a name longer than {limits.max_name_length} characters")
    if "\\" in name:
        raise unsafe("contains a backslash")
    if name.startswith("/"):
        raise unsafe("has an absolute path")
    if re.match(r"[A-Za-z]:", name):
        raise unsafe("starts with a drive letter")
    raw = name.split("/")
    if ".." in raw:
        raise unsafe("contains a '..' component")
    parts = [p for p in raw if p not in ("", ".")]
    if len(parts) > 2:
        raise unsafe(
            "is in a nested directory; adapter files must sit at the archive root "
            "or inside one top-level directory"
        )
    return parts


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[str]:
    """Extract an adapter ``.tar.gz`` into ``dest`` (created if missing, must be empty).

    Only ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md`` are accepted,
    at the archive root or inside a single top-level directory (which is stripped). Returns the
    sorted names written. On any failure every file written is removed before the error is
    raised (``InvalidRequest``/``PayloadTooLarge``, see the module's codes).
    """
    archive, dest = Path(archive), Path(dest)
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise _too_large(f"archive is {size} bytes; the limit is {limits.max_archive_bytes}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction target {dest} is not empty")
    written: list[Path] = []
    try:
        with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            cap = limits.max_uncompressed_bytes + 3 * _BLOCK * (limits.max_members + 1) + 2**20
            _extract_members(_BoundedGzip(gz, cap), dest, limits, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if not written:
        raise _bad_archive("it contains no files")
    return sorted(p.name for p in written)


def _extract_members(
    stream: _BoundedGzip,
    dest: Path,
    limits: ArchiveLimits,
    written: list[Path],
) -> None:
    try:
        # Not a context manager: closing a TarFile over a caller's fileobj is a no-op anyway.
        tf = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]  # noqa: SIM115
    except (tarfile.TarError, ValueError, UnicodeError) as exc:
        raise _bad_archive(str(exc)) from None
    seen: set[str] = set()
    top: str | None = None  # "" once files sit at the root, else the wrapping directory
    declared = count = 0
    while True:
        try:
            member = tf.next()
        except (tarfile.TarError, ValueError, UnicodeError, OverflowError) as exc:
            raise _bad_archive(str(exc)) from None
        if member is None:
            break
        count += 1
        if count > limits.max_members:
            raise PayloadTooLarge(
                f"archive has more than {limits.max_members} members",
                param="archive",
                code="archive_too_many_members",
            )
        name = member.name
        parts = _member_parts(name, limits)
        if not (member.isdir() or (member.isreg() and not member.issparse())):
            raise InvalidRequest(
                f"archive member {name!r} is a {_member_kind(member)}; only "
                "regular files and directories are allowed",
                param="archive",
                code="unsafe_archive_member",
            )
        key = "/".join(parts)
        if key in seen:
            raise InvalidRequest(
                f"archive member {name!r} appears more than once",
                param="archive",
                code="unsafe_archive_member",
            )
        seen.add(key)
        if member.isdir() and len(parts) > 1:
            raise InvalidRequest(
                f"archive member {name!r} is a nested directory; adapter files "
                "must sit at the archive root or inside one top-level directory",
                param="archive",
                code="unsafe_archive_path",
            )
        if not parts:
            if member.isdir():
                continue  # "." itself
            raise InvalidRequest(
                f"archive member {name!r} has an empty path",
                param="archive",
                code="unsafe_archive_path",
            )
        here = "" if member.isreg() and len(parts) == 1 else parts[0]
        if top is None:
            top = here
        elif here != top:
            where = "the archive root" if top == "" else f"directory {top!r}"
            raise InvalidRequest(
                f"archive member {name!r} is outside {where}; adapter files must "
                "sit at the archive root or inside one top-level directory",
                param="archive",
                code="unsafe_archive_path",
            )
        if member.isdir():
            continue
        filename = parts[-1]
        if filename not in ALLOWED_FILES:
            hint = (
                ": only safetensors weights are accepted (pickle .bin weights are refused)"
                if filename.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))
                else ""
            )
            raise InvalidRequest(
                f"archive member {name!r} is not allowed{hint}; an adapter "
                f"archive may only contain {', '.join(sorted(ALLOWED_FILES))}",
                param="archive",
                code="unexpected_archive_member",
            )
        declared += member.size
        if declared > limits.max_uncompressed_bytes:
            raise _too_large(
                f"archive members add up to more than "
                f"{limits.max_uncompressed_bytes} bytes (at {name!r})"
            )
        _copy_member(tf, member, dest / filename, written, limits)
    _check_end_of_archive(stream, tf)


def _copy_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    target: Path,
    written: list[Path],
    limits: ArchiveLimits,
) -> None:
    source = tf.extractfile(member)
    if source is None:
        raise _bad_archive(f"cannot read member {member.name!r}")
    total = 0
    with open(target, "xb") as out:
        written.append(target)
        try:
            while chunk := source.read(_CHUNK):
                total += len(chunk)
                if total > member.size or total > limits.max_uncompressed_bytes:
                    raise _too_large(
                        f"archive member {member.name!r} decompresses to more "
                        "bytes than declared or allowed"
                    )
                out.write(chunk)
        except (tarfile.TarError, ValueError) as exc:
            raise _bad_archive(f"member {member.name!r}: {exc}") from None
    if total != member.size:
        raise _bad_archive(f"member {member.name!r} is truncated")


def _check_end_of_archive(stream: _BoundedGzip, tf: tarfile.TarFile) -> None:
    """tarfile silently stops at a bad header after the first one; insist on a real end."""
    pos, block = stream.last_block
    if pos != tf.offset or len(block) != _BLOCK or block.count(0) != _BLOCK:
        raise _bad_archive("a tar header is truncated or corrupt (no end-of-archive marker)")
    while chunk := stream.read(_CHUNK):  # also verifies the gzip CRC and length
        if chunk.count(0) != len(chunk):
            raise _bad_archive("unexpected data after the end-of-archive marker")


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
