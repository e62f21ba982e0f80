"""A large CRM CSV export uploaded to the training service, a real process on loopback (as an
operator runs it): accepted, prepared (the upload check runs the whole preparation pipeline),
and the service's peak memory grows by less than 150 MB while it does (VmHWM, reset just
before the upload through /proc/<pid>/clear_refs, minus VmRSS at that moment).

The upload is spooled to disk in chunks (``shared.uploads``), stored sealed a chunk at a time,
and prepared as a stream (``pipeline.prepare_stream``: fixed-size columns and 64-bit dedup
digests per row, never the rows). The size is ``TUNEFLEET_UPLOAD_TEST_MB`` (default 4, to keep
``make test`` short on CI's 2 cores); the issue's 200 MB is run on demand::

    TUNEFLEET_UPLOAD_TEST_MB=200 pytest -s tests/slow/test_upload_memory.py

The exports and the stored upload are deleted afterwards. Measured numbers are in
BENCHMARKS.md ("Large uploads: training service memory").
"""

from __future__ import annotations

import base64
import csv
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ServiceProcess, service

pytestmark = [pytest.mark.slow]

TOKEN = "upload-memory-token"
SIZE_MB = float(os.environ.get("TUNEFLEET_UPLOAD_TEST_MB", "4"))
MAX_GROWTH_MB = 150
MAPPING = {"Subject": "text", "Description": "text", "Type": "label"}
WORDS = (
    "invoice",
    "refund",
    "login",
    "password",
    "shipment",
    "delayed",
    "broken",
    "screen",
    "charge",
    "account",
    "address",
    "update",
    "package",
    "error",
    "billing",
    "renewal",
    "portal",
    "access",
    "reset",
    "tracking",
    "carrier",
)
TYPES = ("billing", "technical", "account", "shipping")


def write_export(path: Path, size_bytes: int, seed: int = 0) -> int:
    """A Salesforce-like case export of about ``size_bytes``; returns its row count."""
    rng = random.Random(seed)
    rows = 0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Id", "Subject", "Description", "Type", "Owner"])
        while fh.tell() < size_bytes:
            subject = " ".join(rng.choice(WORDS) for _ in range(5))
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 30)))
            description = f"{words}. Ref {rng.randrange(10**9)}"
            out.writerow([f"500{rows:09d}", subject, description, TYPES[rows % 4], f"a{rows}"])
            rows += 1
    return rows


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture
def training(model_dir: Path, tmp_path: Path) -> Iterator[ServiceProcess]:
    reg_home, home = tmp_path / "registry", tmp_path / "training"
    reg_home.mkdir()
    home.mkdir()
    common = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN}
    reg_env = {**common, "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)}
    with service(
        "registry", "services.registry", reg_home, reg_env, "TUNEFLEET_REGISTRY_PORT"
    ) as reg:
        reg.wait_ready(120)
        env = {
            **common,
            "TUNEFLEET_TRAINING_REGISTRY_URL": reg.url,
            "TUNEFLEET_TRAINING_MAX_UPLOAD_BYTES": str(int(SIZE_MB * 2**20) + 2**20),
            # encryption at rest on: the stored upload is sealed a chunk at a time
            "TUNEFLEET_DATA_KEYS": base64.b64encode(os.urandom(32)).decode(),
        }
        with service("training", "services.training", home, env, "TUNEFLEET_TRAINING_PORT") as tr:
            tr.wait_ready(120)
            yield tr


def upload(client: httpx.Client, path: Path, name: str) -> httpx.Response:
    with path.open("rb") as fh:  # httpx streams a file object in the multipart body
        return client.post(
            "/v1/files",
            files={"file": (name, fh, "text/csv")},
            data={"purpose": "fine-tune", "mapping": json.dumps(MAPPING)},
        )


def test_large_csv_export_is_prepared_in_bounded_memory(
    training: ServiceProcess, tmp_path: Path
) -> None:
    small, big = tmp_path / "warm.csv", tmp_path / "export.csv"
    write_export(small, 20_000, seed=1)
    rows = write_export(big, int(SIZE_MB * 2**20))
    size = big.stat().st_size
    pid = training.proc.pid
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    with httpx.Client(base_url=training.url, headers=headers, timeout=1800) as client:
        # first upload loads the tokenizer (transformers); only the large one is measured
        warm = upload(client, small, "warm.csv")
        assert warm.status_code == 200, warm.text
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = proc_kib(pid, "VmRSS")
        t0 = time.monotonic()
        r = upload(client, big, "export.csv")
        seconds = time.monotonic() - t0
        peak = proc_kib(pid, "VmHWM")
        big.unlink()  # a 200 MB export does not stay in /tmp
        if r.status_code == 200:  # nor does the stored upload
            client.delete(f"/v1/files/{r.json()['id']}").raise_for_status()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "processed", body.get("status_details")
    assert body["bytes"] == size
    report = body["prep_report"]
    assert report["format"] == "csv" and report["rows_in"] == rows and report["rows_out"] > 0
    growth_mb = (peak - before) / 1024
    print(
        f"\nupload {size / 2**20:.0f} MB ({rows} rows): {seconds:.1f} s, "
        f"training RSS {before / 1024:.0f} MB -> peak {peak / 1024:.0f} MB "
        f"(+{growth_mb:.0f} MB)"
    )
    assert growth_mb < MAX_GROWTH_MB, f"training service grew {growth_mb:.0f} MB"
