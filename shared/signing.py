"""HMAC-SHA256 signatures for webhook deliveries (sender: registry; receivers: anyone).

Header ``X-Tunefleet-Signature: t=<unix ts>,v1=<hex hmac(secret, "<ts>.<body>")>``: the
timestamp is signed too, so a captured delivery cannot be replayed after ``tolerance_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Tunefleet-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance_s: int = 300) -> bool:
    """True when ``header`` is a valid, fresh signature of ``body``."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    raw_ts = parts.get("t", "")
    # digits only, at most 12 (a 400-digit "timestamp" overflowed the float comparison: 500)
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 12):
        return False
    ts = int(raw_ts)
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
