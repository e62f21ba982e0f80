"""Prepared datasets remember an uploaded test file (the held-out split jobs report on)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 14:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_datasets") as batch:
        batch.add_column(sa.Column("test_file_id", sa.String(length=40), nullable=True))
        batch.create_index("ix_training_datasets_test_file_id", ["test_file_id"])


def downgrade() -> None:
    with op.batch_alter_table("training_datasets") as batch:
        batch.drop_index("ix_training_datasets_test_file_id")
        batch.drop_column("test_file_id")
