"""The person's own account page (issue #20, docs/account.md), through Flask's test client:
ACCOUNT's link, the page session, what the page shows and never shows, and every action
(CSRF, once per form key, clear 4xx pages)."""

from __future__ import annotations

import html
import logging
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.account import ACCOUNT_CSP, masked_number, texts
from bot.models import Contact, ErasedContact, Message
from testing.deployment import post_signed
from testing.payloads import sms
from tokens import account_links, ledger
from tokens.account_links import AccountAction, AccountLink
from tokens.auto_topup import AutoTopup
from tokens.base import utcnow
from tokens.payments import PayLink

PHONE = "+16505558893"
OTHER = "+15550009999"
LINK = re.compile(r"https?://[^\s<]+/account/link/([A-Za-z0-9_-]{43})")
FIELD = re.compile(r'name="(csrf_token|key)" value="([^"]+)"')


def ask_account(client, body: str = "ACCOUNT", sender: str = PHONE) -> str:
    """Text ACCOUNT (or CUENTA) and return the link's token from the reply."""
    reply = post_signed(client, sms(body, sender=sender)).get_data(as_text=True)
    found = LINK.search(html.unescape(reply))
    assert found, reply
    return found.group(1)


def open_page(client, token: str) -> str:
    opened = client.get(f"/account/link/{token}")
    assert opened.status_code == 303 and opened.headers["Location"].endswith("/account")
    page = client.get("/account")
    assert page.status_code == 200
    return page.get_data(as_text=True)


def form_fields(page: str, action: str) -> dict[str, str]:
    """The hidden csrf_token and key of the first form posting to `action`."""
    start = page.index(f'action="{action}"')
    return dict(FIELD.findall(page[start:page.index("</form>", start)]))


def account_of(session, phone: str = PHONE) -> int:
    return session.scalars(select(Contact.account_id).where(Contact.address == phone)).one()


BODY = "vegetarian meal plan 1800 calories"


def test_account_replies_with_a_link_that_opens_this_persons_page(client, session):
    post_signed(client, sms(BODY))
    token = ask_account(client)
    account_id = account_of(session)
    stored = session.scalars(select(AccountLink)).one()
    assert stored.account_id == account_id and token not in stored.token_hash
    assert stored.token_hash == account_links.token_hash(token)
    assert stored.expires_at - stored.created_at == timedelta(minutes=15)

    page = open_page(client, token)
    balance = ledger.balance(session, account_id)
    assert re.search(rf'id="available">{balance.available}<', page)
    assert BODY not in page.lower() and "1800" not in page  # no message text
    assert PHONE not in page and PHONE.lstrip("+") not in page and "5558893" not in page
    assert masked_number(PHONE) in page  # +1 ••• ••• 8893
    assert 'data-intent="meal_plan"' in page
    response = client.get("/account")
    assert response.headers["Content-Security-Policy"] == ACCOUNT_CSP
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in page and "style=" not in page


def test_cuenta_answers_in_spanish_and_the_page_is_in_spanish(client):
    post_signed(client, sms("plan de comidas vegetariano para 3 días"))
    reply = post_signed(client, sms("CUENTA")).get_data(as_text=True)
    assert "Tu cuenta" in reply and "15 minutos" in reply
    token = LINK.search(html.unescape(reply)).group(1)
    page = open_page(client, token)
    assert '<html lang="es">' in page and "Saldo" in page


def test_bad_expired_and_missing_sessions_get_clear_pages(client, session):
    assert client.get("/account/link/" + "x" * 43).status_code == 404
    assert client.get("/account/link/short").status_code == 404
    assert "ACCOUNT" in client.get("/account/link/nope").get_data(as_text=True)
    token = ask_account(client)
    link = session.scalars(select(AccountLink)).one()
    link.expires_at = utcnow() - timedelta(seconds=1)
    session.commit()
    expired = client.get(f"/account/link/{token}")
    assert expired.status_code == 410 and "expired" in expired.get_data(as_text=True)
    signed_out = client.get("/account")
    assert signed_out.status_code == 401 and "ACCOUNT" in signed_out.get_data(as_text=True)
    assert client.post("/account/language", data={"lang": "es"}).status_code == 400  # no CSRF


def test_another_persons_link_shows_only_that_account(client, session):
    mine = ask_account(client)
    theirs = ask_account(client, sender=OTHER)
    open_page(client, mine)
    page = open_page(client, theirs)  # the same browser: the page session is replaced
    assert masked_number(OTHER) in page and masked_number(PHONE) not in page


def test_actions_need_csrf_and_act_once_per_form_key(client, session):
    page = open_page(client, ask_account(client))
    fields = form_fields(page, "/account/buy")
    no_csrf = client.post("/account/buy", data={"key": fields["key"], "item": "starter"})
    assert no_csrf.status_code == 400
    first = client.post("/account/buy", data={**fields, "item": "starter"})
    second = client.post("/account/buy", data={**fields, "item": "starter"})
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"].startswith("/pay/")
    assert second.headers["Location"] == first.headers["Location"]
    assert session.scalar(select(func.count()).select_from(AccountAction)) == 1
    assert session.scalar(select(func.count()).select_from(PayLink)) == 1
    paid = client.get(first.headers["Location"])
    assert paid.status_code == 303 and "/sandbox/checkout/" in paid.headers["Location"]
    fresh = client.get("/account").get_data(as_text=True)
    bad = client.post("/account/buy", data={**form_fields(fresh, "/account/buy"),
                                            "item": "no-such-pack"})
    assert bad.status_code == 400
    bad_key = client.post("/account/buy", data={"csrf_token": fields["csrf_token"],
                                                "key": "not-a-key", "item": "starter"})
    assert bad_key.status_code == 400


def test_premium_from_the_page_opens_the_subscription_checkout(client, session):
    page = open_page(client, ask_account(client))
    start = page.index('value="premium"')
    fields = dict(FIELD.findall(page[page.rindex("<form", 0, start):start]))
    done = client.post("/account/buy", data={**fields, "item": "premium"})
    assert done.status_code == 303
    link = session.scalars(select(PayLink)).one()
    assert link.purpose == "premium" and done.headers["Location"] == f"/pay/{link.token}"


def test_auto_topup_on_without_a_card_goes_to_the_consent_checkout_and_off_stops_it(
        client, session):
    page = open_page(client, ask_account(client))
    account_id = account_of(session)
    on = client.post("/account/auto-topup", data={**form_fields(page, "/account/auto-topup"),
                                                  "on": "1"})
    assert on.status_code == 303 and on.headers["Location"].startswith("/pay/")
    link = session.scalars(select(PayLink)).one()
    assert link.purpose == "auto_topup"
    row = session.get(AutoTopup, account_id)
    assert row is not None and row.awaiting_card and not row.enabled
    page = client.get("/account").get_data(as_text=True)
    assert 'data-state="waiting"' in page
    off = client.post("/account/auto-topup", data={**form_fields(page, "/account/auto-topup"),
                                                   "on": "0"})
    assert off.status_code == 303 and off.headers["Location"].endswith("/account")
    session.expire_all()
    row = session.get(AutoTopup, account_id)
    assert row is not None and not row.awaiting_card and not row.enabled
    assert "Auto top-up is off." in client.get("/account").get_data(as_text=True)


def test_language_is_chosen_for_every_number_of_the_account(client, session):
    page = open_page(client, ask_account(client))
    done = client.post("/account/language", data={**form_fields(page, "/account/language"),
                                                   "lang": "es"})
    assert done.status_code == 303
    contact = session.scalars(select(Contact)).one()
    session.refresh(contact)
    assert contact.language == "es" and contact.language_chosen_at is not None
    page = client.get("/account").get_data(as_text=True)
    assert '<html lang="es">' in page and "Idioma guardado." in page
    bad = client.post("/account/language", data={**form_fields(page, "/account/language"),
                                                  "lang": "fr"})
    assert bad.status_code == 400


def test_delete_my_data_forgets_the_numbers_keeps_the_ledger_and_ends_the_session(
        client, session):
    post_signed(client, sms("meal plan"))
    token = ask_account(client)
    account_id = account_of(session)
    posted = ledger.balance(session, account_id).posted
    open_page(client, token)
    confirm = client.get("/account/delete")
    assert confirm.status_code == 200
    fields = form_fields(confirm.get_data(as_text=True), "/account/delete")
    done = client.post("/account/delete", data=fields)
    assert done.status_code == 303 and "/account/deleted" in done.headers["Location"]
    again = client.post("/account/delete", data=fields)  # a double submit
    assert again.status_code == 303 and again.headers["Location"] == done.headers["Location"]
    kept = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "accounting" in kept
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Contact)) == 0
    assert session.scalar(select(func.count()).select_from(Message)) == 0
    assert session.scalars(select(ErasedContact.account_id)).one() == account_id
    assert ledger.balance(session, account_id).posted == posted
    assert session.scalar(select(func.count()).select_from(AccountLink)) == 0
    assert client.get("/account").status_code == 401
    assert client.get(f"/account/link/{token}").status_code == 404


def test_the_token_is_in_no_log_line(client, caplog):
    caplog.set_level(logging.DEBUG)
    token = ask_account(client)
    open_page(client, token)
    client.get(f"/account/link/{token}?x=1")
    assert token not in caplog.text
    from app.logs import mask_bearer

    assert mask_bearer(f"GET /account/link/{token} HTTP/1.1") == \
        "GET /account/link/*** HTTP/1.1"
    assert mask_bearer("GET /account HTTP/1.1") == "GET /account HTTP/1.1"


def test_the_page_texts_have_both_languages():
    words = texts()
    assert words and all(set(values) == {"en", "es"} for values in words.values())


@pytest.mark.parametrize("address, shown", [
    ("+16505558893", "+1 ••• ••• 8893"),
    ("wa:447700900123", "WhatsApp ••• 0123"),
])
def test_numbers_are_masked(address, shown):
    assert masked_number(address) == shown


def test_the_page_shows_the_remembered_allergies_and_forgets_them(client, session):
    page = open_page(client, ask_account(client))
    assert "None noted." in page
    post_signed(client, sms("I'm allergic to peanuts"))
    page = client.get("/account").get_data(as_text=True)
    assert "Every answer leaves out: peanuts." in page
    done = client.post("/account/allergies",
                       data=form_fields(page, "/account/allergies"))
    assert done.status_code == 303
    contact = session.scalars(select(Contact)).one()
    session.refresh(contact)
    assert contact.allergies is None
    page = client.get("/account").get_data(as_text=True)
    assert "Your allergies are forgotten." in page and "None noted." in page
    # Without the form's CSRF token nothing is forgotten.
    post_signed(client, sms("I'm allergic to shellfish"))
    assert client.post("/account/allergies", data={}).status_code == 400
    session.refresh(contact)
    assert contact.allergies == "shellfish"
