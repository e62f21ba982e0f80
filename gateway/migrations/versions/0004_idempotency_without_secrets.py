"""idempotency records without secrets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:40:00

Stored answers of creates that returned a secret shown once (an API key, a webhook signing
secret) kept it in plaintext until the row expired; from now on they never do
(``gateway.domain.idempotency.without_secrets``). This revision scrubs the rows stored before.
"""

import sqlalchemy as sa
from alembic import op

from gateway.domain.idempotency import without_secrets

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT tenant, key, content_type, body FROM idempotency_keys WHERE status > 0")
    ).fetchall()
    for tenant, key, content_type, body in rows:
        clean = without_secrets(content_type, bytes(body))
        if clean != bytes(body):
            conn.execute(
                sa.text("UPDATE idempotency_keys SET body = :b WHERE tenant = :t AND key = :k"),
                {"b": clean, "t": tenant, "k": key},
            )


def downgrade() -> None:
    pass  # the secrets are gone for good
