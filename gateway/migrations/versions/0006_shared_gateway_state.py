"""state shared by several gateways: quota buckets, stream leases, feedback predictions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 20:00:00

Used when ``TUNEFLEET_GATEWAY_STATE_STORE`` is ``database`` (the default on Postgres); a single
gateway on SQLite keeps this state in memory and leaves these tables empty.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_buckets",
        sa.Column("bucket", sa.String(length=128), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("bucket"),
    )
    op.create_index("ix_quota_buckets_updated", "quota_buckets", ["updated"])
    op.create_table(
        "quota_stream_leases",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in ("subject", "holder", "expires_at"):
        op.create_index(f"ix_quota_stream_leases_{col}", "quota_stream_leases", [col])
    op.create_table(
        "feedback_predictions",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("adapter", sa.String(length=200), nullable=False),
        sa.Column("predicted", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id"),
    )
    op.create_index("ix_feedback_predictions_expires_at", "feedback_predictions", ["expires_at"])
    op.create_table(
        "feedback_tally",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("adapter", sa.String(length=200), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "adapter"),
    )


def downgrade() -> None:
    for table in ("feedback_tally", "feedback_predictions", "quota_stream_leases"):
        op.drop_table(table)
    op.drop_table("quota_buckets")
