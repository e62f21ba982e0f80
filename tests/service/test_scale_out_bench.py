"""``benchmarks/scale_out.py`` runs end to end (its quota scenario, the shortest): real
Postgres, registry, stub replica and 2+2 gateways as processes, JSON out. Counts only, no
timings: the shared (database) quota state admits what one token bucket allows across both
gateways, the per-process (memory) state more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import pg_bin_dir

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.bench, pytest.mark.postgres]


def test_scale_out_quota_scenario_runs(tmp_path: Path, model_dir: Path) -> None:
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed")
    out = tmp_path / "scale_out.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "scale_out.py"),
        "--only",
        "quota",
        "--quota-window",
        "2",
        "--model-dir",
        str(model_dir),
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    quota = report["quota"]
    allowed = quota["one_bucket_allows"]  # 60 + 2 refilled
    assert quota["database"]["admitted"] <= allowed + 1, quota
    assert quota["memory"]["admitted"] > allowed + 1, quota
    assert quota["database"]["status_counts"].get("429", 0) > 0, quota
