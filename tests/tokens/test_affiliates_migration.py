"""Migration 0011 on existing rows (issue #16), on SQLite and PostgreSQL: clicks of one link
in one hour fold into the first (with the count of openings), and every existing conversion,
booked when reported, becomes approved at its report; downgrade restores attribution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from flask_migrate import downgrade, upgrade
from sqlalchemy import bindparam, text

from app.extensions import bot_settings, db
from tokens.affiliates import record_click
from tokens.base import UTCDateTime

T0 = datetime(2026, 11, 21, 12, 5, tzinfo=UTC)


def rows(sql: str) -> list[tuple]:
    with db.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text(sql)).all()]


def insert(connection, sql: str, **values) -> None:
    """Run `sql`, binding datetimes as the models do (SQLite stores them as text)."""
    statement = text(sql).bindparams(*[bindparam(k, type_=UTCDateTime())
                                       for k, v in values.items() if isinstance(v, datetime)])
    connection.execute(statement, values)


def test_0011_migrates_existing_clicks_and_conversions(app):
    downgrade(revision="0010")
    db.engine.dispose()
    with db.engine.begin() as connection:
        insert(connection, "INSERT INTO accounts (id, public_id, created_at)"
               " VALUES (1, 'acct-1', :t)", t=T0)
        insert(connection, "INSERT INTO offer_links (id, token, account_id, partner_code,"
               " intent, created_at, expires_at) VALUES (1, 'tok', 1, 'freshbox', 'meal_plan',"
               " :t, :e)", t=T0, e=T0 + timedelta(days=30))
        for n, minute, hour in ((1, 5, 12), (2, 40, 12), (3, 59, 12), (4, 0, 13)):
            insert(connection, "INSERT INTO affiliate_clicks (id, click_id, offer_link_id,"
                   " account_id, partner_code, created_at) VALUES (:n, :c, 1, 1, 'freshbox',"
                   " :t)", n=n, c=f"click-{n}", t=T0.replace(hour=hour, minute=minute))
        for n, account in ((1, 1), (2, None)):
            insert(connection, "INSERT INTO affiliate_conversions (id, network, conversion_id,"
                   " click_id, account_id, partner_code, sale_amount_cents, commission_musd,"
                   " status, created_at) VALUES (:n, 'awin', :c, 'click-1', :a, :p, 1000,"
                   " 1000000, :s, :t)", n=n, c=f"conv-{n}", a=account,
                   p="freshbox" if account else None,
                   s="attributed" if account else "unattributed", t=T0)
    upgrade(revision="0011")
    db.engine.dispose()
    clicks = rows("SELECT id, hour IS NOT NULL, opens FROM affiliate_clicks ORDER BY id")
    assert [tuple(map(int, r)) for r in clicks] == [(1, 1, 3), (2, 0, 1), (3, 0, 1),
                                                     (4, 1, 1)]
    conversions = rows("SELECT conversion_id, status, approved_at IS NOT NULL,"
                       " reversed_at IS NULL, booked_musd FROM affiliate_conversions"
                       " ORDER BY id")
    assert [(c, s, bool(a), bool(r), int(b)) for c, s, a, r, b in conversions] == [
        ("conv-1", "approved", True, True, 1_000_000), ("conv-2", "approved", True, True, 0)]

    downgrade(revision="0010")
    db.engine.dispose()
    assert rows("SELECT conversion_id, status FROM affiliate_conversions ORDER BY id") == [
        ("conv-1", "attributed"), ("conv-2", "unattributed")]
    assert len(rows("SELECT id FROM affiliate_clicks")) == 4
    upgrade()
    db.engine.dispose()
    # A new opening in a migrated click's hour counts on it (the stored hour matches).
    catalog = bot_settings(app).catalog
    url = record_click(db.session, "tok", catalog, T0.replace(minute=30))
    db.session.commit()
    assert parse_qs(urlsplit(url).query)["subid"] == ["click-1"]
    assert rows("SELECT opens FROM affiliate_clicks WHERE id = 1") == [(4,)]
