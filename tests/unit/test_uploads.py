"""shared.uploads: one upload reader, streamed to disk in chunks, capped with a 413 that names
the limit; and the training readers' line splitting of a file (never read whole)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from services.training.data.readers import raw_lines
from shared.errors import PayloadTooLarge
from shared.uploads import CHUNK_BYTES, describe_bytes, spool_upload


class _Source(io.BytesIO):
    """Records the largest single read: the reader must never ask for the whole body."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, -1 if size is None or size < 0 else size)
        return super().read(size)


def test_spools_in_chunks_with_size_and_digest(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    src = _Source(data)
    with spool_upload(src, limit=len(data), dest_dir=tmp_path, suffix=".csv") as up:
        assert up.path.parent == tmp_path and up.path.suffix == ".csv"
        assert up.path.read_bytes() == data
        assert (up.size, up.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert not up.path.exists()  # the with block owns the file
    assert 0 < src.largest <= CHUNK_BYTES


def test_over_the_limit_is_413_naming_it_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge) as err:
        spool_upload(
            io.BytesIO(b"x" * (2 << 20)),
            limit=1 << 20,
            dest_dir=tmp_path,
            what="archive",
            param="archive",
            code="archive_too_large",
        )
    e = err.value
    assert (e.status, e.code, e.param) == (413, "archive_too_large", "archive")
    assert "1048576 bytes (1 MiB)" in e.message and e.message.startswith("archive")
    assert list(tmp_path.iterdir()) == []


def test_describe_bytes() -> None:
    assert describe_bytes(1 << 30) == "1073741824 bytes (1 GiB)"
    assert describe_bytes(1536) == "1536 bytes (1.5 KiB)"
    assert describe_bytes(10) == "10 bytes"


@pytest.mark.parametrize(
    "data", [b"", b"a", b"a\n", b"a\nb", b"a\n\nb\n", b"\n", b"\r\n\xff\n", b"x" * 100]
)
def test_file_lines_match_bytes_split(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert list(raw_lines(path)) == data.split(b"\n") == list(raw_lines(data))
