"""Idempotency-Key on file uploads and job creation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 19:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, name in (("training_files", "uq_file_idem"), ("training_jobs", "uq_job_idem")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
            batch_op.create_unique_constraint(name, ["tenant", "idempotency_key"])


def downgrade() -> None:
    for table, name in (("training_jobs", "uq_job_idem"), ("training_files", "uq_file_idem")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(name, type_="unique")
            batch_op.drop_column("idempotency_key")
