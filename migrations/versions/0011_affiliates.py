"""affiliates: conversion states, one click per hour (issue #16)

Clicks: one per offer link (so per person) and clock hour (UTC), `UNIQUE(offer_link_id,
hour)`, with `opens`, the number of openings in that hour. Existing clicks get their hour: the
first click of a link in an hour keeps it and counts the hour's openings; a later one in the
same hour keeps hour NULL and opens 1 (kept, not deleted: a conversion may name its click id).

Conversions: `status` becomes the state pending | approved | reversed (it was attribution,
which `account_id` already says), with `approved_at`, `reversed_at` and `booked_musd` (the
commission booked as revenue at approval). Every existing conversion was booked when it was
reported, so it becomes "approved" at its `created_at`, with `booked_musd` = its commission
when attributed (its revenue entry, key `affiliate:<network>:<id>`, already exists).

Downgrade: back to attributed/unattributed (from `account_id`). A pending or reversed
conversion then reads as booked although it is not (the old code never books a stored row, so
no money moves); the clicks' hour and openings are dropped.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 21:10:00

"""
from datetime import UTC

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

STATES = "status IN ('pending', 'approved', 'reversed')"
STATUS_TIMES = (
    "(status = 'pending' AND approved_at IS NULL AND reversed_at IS NULL)"
    " OR (status = 'approved' AND approved_at IS NOT NULL AND reversed_at IS NULL)"
    " OR (status = 'reversed' AND reversed_at IS NOT NULL)"
)
BOOKED = "booked_musd >= 0 AND (booked_musd = 0 OR approved_at IS NOT NULL)"
OLD_STATES = "status IN ('attributed', 'unattributed')"
# Full names (batch_op.f: not run through the naming convention again).
UQ_CLICK_HOUR = 'uq_affiliate_clicks_offer_link_id_hour'
CK_OPENS = 'ck_affiliate_clicks_opens_positive'
CK_STATUS = 'ck_affiliate_conversions_status_known'
CK_TIMES = 'ck_affiliate_conversions_status_times_agree'
CK_BOOKED = 'ck_affiliate_conversions_booked_when_approved'

clicks = sa.table(
    'affiliate_clicks',
    sa.column('id', sa.Integer()),
    sa.column('offer_link_id', sa.Integer()),
    sa.column('hour', sa.DateTime(timezone=True)),
    sa.column('opens', sa.Integer()),
    sa.column('created_at', sa.DateTime(timezone=True)),
)


def _hour(moment):
    """The UTC hour of a stored time (SQLite hands back naive UTC, PostgreSQL aware)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def upgrade():
    with op.batch_alter_table('affiliate_clicks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hour', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('opens', sa.Integer(), server_default='1',
                                      nullable=False))

    # Each link's first click of an hour gets the hour and the hour's count of clicks.
    bind = op.get_bind()
    first: dict[tuple[int, object], list[int]] = {}  # (link, hour) -> [click id, opens]
    rows = bind.execute(sa.select(clicks.c.id, clicks.c.offer_link_id, clicks.c.created_at)
                        .order_by(clicks.c.created_at, clicks.c.id)).all()
    for click_id, link_id, created_at in rows:
        hour = _hour(created_at)
        held = first.setdefault((link_id, hour), [click_id, 0])
        held[1] += 1
    for (_, hour), (click_id, opens) in first.items():
        bind.execute(clicks.update().where(clicks.c.id == click_id)
                     .values(hour=hour, opens=opens))

    with op.batch_alter_table('affiliate_clicks', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f(UQ_CLICK_HOUR), ['offer_link_id', 'hour'])
        batch_op.create_check_constraint(batch_op.f(CK_OPENS), 'opens >= 1')

    with op.batch_alter_table('affiliate_conversions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(CK_STATUS), type_='check')
        batch_op.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reversed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('booked_musd', sa.BigInteger(), server_default='0',
                                      nullable=False))

    op.execute(
        "UPDATE affiliate_conversions SET status = 'approved', approved_at = created_at, "
        "booked_musd = CASE WHEN account_id IS NULL THEN 0 ELSE commission_musd END"
    )

    with op.batch_alter_table('affiliate_conversions', schema=None) as batch_op:
        batch_op.create_check_constraint(batch_op.f(CK_STATUS), STATES)
        batch_op.create_check_constraint(batch_op.f(CK_TIMES), STATUS_TIMES)
        batch_op.create_check_constraint(batch_op.f(CK_BOOKED), BOOKED)


def downgrade():
    with op.batch_alter_table('affiliate_conversions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(CK_BOOKED), type_='check')
        batch_op.drop_constraint(batch_op.f(CK_TIMES), type_='check')
        batch_op.drop_constraint(batch_op.f(CK_STATUS), type_='check')

    op.execute(
        "UPDATE affiliate_conversions SET status = "
        "CASE WHEN account_id IS NULL THEN 'unattributed' ELSE 'attributed' END"
    )

    with op.batch_alter_table('affiliate_conversions', schema=None) as batch_op:
        batch_op.drop_column('booked_musd')
        batch_op.drop_column('reversed_at')
        batch_op.drop_column('approved_at')
        batch_op.create_check_constraint(batch_op.f(CK_STATUS), OLD_STATES)

    with op.batch_alter_table('affiliate_clicks', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(CK_OPENS), type_='check')
        batch_op.drop_constraint(batch_op.f(UQ_CLICK_HOUR), type_='unique')
        batch_op.drop_column('opens')
        batch_op.drop_column('hour')
