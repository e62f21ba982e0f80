"""A job remembers the tenant's max_adapters it was created under, so the adapter it
publishes counts against that limit (issue 18 item 4)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("max_adapters", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("max_adapters")
