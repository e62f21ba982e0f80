"""pytest plugin: write the node id of every failed test to ``$TUNEFLEET_FAILED_IDS``.

``scripts/run_tests.sh`` loads it (``-p tests.support.failed_ids``) to rerun the failures of a
full run once, on their own, so that a test which fails only under the full suite's load is
reported as flaky by name instead of hiding or failing the whole run silently.
"""

from __future__ import annotations

import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("TUNEFLEET_FAILED_IDS")
    if path and report.failed:
        with open(path, "a", encoding="utf-8") as out:
            out.write(report.nodeid + "\n")
