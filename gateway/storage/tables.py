"""Gateway tables (owner: gateway): tenants, API keys (hashed), audit log, usage,
idempotency records, quotas, integrations, and the state gateways share when several run
(quota buckets, stream leases, feedback predictions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared import db
from shared.db import now


class Base(db.Base):
    __abstract__ = True  # with a MetaData of its own (see shared.db.Base), its own Alembic


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    pii_mode: Mapped[str] = mapped_column(String(8), default="off")
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ApiKeyRow(Base):
    """Only a keyed hash of the secret is stored; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    # tenant | platform | bootstrap (gateway.domain.keys): how far the role reaches
    scope: Mapped[str] = mapped_column(String(16), default="tenant", server_default="tenant")
    name: Mapped[str] = mapped_column(String(200), default="")
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class AuditRow(Base):
    """Append-only, hash-chained: each row's hash covers its content and the previous hash
    (HMAC with the audit key ``key_id``; NULL: a sha256 row from before the keyed chain)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, default=now)
    tenant: Mapped[str | None] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(16))


class AuditHeadRow(Base):
    """The chain's signed head: the last row's (id, hash), HMAC-signed with the audit key and
    rewritten in the transaction that appends the row. One row, id 1."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    sig: Mapped[str] = mapped_column(String(64))


class UsageRow(Base):
    """Tokens per tenant, key, model and UTC day (upserted by the request path)."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("tenant", "key_id", "model", "day", name="uq_usage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    day: Mapped[str] = mapped_column(String(10))
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class IdempotencyRow(Base):
    """A creating POST's first answer, replayed for retries with the same key (per tenant).

    ``status`` is 0 while the first request is still running; ``fingerprint`` is a hash of
    method, path and body, so the same key with a different request is a 409.
    """

    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer, default=0)
    content_type: Mapped[str] = mapped_column(String(200), default="application/json")
    body: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class QuotaRow(Base):
    """Limits for a tenant (``scope='tenant'``) or one API key (``scope='key'``); NULL = the
    gateway default. A key is bound by its own limits and by its tenant's."""

    __tablename__ = "quotas"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_streams: Mapped[int | None] = mapped_column(Integer)
    max_adapters: Mapped[int | None] = mapped_column(Integer)
    max_jobs: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now)


class IntegrationRow(Base):
    """A connector: how a CRM/ERP record becomes a model call and the answer a field."""

    __tablename__ = "integrations"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    system: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    input_mapping: Mapped[dict[str, Any]] = mapped_column(JSON)
    template: Mapped[str] = mapped_column(Text)
    output: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class QuotaBucketRow(Base):
    """One token bucket shared by every gateway (``rpm:tenant:acme``, ``tpm:key:key_…``):
    ``tokens`` as of ``updated`` (unix seconds); refilled by whoever touches it next."""

    __tablename__ = "quota_buckets"

    bucket: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float, index=True)


class StreamLeaseRow(Base):
    """One open stream held by one gateway (``holder``) against one subject; renewed while
    it lasts, so a crashed gateway's streams free themselves at ``expires_at``."""

    __tablename__ = "quota_stream_leases"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), index=True)
    holder: Mapped[str] = mapped_column(String(32), index=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class PredictionRow(Base):
    """A served answer that feedback may score (request id or response id), until
    ``expires_at``."""

    __tablename__ = "feedback_predictions"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(200))
    predicted: Mapped[str] = mapped_column(Text)  # its first PREDICTED_CHARS, to show
    digest: Mapped[str] = mapped_column(String(64))  # of the whole answer, to match
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class FeedbackTallyRow(Base):
    """Correct / total fed-back predictions per tenant and adapter version."""

    __tablename__ = "feedback_tally"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(200), primary_key=True)
    correct: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
