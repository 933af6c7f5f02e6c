"""`tokens.admin` called directly: admin users (username rules, argon2id hashes, logins, wrong
password counting, password changes that end sessions) and the operator's actions on an
account (grants, adjustments, suspensions, level overrides): each writes its effect and one
audit row, a repeat with the same key is a no-op, a refusal writes nothing, and the ledger
stays consistent (tests/tokens/ledger_checks.py). No HTTP: tests/app/test_admin_*.py cover
the pages; the throttle's arithmetic is in tests/app/test_admin_login_guard.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from tests.tokens.ledger_checks import assert_consistent
from tokens import admin, ledger, levels
from tokens.admin import AdminAction, AdminError, AdminUser
from tokens.errors import InsufficientTokens, InvalidAmount, UnknownAccount

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"


@pytest.fixture
def alice(session) -> AdminUser:
    """An admin with a real password (one argon2id hash: tens of milliseconds)."""
    return admin.create_user(session, "alice", PASSWORD, NOW)


@pytest.fixture
def actor(session) -> admin.Actor:
    """The admin acting on accounts (stored directly: their password plays no part)."""
    user = AdminUser(username="alice", password_hash="$argon2id$unused", created_at=NOW)
    session.add(user)
    session.flush()
    return admin.Actor(user.id, user.username)


@pytest.fixture
def account_id(session) -> int:
    account_id = ledger.open_account(session, NOW).id
    ledger.grant(session, account_id, 100, key=f"start:{account_id}", now=NOW)
    session.commit()
    return account_id


def actions(session, account_id: int | None = None) -> list[tuple[str, str]]:
    query = select(AdminAction.action, AdminAction.detail).order_by(AdminAction.id)
    if account_id is not None:
        query = query.where(AdminAction.account_id == account_id)
    return [tuple(row) for row in session.execute(query)]


def available(session, account_id: int) -> int:
    session.expire_all()
    return ledger.balance(session, account_id, NOW).available


# --- admin users -----------------------------------------------------------------------------


def test_a_new_admin_is_stored_lower_case_with_an_argon2id_hash(session):
    user = admin.create_user(session, "  Alice.Ops ", PASSWORD, NOW)
    session.commit()
    assert user.username == "alice.ops"
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert admin.find_user(session, "ALICE.OPS").id == user.id
    assert admin.authenticate(session, "Alice.Ops", PASSWORD, NOW).id == user.id
    assert user.last_login_at == NOW
    assert admin.authenticate(session, "alice.ops", PASSWORD + "!", NOW) is None
    assert admin.authenticate(session, "nobody", PASSWORD, NOW) is None


def test_bad_usernames_and_short_passwords_are_refused(session):
    for username, password, why in [("a", PASSWORD, "username"),
                                    ("-alice", PASSWORD, "username"),
                                    ("alice smith", PASSWORD, "username"),
                                    ("alice", "short", "at least 12")]:
        with pytest.raises(AdminError, match=why):
            admin.create_user(session, username, password, NOW)
    assert session.scalar(select(AdminUser)) is None


def test_a_taken_username_is_refused_whatever_its_case(session):
    admin.create_user(session, "alice", PASSWORD, NOW)
    with pytest.raises(AdminError, match="taken"):
        admin.create_user(session, "ALICE", PASSWORD + "2", NOW)
    session.commit()
    assert len(session.scalars(select(AdminUser)).all()) == 1


def test_a_new_password_replaces_the_old_and_ends_every_session(session, alice):
    before = admin.find_user(session, "alice").session_epoch
    user = admin.set_password(session, "Alice", "another long password")
    assert user.session_epoch == before + 1
    assert admin.authenticate(session, "alice", PASSWORD, NOW) is None
    assert admin.authenticate(session, "alice", "another long password", NOW) is not None
    admin.end_sessions(session, user.id)
    assert user.session_epoch == before + 2
    with pytest.raises(AdminError, match="at least"):
        admin.set_password(session, "alice", "short")
    with pytest.raises(AdminError, match="no admin"):
        admin.set_password(session, "bob", "another long password")


def test_wrong_passwords_count_until_a_login_or_an_unlock(session, alice):
    user = admin.find_user(session, "alice")
    assert [admin.record_failed_login(session, user, NOW + timedelta(seconds=s))
            for s in range(4)] == [1, 2, 3, 4]
    assert admin.login_wait_seconds(user.failed_logins, user.last_failed_at,
                                    NOW + timedelta(seconds=3)) == 2
    admin.unlock(session, "alice")
    assert (user.failed_logins, user.last_failed_at) == (0, None)
    admin.record_failed_login(session, user, NOW)
    assert admin.verify_login(session, user, PASSWORD, NOW + timedelta(minutes=1))
    assert (user.failed_logins, user.last_failed_at) == (0, None)
    with pytest.raises(AdminError):
        admin.unlock(session, "bob")


def test_a_hash_with_older_parameters_is_replaced_at_the_next_login(session, alice):
    user = admin.find_user(session, "alice")
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    user.password_hash = weak
    assert not admin.verify_login(session, user, "wrong password!", NOW)
    assert user.password_hash == weak  # a wrong password changes nothing
    assert admin.verify_login(session, user, PASSWORD, NOW)
    assert user.password_hash != weak and user.password_hash.startswith("$argon2id$")
    assert admin.verify_login(session, user, PASSWORD, NOW)  # the new hash verifies


# --- grants and adjustments ------------------------------------------------------------------


def test_a_grant_posts_bonus_tokens_once_per_key_with_one_audit_row(session, actor, account_id):
    posted = admin.grant_tokens(session, actor, account_id, 50, " outage refund ", key="n1",
                                now=NOW)
    again = admin.grant_tokens(session, actor, account_id, 50, "outage refund", key="n1",
                               now=NOW)
    session.commit()
    assert not posted.replayed and again.replayed
    assert posted.by_bucket == (("bonus", 50),)
    assert available(session, account_id) == 150
    assert actions(session, account_id) == [("grant", "+50 tokens: outage refund")]
    entry = session.get(ledger.LedgerEntry, posted.entry_ids[0])
    assert (entry.actor, entry.memo, entry.idempotency_key) == (
        "admin:alice", "outage refund", "admin-grant:n1")
    assert_consistent(session, account_id, NOW)


def test_a_grant_without_a_reason_or_to_nobody_posts_nothing(session, actor, account_id):
    with pytest.raises(AdminError, match="reason"):
        admin.grant_tokens(session, actor, account_id, 50, "  ", key="n2", now=NOW)
    with pytest.raises(InvalidAmount):
        admin.grant_tokens(session, actor, account_id, 0, "zero", key="n3", now=NOW)
    with pytest.raises(UnknownAccount):
        admin.grant_tokens(session, actor, account_id + 999, 5, "nobody", key="n4", now=NOW)
    session.rollback()
    assert available(session, account_id) == 100
    assert actions(session) == []


def test_adjustments_go_both_ways_but_never_below_what_is_available(session, actor,
                                                                    account_id):
    admin.adjust_tokens(session, actor, account_id, -30, "duplicate grant", key="a1", now=NOW)
    admin.adjust_tokens(session, actor, account_id, 5, "rounding", key="a2", now=NOW)
    assert admin.adjust_tokens(session, actor, account_id, -30, "duplicate grant", key="a1",
                               now=NOW).replayed
    session.commit()
    assert available(session, account_id) == 75
    with pytest.raises(InsufficientTokens):
        admin.adjust_tokens(session, actor, account_id, -76, "too much", key="a3", now=NOW)
    with pytest.raises(InvalidAmount):
        admin.adjust_tokens(session, actor, account_id, -1, " ", key="a4", now=NOW)
    session.rollback()
    assert available(session, account_id) == 75
    assert actions(session, account_id) == [("adjust", "-30 tokens: duplicate grant"),
                                             ("adjust", "+5 tokens: rounding")]
    assert_consistent(session, account_id, NOW)


# --- suspensions and overrides ---------------------------------------------------------------


def test_suspend_and_unsuspend_are_recorded_once_each(session, actor, account_id):
    admin.suspend(session, actor, account_id, " abuse report ", NOW)
    admin.suspend(session, actor, account_id, "again", NOW + timedelta(hours=1))  # no-op
    session.commit()
    account = session.get(ledger.Account, account_id)
    assert (account.suspended_at, account.suspension_reason) == (NOW, "abuse report")
    admin.unsuspend(session, actor, account_id, NOW + timedelta(days=1))
    admin.unsuspend(session, actor, account_id, NOW + timedelta(days=2))  # no-op
    session.commit()
    session.refresh(account)
    assert (account.suspended_at, account.suspension_reason) == (None, None)
    assert actions(session, account_id) == [("suspend", "abuse report"), ("unsuspend", "")]
    with pytest.raises(AdminError, match="reason"):
        admin.suspend(session, actor, account_id, "", NOW)
    with pytest.raises(UnknownAccount):
        admin.unsuspend(session, actor, account_id + 999, NOW)


def test_a_level_override_holds_until_its_expiry_and_can_be_cleared(session, actor,
                                                                    account_id):
    until = NOW + timedelta(days=7)
    admin.override_level(session, actor, account_id, levels.BASIC, until, "cost spike", NOW)
    session.commit()
    assert levels.override_of(session, account_id, NOW + timedelta(days=6)) == levels.BASIC
    assert levels.override_of(session, account_id, until) is None  # ends at the expiry
    admin.override_level(session, actor, account_id, None, None, "resolved", NOW)
    admin.override_level(session, actor, account_id, None, None, "again", NOW)  # nothing set
    session.commit()
    assert levels.override_of(session, account_id, NOW) is None
    assert actions(session, account_id) == [
        ("override", "BASIC until 2026-11-28 12:00 UTC: cost spike"),
        ("override", "cleared: resolved")]


def test_an_override_needs_a_known_level_a_future_expiry_and_a_reason(session, actor,
                                                                       account_id):
    for level, until, reason, why in [("GOLD", NOW + timedelta(days=1), "x", "unknown level"),
                                      (levels.NORMAL, None, "x", "expiry"),
                                      (levels.NORMAL, NOW, "x", "expiry"),
                                      (levels.NORMAL, NOW + timedelta(days=1), " ", "reason")]:
        with pytest.raises(AdminError, match=why):
            admin.override_level(session, actor, account_id, level, until, reason, NOW)
    assert levels.override_of(session, account_id, NOW) is None
    assert actions(session, account_id) == []
