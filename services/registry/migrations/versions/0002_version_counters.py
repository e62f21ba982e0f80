"""per-(tenant, name) version counters that survive adapter deletion (issue 18, item 9)

Revision ID: 0002_version_counters
Revises: 0001
Create Date: 2026-12-03 19:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_version_counters"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_version_counters",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name"),
    )
    # Existing adapters continue from their highest version (deleted ones are gone already:
    # their numbers cannot be recovered, so a name deleted before this migration may reuse
    # them once; every deletion from here on is remembered).
    op.execute(
        "INSERT INTO adapter_version_counters (tenant, name, last_number) "
        "SELECT a.tenant, a.name, MAX(v.number) FROM adapters a "
        "JOIN adapter_versions v ON v.adapter_id = a.id GROUP BY a.tenant, a.name"
    )


def downgrade() -> None:
    op.drop_table("adapter_version_counters")
