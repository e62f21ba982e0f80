"""The streamed blob form (``TFE3``): sealed and opened a chunk at a time, and every way of
cutting, reordering, extending or moving its chunks is an error, never shorter or different
plaintext."""

from __future__ import annotations

import io
import os

import pytest

from shared.crypto import (
    STREAM_HEADER_LEN,
    TAG_LEN,
    DataCipher,
    DecryptionError,
    reader_over,
)

CHUNK = 64
CIPHER = DataCipher([os.urandom(32)])


def seal(data: bytes, context: bytes = b"ctx", cipher: DataCipher = CIPHER) -> bytes:
    out = io.BytesIO()
    writer = cipher.sealing_writer(out, context, chunk=CHUNK)
    for i in range(0, len(data), 7):  # written in pieces that do not line up with chunks
        writer.write(data[i : i + 7])
    writer.finish()
    return out.getvalue()


def open_all(blob: bytes, context: bytes = b"ctx") -> bytes:
    return b"".join(CIPHER.open_stream(io.BytesIO(blob), context))


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    body, size = blob[STREAM_HEADER_LEN:], CHUNK + TAG_LEN
    return blob[:STREAM_HEADER_LEN], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 17])
def test_round_trip_any_length(n: int) -> None:
    data = os.urandom(n)
    blob = seal(data)
    assert blob.startswith(b"TFE3")
    assert open_all(blob) == data
    assert CIPHER.decrypt(blob, b"ctx") == data  # the whole-blob API opens it too
    assert list(reader_over(CIPHER.open_stream(io.BytesIO(blob), b"ctx"))) == list(io.BytesIO(data))
    assert not CIPHER.needs_rewrap(blob[:64])


def test_each_chunk_is_a_separate_seal_with_fresh_nonces() -> None:
    data = b"x" * (3 * CHUNK)
    a, b = seal(data), seal(data)
    assert a != b  # a fresh base nonce per blob
    _, chunks = chunks_of(a)
    assert len(chunks) == 3 and len(set(chunks)) == 3  # same plaintext, distinct ciphertext


def _tampered(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[STREAM_HEADER_LEN + CHUNK + TAG_LEN + 5] ^= 1  # a byte of the second chunk
    return bytes(out)


def _reordered(blob: bytes) -> bytes:
    header, chunks = chunks_of(blob)
    return header + chunks[1] + chunks[0] + b"".join(chunks[2:])


def _truncated_at_boundary(blob: bytes) -> bytes:
    header, chunks = chunks_of(blob)
    return header + b"".join(chunks[:-1])  # the last whole chunk dropped


def _truncated_mid_chunk(blob: bytes) -> bytes:
    return blob[:-3]


def _appended(blob: bytes) -> bytes:
    return blob + chunks_of(blob)[1][0]


def _header_only(blob: bytes) -> bytes:
    return blob[:STREAM_HEADER_LEN]


def _chunk_size_changed(blob: bytes) -> bytes:
    out = bytearray(blob)
    out[STREAM_HEADER_LEN - 1] ^= 1
    return bytes(out)


@pytest.mark.parametrize(
    "mutate",
    [
        _tampered,
        _reordered,
        _truncated_at_boundary,
        _truncated_mid_chunk,
        _appended,
        _header_only,
        _chunk_size_changed,
    ],
)
def test_tampered_reordered_truncated_or_extended_streams_fail(mutate) -> None:  # type: ignore[no-untyped-def]
    blob = seal(os.urandom(3 * CHUNK + 10))
    with pytest.raises(DecryptionError):
        open_all(mutate(blob))
    with pytest.raises(DecryptionError):
        CIPHER.decrypt(mutate(blob), b"ctx")


def test_truncation_at_a_boundary_of_an_exact_multiple_fails() -> None:
    blob = seal(os.urandom(4 * CHUNK))  # the final chunk is a full one
    with pytest.raises(DecryptionError):
        open_all(_truncated_at_boundary(blob))


def test_bound_to_context_and_key() -> None:
    blob = seal(b"acme rows\n" * 20)
    with pytest.raises(DecryptionError, match="chunk 0"):
        open_all(blob, b"another record")
    with pytest.raises(DecryptionError, match="not configured"):
        b"".join(DataCipher([os.urandom(32)]).open_stream(io.BytesIO(blob), b"ctx"))


def test_chunks_before_the_bad_one_are_yielded_then_it_raises() -> None:
    data = os.urandom(3 * CHUNK)
    stream = CIPHER.open_stream(io.BytesIO(_tampered(seal(data))), b"ctx")
    assert next(stream) == data[:CHUNK]
    with pytest.raises(DecryptionError, match="chunk 1"):
        next(stream)


def test_whole_blob_forms_still_open_through_the_stream() -> None:
    data = b"older blob\n"
    legacy = CIPHER.encrypt(data, b"ctx")  # TFE2, as stored before the chunked form
    assert legacy.startswith(b"TFE2")
    assert open_all(legacy) == data
