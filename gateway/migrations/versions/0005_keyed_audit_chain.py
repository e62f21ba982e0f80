"""keyed audit chain: a key id per audit row, the signed head

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 20:00:00

Audit rows appended from now on are HMACs with the audit key (``gateway.domain.audit``), the
key's id in ``audit_log.key_id``; the rows already there keep their sha256 hashes (key id
NULL) and still verify: they are sealed, not rewritten. The first gateway start after this
revision signs a head over the last of them (``audit.seal``), which fixes their chain: an
edit, deletion or appended row among them no longer matches the signed head.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("sig", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("key_id")
