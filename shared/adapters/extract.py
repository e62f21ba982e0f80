"""Safe extraction of an adapter ``.tar.gz``: member by member, bounded, known files only.

The archive is extracted member by member (never ``extractall``), only regular, known files are
written, and sizes are bounded on the declared and on the actual decompressed bytes.
``shared.adapters.archive`` re-exports ``safe_extract`` and ``ArchiveLimits``.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidRequest, PayloadTooLarge

__all__ = [
    "ADAPTER_MEMBERS",
    "ALLOWED_FILES",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "ArchiveLimits",
    "MemberPolicy",
    "safe_extract",
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


@dataclass(frozen=True)
class MemberPolicy:
    """Which file names an archive may hold (``allows``) and how a refusal explains it."""

    allows: Callable[[str], bool]
    expected: str  # "an adapter archive may only contain ..."


ADAPTER_MEMBERS = MemberPolicy(
    allows=ALLOWED_FILES.__contains__,
    expected=f"an adapter archive may only contain {', '.join(sorted(ALLOWED_FILES))}",
)


def safe_extract(
    archive: Path,
    dest: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    members: MemberPolicy = ADAPTER_MEMBERS,
) -> list[str]:
    """Extract a ``.tar.gz`` into ``dest`` (created if missing, must be empty).

    Only names ``members`` allows (adapters: ``adapter_config.json``,
    ``adapter_model.safetensors`` and ``README.md``) are accepted, at the archive root or
    inside a single top-level directory (which is stripped). Returns the sorted names written.
    On any failure every file written is removed before the error is raised
    (``InvalidRequest``/``PayloadTooLarge``, see the module's codes).
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
            _extract_members(_BoundedGzip(gz, cap), dest, limits, written, members)
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
    members: MemberPolicy,
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
        if not members.allows(filename):
            hint = (
                ": only safetensors weights are accepted (pickle .bin weights are refused)"
                if filename.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))
                else ""
            )
            raise InvalidRequest(
                f"archive member {name!r} is not allowed{hint}; {members.expected}",
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
