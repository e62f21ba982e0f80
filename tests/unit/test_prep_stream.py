"""Preparation in one streamed pass: the same splits and report as the list-at-a-time
building blocks (``dedup``, ``split``) on a generated export, the spill to an encrypted temp
file, and bad input read from a file or an encrypted stored blob still named by line."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from services.training.data.dedup import DigestSet, dedup
from services.training.data.example import Example
from services.training.data.normalize import normalize_text
from services.training.data.pipeline import _with_label, prepare, prepare_stream
from services.training.data.records import parse_upload
from services.training.data.split import split
from services.training.storage.files import BlobStore
from shared.crypto import DataCipher
from shared.errors import InvalidRequest
from shared.pii import redact

MAPPING = {"Subject": "text", "Description": "text", "Type": "label"}
WORDS = ("invoice", "refund", "login", "screen", "parcel", "late", "broken", "card", "reset")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def export(rows: int, seed: int = 3) -> bytes:
    rng = random.Random(seed)
    lines = ["Id,Subject,Description,Type"]
    for i in range(rows):
        subject = " ".join(rng.choice(WORDS) for _ in range(2))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        if i % 17 == 0:
            text += f" call +1 201-555-{i % 10000:04d}"  # PII, redacted before dedup
        label = rng.choice(("billing", "technical", "shipping", "rare")[: 3 + (i == 5)])
        lines.append(f'{i},{subject},"{text}",{label}')
    return ("\r\n".join(lines) + "\r\n").encode()


def reference(data: bytes, seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """The pipeline as it was: every row in a list, dedup then split (test first)."""
    parsed = parse_upload(data, "x.csv", MAPPING)
    assert not parsed.errors
    rows = [_with_label(ex.map_text(normalize_text)) for ex in parsed.examples]
    rows = [ex.map_text(lambda t: redact(t)[0]) for ex in rows]
    kept, _ = dedup(rows)
    train, test = split(kept, 0.1, seed + 7_919)
    train, val = split(train, 0.2, seed)
    return train, val, test


@pytest.mark.parametrize("seed", [0, 11])
def test_streamed_splits_equal_the_list_building_blocks(tokenizer: Tokenizer, seed: int) -> None:
    data = export(3000)
    prepared = prepare(
        data,
        "x.csv",
        mapping=MAPPING,
        task="classification",
        tokenizer=tokenizer,
        max_len=8,
        seed=seed,
        validation_fraction=0.2,
        test_fraction=0.1,
    )
    train, val, test = reference(data, seed)
    assert (prepared.train, prepared.validation, prepared.test) == (train, val, test)
    report = prepared.report
    assert report.rows_in == 3000 and report.rows_out == len(train) + len(val) + len(test)
    assert report.dedup.exact_dropped + report.dedup.near_dropped == 3000 - report.rows_out > 0
    assert report.labels is not None and report.labels.counts["billing"] == sum(
        ex.label == "billing" for ex in train
    )
    assert report.split.test == len(test) and report.split.validation == len(val)


def test_spill_to_an_encrypted_temp_file_gives_the_same_result(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    data = export(2000)
    args = {"mapping": MAPPING, "task": "classification", "tokenizer": tokenizer, "max_len": 8}
    expected = prepare(data, "x.csv", test_fraction=0.1, **args)  # type: ignore[arg-type]
    got: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}

    class Sink:
        def write(self, name: str, example: Example) -> None:
            assert not list(tmp_path.iterdir())  # the spill file is unlinked at once
            got[name].append(example)

    report = prepare_stream(
        data, "x.csv", test_fraction=0.1, sink=Sink(), spill_dir=tmp_path, **args
    )  # type: ignore[arg-type]
    assert report == expected.report
    assert got == {
        "train": expected.train,
        "validation": expected.validation,
        "test": expected.test,
    }
    # the report alone (the upload check) needs no spill and says the same
    assert prepare_stream(data, "x.csv", test_fraction=0.1, **args) == expected.report  # type: ignore[arg-type]


def _sources(tmp_path: Path, data: bytes) -> list[object]:
    path = tmp_path / "up.csv"
    path.write_bytes(data)
    store = BlobStore(tmp_path / "store", DataCipher([os.urandom(32)]))
    store.put("files/f", data, tenant="acme")
    return [data, path, store.source("files/f", tenant="acme")]


def test_bad_rows_deep_in_a_streamed_file_are_named_by_line(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    lines = export(3000).split(b"\r\n")
    lines[2500] = b"2499,only two"  # file line 2501
    lines[2800] = b"2799,\xe2\x80\x8b,,technical"  # a zero-width space: empty once normalized
    for source in _sources(tmp_path, b"\r\n".join(lines)):
        with pytest.raises(InvalidRequest) as info:
            prepare(source, "x.csv", mapping=MAPPING, tokenizer=tokenizer, max_len=8)  # type: ignore[arg-type]
        assert info.value.code == "invalid_training_file"
        assert "line 2501: row: expected 4 columns, got 2" in info.value.message
        assert "2801" not in info.value.message  # parse errors first, as before


def test_bad_utf8_and_empty_fields_named_by_line_when_streamed(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    lines = export(1500).split(b"\r\n")
    lines[1200] = b'1199,caf\xe9,"text",billing'
    for source in _sources(tmp_path, b"\r\n".join(lines)):
        with pytest.raises(InvalidRequest, match=r"line 1201: encoding: invalid UTF-8 byte 0xe9"):
            prepare(source, "x.csv", mapping=MAPPING, tokenizer=tokenizer, max_len=8)  # type: ignore[arg-type]
    lines = export(1500).split(b"\r\n")
    lines[900] = b"899,\xe2\x80\x8b,\x01,billing"  # nothing left once normalized
    for source in _sources(tmp_path, b"\r\n".join(lines)):
        with pytest.raises(InvalidRequest, match=r"line 901: prompt: is empty after normalization"):
            prepare(source, "x.csv", mapping=MAPPING, tokenizer=tokenizer, max_len=8)  # type: ignore[arg-type]


def test_digest_set_grows_and_finds_every_member() -> None:
    rng = random.Random(1)
    keys = [rng.getrandbits(64) | 1 for _ in range(50_000)]
    seen = DigestSet(capacity=16)
    assert all(seen.add(k) for k in keys)
    assert not any(seen.add(k) for k in keys)
    assert len(seen) == len(set(keys))


def test_erasure_scan_reads_blobs_in_blocks_of_lines() -> None:
    import io

    from services.training.domain.erasure_scan import stream_matches, subject_matcher

    match = subject_matcher("jane@example.com", "C-12")
    rows = b"".join(b"row %d C-123 XC-12 nothing\n" % i for i in range(5000))
    for block in (7, 64, 1 << 20):
        assert not stream_matches(io.BytesIO(rows), match, block=block)
        for extra in (b"id C-12.\n", b"mail JANE@example.com\n"):
            hit = rows[:50_000] + extra + rows[50_000:]
            assert stream_matches(io.BytesIO(hit), match, block=block), (block, extra)
    long_line = b"x " * 3_000_000 + b"C-12 " + b"y " * 3_000_000  # 12 MB, no newline
    assert stream_matches(io.BytesIO(long_line), match, block=1 << 20)


def test_dataset_splits_are_served_in_chunks_and_a_foreign_blob_fails_first(
    tmp_path: Path,
) -> None:
    from services.training.domain.files import dataset_key, dataset_split
    from shared.crypto import DecryptionError

    store = BlobStore(tmp_path, DataCipher([os.urandom(32)]))
    rows = b"".join(b'{"prompt": "p%d", "completion": "c"}\n' % i for i in range(100_000))
    with store.writer(dataset_key("ds1", "train"), tenant="acme") as out:
        for i in range(0, len(rows), 4096):
            out.write(rows[i : i + 4096])
    chunks = list(dataset_split(store, "acme", "ds1", "train"))
    assert len(chunks) > 1 and b"".join(chunks) == rows
    assert list(dataset_split(store, "acme", "ds1", "test")) == []  # an older dataset
    with pytest.raises(DecryptionError):  # raised before a response would start
        dataset_split(store, "globex", "ds1", "train")
