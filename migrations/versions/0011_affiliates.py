"""affiliates: conversion states, one click per hour (issue #16) (filled in by the change that needs it)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 21:10:00

"""


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
