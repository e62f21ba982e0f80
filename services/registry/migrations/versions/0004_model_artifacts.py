"""merged models are stored artifacts, not registry-host paths (issue 16, item 1)

A tenant's base model (a ``hybrid``/``full``/``transfer`` result) is uploaded as an archive
and kept in the blob store: ``artifact_sha256``/``size_bytes`` name it, ``path`` is left
for the fleet's seeded models only.

Revision ID: 0004_model_artifacts
Revises: 0003_event_feed
Create Date: 2026-12-03 23:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_model_artifacts"
down_revision = "0003_event_feed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifact_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
        batch_op.alter_column("path", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM base_models WHERE path IS NULL")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.alter_column("path", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("size_bytes")
        batch_op.drop_column("artifact_sha256")
