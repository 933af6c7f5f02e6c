"""The account page's links and once-only actions (`tokens.account_links`, docs/account.md):
only a token's SHA-256 is stored, a link opens its account for 15 minutes from when it was
sent, and a form key acts once, for its own account only."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tokens import ledger
from tokens.account_links import (
    FORM_KEY,
    LINK_TTL,
    AccountAction,
    AccountLink,
    Claim,
    claim_action,
    finish_action,
    forget_links,
    issue_link,
    new_form_key,
    open_link,
)
from tokens.errors import AccountLinkExpired, AccountLinkNotFound

NOV = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KEY = "0123456789abcdef" * 2


def account(session) -> int:
    return ledger.open_account(session, NOV).id


def actions(session) -> int:
    return session.scalar(select(func.count()).select_from(AccountAction))


def test_a_link_stores_only_the_hash_of_its_token(session):
    ana = account(session)
    issued = issue_link(session, ana, NOV)
    assert len(issued.token) == 43 and issued.expires_at == NOV + LINK_TTL
    row = session.scalars(select(AccountLink)).one()
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert (row.account_id, row.created_at, row.expires_at, row.opened_at) == (
        ana, NOV, NOV + timedelta(minutes=15), None)
    assert issued.token not in repr([getattr(row, c.key) for c in AccountLink.__table__.c])
    assert issue_link(session, ana, NOV).token != issued.token  # a fresh token each time
    with pytest.raises(AccountLinkNotFound):
        open_link(session, row.token_hash, NOV)  # what the table holds opens nothing


def test_a_link_opens_repeatedly_until_its_fifteen_minutes_end(session):
    ana = account(session)
    token = issue_link(session, ana, NOV).token
    assert open_link(session, token, NOV).account_id == ana
    last = NOV + LINK_TTL - timedelta(microseconds=1)
    assert open_link(session, token, last).opened_at == last  # a link preview, then the person
    with pytest.raises(AccountLinkExpired):
        open_link(session, token, NOV + LINK_TTL)
    session.expire_all()
    assert session.scalars(select(AccountLink.opened_at)).one() == last  # expired: unchanged


@pytest.mark.parametrize("token", ["", "short", "A" * 42, "A" * 44, "A" * 42 + ".",
                                   "A" * 43])
def test_anything_but_an_issued_token_is_not_found(session, token):
    issue_link(session, account(session), NOV)
    with pytest.raises(AccountLinkNotFound):
        open_link(session, token, NOV)


def test_a_form_key_acts_once_and_repeats_get_the_first_result(session):
    ana = account(session)
    assert claim_action(session, ana, KEY, "buy", NOV) == Claim(first=True)
    assert claim_action(session, ana, KEY, "buy", NOV) == Claim(first=False, result=None)
    finish_action(session, KEY, "/pay/abc")
    assert claim_action(session, ana, KEY, "buy", NOV) == Claim(first=False, result="/pay/abc")
    row = session.scalars(select(AccountAction)).one()
    assert (row.key, row.account_id, row.action, row.created_at) == (KEY, ana, "buy", NOV)
    finish_action(session, KEY, "/" + "x" * 300)
    assert len(row.result) == 255
    finish_action(session, "f" * 32, "/account")  # an unknown key: nothing happens
    assert actions(session) == 1


def test_another_accounts_key_is_refused_and_leaves_its_claim_alone(session):
    ana, ben = account(session), account(session)
    claim_action(session, ana, KEY, "delete", NOV)
    with pytest.raises(ValueError, match="no valid key"):
        claim_action(session, ben, KEY, "delete", NOV)
    assert session.scalars(select(AccountAction.account_id)).one() == ana


@pytest.mark.parametrize("key, action, message", [
    (KEY.upper(), "buy", "no valid key"), (KEY[:-1], "buy", "no valid key"),
    (KEY + "0", "buy", "no valid key"), ("", "buy", "no valid key"),
    (KEY, "refund", "unknown action"), (KEY, "", "unknown action"),
])
def test_bad_keys_and_actions_are_refused_and_store_nothing(session, key, action, message):
    with pytest.raises(ValueError, match=message):
        claim_action(session, account(session), key, action, NOV)
    assert actions(session) == 0


def test_new_form_keys_are_form_keys_and_differ():
    keys = {new_form_key() for _ in range(50)}
    assert len(keys) == 50 and all(FORM_KEY.fullmatch(key) for key in keys)


def test_forgetting_the_links_closes_every_one_of_that_account_only(session):
    ana, ben = account(session), account(session)
    tokens = [issue_link(session, ana, NOV).token for _ in range(2)]
    bens = issue_link(session, ben, NOV).token
    assert forget_links(session, ana) == 2
    for token in tokens:
        with pytest.raises(AccountLinkNotFound):
            open_link(session, token, NOV)
    assert open_link(session, bens, NOV).account_id == ben
    assert forget_links(session, ana) == 0
