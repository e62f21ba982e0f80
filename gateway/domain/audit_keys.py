"""The audit chain's HMAC keys: secrets that are never in the database.

``TUNEFLEET_GATEWAY_AUDIT_KEY`` when set; else derived from the API-key hashing secret
(``credentials.key_hash_secret``: a setting or a 0600 file, never a row) under a label of its
own, ``hex(HMAC-SHA256(key_hash_secret, DERIVE_LABEL))``, so gateways that share a database
and that secret (they must) share the audit key too without a second secret to distribute.

Each key has an id, a fingerprint (``key_id``) stored with every row and head it signed.
Rotation: set the new key and list the old one in ``TUNEFLEET_GATEWAY_AUDIT_RETIRED_KEYS``
(JSON list); new rows and the head are signed with the new key, rows signed with a retired
key still verify, and a row whose key is in neither fails verification ("unknown key").
Retire the derived key the same way (its value is the formula above) before changing the
key-hash secret or setting an audit key of its own.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

DERIVE_LABEL = b"tunefleet audit chain key v1"


def key_id(key: str) -> str:
    """A key's public id: 12 hex digits of a labelled sha256 (reveals nothing usable)."""
    return hashlib.sha256(b"tunefleet audit key id\n" + key.encode()).hexdigest()[:12]


def derive(key_hash_secret: str) -> str:
    """The audit key of a gateway without ``TUNEFLEET_GATEWAY_AUDIT_KEY``."""
    return hmac.new(key_hash_secret.encode(), DERIVE_LABEL, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditKeys:
    """The signing key (``current_id``) and every key rows may still be verified with."""

    current_id: str
    keys: Mapping[str, bytes]

    @classmethod
    def of(cls, current: str, retired: Iterable[str] = ()) -> AuditKeys:
        keys = {key_id(k): k.encode() for k in retired if k}
        keys[key_id(current)] = current.encode()
        return cls(current_id=key_id(current), keys=keys)

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]

    def get(self, kid: str | None) -> bytes | None:
        return self.keys.get(kid) if kid else None


def audit_keys(settings: GatewaySettings, key_hash_secret: str) -> AuditKeys:
    """The gateway's audit keys (see the module docstring)."""
    configured = settings.audit_key.get_secret_value() if settings.audit_key else None
    retired = [k.get_secret_value() for k in settings.audit_retired_keys]
    return AuditKeys.of(configured or derive(key_hash_secret), retired)
