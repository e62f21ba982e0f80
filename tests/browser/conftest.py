"""Browser tests: Debian's headless Chromium driven by Playwright (no downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: sync Playwright keeps an event loop running in this thread while it is
    open, which breaks every asyncio test that runs after it in the same session."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; scripts/system_deps.sh installs it")
        pytest.skip("chromium not installed (bash scripts/system_deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Screenshots go to $TUNEFLEET_TEST_ARTIFACTS/<test> when set (kept), else tmp_path."""
    base = os.environ.get("TUNEFLEET_TEST_ARTIFACTS")
    out = Path(base) / request.node.name if base else tmp_path / "screenshots"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out
