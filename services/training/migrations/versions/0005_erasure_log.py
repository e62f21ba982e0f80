"""Erasure requests are recorded before anything is deleted (pending → done), so an erasure a
crash cut short is finished on restart instead of leaving blobs nobody references

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_erasures",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_training_erasures_status", "training_erasures", ["status"])


def downgrade() -> None:
    op.drop_index("ix_training_erasures_status", table_name="training_erasures")
    op.drop_table("training_erasures")
