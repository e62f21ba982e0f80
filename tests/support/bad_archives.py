"""Malicious or broken adapter archives, one builder per rejection the registry must make."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path


def _tar(out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _good_members(adapter_dir: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_file(p.name, p.read_bytes()) for p in sorted(adapter_dir.iterdir()) if p.is_file()]


def _with(
    adapter_dir: Path, *extra: tuple[tarfile.TarInfo, bytes | None]
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The adapter's good members, with ``extra`` replacing any member of the same name."""
    names = {info.name for info, _ in extra}
    return [m for m in _good_members(adapter_dir) if m[0].name not in names] + list(extra)


def absolute_path(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, [*_good_members(adapter_dir), _file("/etc/evil.json", b"{}")])


def dot_dot(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, [*_good_members(adapter_dir), _file("../escape.json", b"{}")])


def symlink(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, _with(adapter_dir, _special("README.md", tarfile.SYMTYPE, "/etc/passwd")))


def hardlink(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, _with(adapter_dir, _special("README.md", tarfile.LNKTYPE, "/etc/passwd")))


def device(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, _with(adapter_dir, _special("README.md", tarfile.CHRTYPE)))


def too_many_members(adapter_dir: Path, out: Path) -> Path:
    extra = [_file(f"x{i}.json", b"{}") for i in range(100)]
    return _tar(out, [*_good_members(adapter_dir), *extra])


def gzip_bomb(adapter_dir: Path, out: Path) -> Path:
    # 64 MiB of zeros compress to ~64 KiB; the test registry allows 16 MiB uncompressed.
    return _tar(out, _with(adapter_dir, _file("README.md", b"\0" * (64 << 20))))


def not_gzip(adapter_dir: Path, out: Path) -> Path:
    out.write_bytes(b"this is not an archive" * 100)
    return out


def truncated(adapter_dir: Path, out: Path) -> Path:
    _tar(out, _good_members(adapter_dir))
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    return out


def pickle_weights(adapter_dir: Path, out: Path) -> Path:
    members = [m for m in _good_members(adapter_dir) if m[0].name != "adapter_model.safetensors"]
    return _tar(out, [*members, _file("adapter_model.bin", b"\x80\x04K\x00.")])


def missing_config(adapter_dir: Path, out: Path) -> Path:
    members = [m for m in _good_members(adapter_dir) if m[0].name != "adapter_config.json"]
    return _tar(out, members)


def corrupt_weights(adapter_dir: Path, out: Path) -> Path:
    return _tar(out, _with(adapter_dir, _file("adapter_model.safetensors", b"\xff" * 64)))


def plain_gzip(adapter_dir: Path, out: Path) -> Path:
    out.write_bytes(gzip.compress(b"{}"))
    return out


BAD_ARCHIVES: dict[str, tuple[Callable[[Path, Path], Path], int, str]] = {
    "absolute_path": (absolute_path, 400, "unsafe_archive_path"),
    "dot_dot": (dot_dot, 400, "unsafe_archive_path"),
    "symlink": (symlink, 400, "unsafe_archive_member"),
    "hardlink": (hardlink, 400, "unsafe_archive_member"),
    "device": (device, 400, "unsafe_archive_member"),
    # more than the limit of entries; extra names are refused before the count is reached
    "too_many_members": (too_many_members, 400, "unexpected_archive_member"),
    "gzip_bomb": (gzip_bomb, 413, "archive_too_large"),
    "not_gzip": (not_gzip, 400, "invalid_archive"),
    "plain_gzip": (plain_gzip, 400, "invalid_archive"),
    "truncated": (truncated, 400, "invalid_archive"),
    "pickle_weights": (pickle_weights, 400, "unexpected_archive_member"),
    "missing_config": (missing_config, 400, "invalid_adapter"),
    "corrupt_weights": (corrupt_weights, 400, "corrupt_weights"),
}
