"""Time-ordered ids: ``<prefix>-<12 hex ms><10 hex random>``, so sorting by id is sorting by
creation time and cursor pagination (``?after=<id>``) is a plain comparison."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000):012x}{secrets.token_hex(5)}"
