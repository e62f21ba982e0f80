"""api key scope: tenant-scoped operators, platform keys, the bootstrap key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 13:30:00

Existing keys become tenant-scoped, except the bootstrap admin key (generated: named
"bootstrap"; from TUNEFLEET_ADMIN_KEY: id "key_bootstrap"). Other keys of the system tenant
are NOT promoted to platform keys: before this revision any admin could create them, so the
bootstrap admin grants platform roles again after the upgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scope", sa.String(length=16), nullable=False, server_default="tenant")
        )
    op.execute(
        "UPDATE api_keys SET scope = 'bootstrap' WHERE tenant = 'system' AND role = 'admin' "
        "AND (id = 'key_bootstrap' OR name = 'bootstrap')"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("scope")
