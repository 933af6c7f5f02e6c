"""Fuzzing the provider webhooks (issue #8): Twilio inbound messages and status callbacks,
Stripe events and affiliate postbacks, built by tests/support/strategies.py from the real
fixtures, mutated, then signed validly (so every one passes the signature check) and posted,
on SQLite and on PostgreSQL.

Properties, for every input:

* never a 5xx;
* a success is well formed: TwiML whose root is `<Response>` (inbound), an empty 204
  (status), JSON (Stripe, affiliates), and the database is consistent after it: every message
  has a contact, every contact an account, and the ledger caches of each touched account
  agree with its entries (tests/tokens/ledger_checks.py);
* a refusal is a 4xx with a reason in the body, and nothing was written (every table compared
  row by row before and after);
* the same delivery again is a no-op.

Stripe: the one 500 the design wants (app/billing.py) is for a fetch from Stripe that fails
for a while, so that Stripe delivers the event again; with the stand-in up a fetch fails only
with a definite 404, which the handlers take as "not ours", so no 500 is right here. After a
failure `failed_payment_events` may have changed (the admin inbox records it on purpose),
nothing else.

The database lives for the whole test (all of its examples), so examples see each other's
effects: repeated MessageSids, a pack credited and then refunded, and so on.

Bugs: each one the fuzz found has a deterministic regression test at the end of this file
(all fixed). While a bug is open, its test is marked `xfail_bug(name)` (strict) and an entry in
`KNOWN_BUGS` lets the fuzz tests tolerate a 500 *raised where that bug raises* (any other 500
fails them), still checking that nothing was half written.

The examples are the same on every run (derandomized); `fuzz_settings` says how to hunt with
fresh ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, got_request_exception
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from app.extensions import bot_settings, db
from bot.models import Message
from testing.deployment import (
    AUTH_TOKEN,
    INBOUND_PATH,
    PUBLIC_BASE_URL,
    STRIPE_WEBHOOK_SECRET,
    post_signed,
)
from testing.payloads import sms
from testing.stripe_standin import StripeStandIn, sign_event
from tests.support import strategies as fuzz
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.affiliates import Click, issue_offer_links
from tokens.base import utcnow
from tokens.payments import Checkout, Subscription

ROOT = Path(__file__).resolve().parents[2]
STATUS_PATH = "/webhooks/twilio/status"
STRIPE_PATH = "/webhooks/stripe"
AFFILIATE_SECRET = "whsec-affiliate-fuzz-0123456789"
AFFILIATE_PATH = "/webhooks/affiliates/awin"
PHONE = "+16505558893"
PI = "pi_3Fuzz0000000000000000"
CHARGE = "ch_fuzz_1"
SUBSCRIPTION = "sub_fuzz_1"
CUSTOMER = "cus_fuzz_1"
# `failed_payment_events` records a failed Stripe event on purpose (the admin inbox); every
# other table must be as it was after a failure.
FAILURE_INBOX = "failed_payment_events"


def fuzz_settings(examples: int) -> settings:
    """Bounded, reproducible and quiet: `examples` per backend, the same ones every run
    (derandomized, so CI is stable and a failure replays), no deadline (a database is
    involved), nothing written to .hypothesis.

    For a longer hunt with fresh examples: `FUZZ_SCALE=20 FUZZ_RANDOM=1 pytest
    tests/system/test_fuzz_webhooks.py -k fuzzed --hypothesis-show-statistics`."""
    return settings(
        max_examples=examples * int(os.environ.get("FUZZ_SCALE") or 1), deadline=None,
        database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# --- known bugs (see the module docstring) ---------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """A 500 the fuzz found: where it is raised (the innermost frame of the project's code,
    "path:function"), what (the exception's class name, and text in its message), and why."""

    name: str
    where: tuple[str, ...]
    errors: tuple[str, ...]
    reason: str
    message: str = ""

    def matches(self, exc: BaseException) -> bool:
        frame = innermost_frame(exc)
        at = any(frame == where or (where.endswith(":*") and frame.startswith(where[:-1]))
                 for where in self.where)
        return at and type(exc).__name__ in self.errors and self.message in str(exc)


# Where the Stripe handlers query or store an id taken from the event (or a key made of one):
# anywhere in these modules ("path:*"); the exception's type and message pin the cause.
STRIPE_ID_SITES = ("tokens/payment_events.py:*", "tokens/ledger.py:*", "tokens/costs.py:*")
AFFILIATE_ID_SITES = ("tokens/affiliates.py:exists", "tokens/affiliates.py:record_conversion")

# The bugs the fuzz found (13: twelve 500s and one write from an unverified event) are fixed;
# their regression tests are at the end of this file. A new one goes here, with its test marked
# `xfail_bug(name)`, until it is fixed.
KNOWN_BUGS: dict[str, KnownBug] = {}


def xfail_bug(name: str) -> pytest.MarkDecorator:
    """The strict xfail of a known bug's regression test (it must fail by assertion)."""
    return pytest.mark.xfail(strict=True, raises=AssertionError,
                             reason=f"BUG {name}: {KNOWN_BUGS[name].reason}")


def project_frames(exc: BaseException) -> list[str]:
    """The traceback's frames in the project's own code (not the virtualenv, not tests), as
    "path:function", outermost first."""
    frames = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if not path.is_absolute() or ROOT not in path.parents or ".venv" in path.parts \
                or "tests" in path.parts:
            continue  # (compiled extensions name relative .pyx files)
        frames.append(f"{path.relative_to(ROOT)}:{frame.name}")
    return frames


def innermost_frame(exc: BaseException) -> str:
    frames = project_frames(exc)
    return frames[-1] if frames else "?"


def describe(exc: BaseException) -> str:
    """The exception and where the project raised it (for an assertion message)."""
    last = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(reversed(project_frames(exc)[-4:]))
    return (f"{type(exc).__name__}: {str(exc)[:300]} | project frames: {where} | last frames: "
            + "; ".join(f"{Path(f.filename).name}:{f.lineno}" for f in last))


class ServerErrors:
    """The exceptions behind the 500s of the requests made while recording."""

    def __init__(self) -> None:
        self.caught: list[BaseException] = []

    def record(self, sender: Any, exception: BaseException, **extra: Any) -> None:
        self.caught.append(exception)

    def known_bug(self, response: Any) -> KnownBug:
        """The known bug behind the 500 `response` (fails the test for any other)."""
        assert self.caught, f"a {response.status_code} without an exception"
        exc = self.caught[-1]
        for bug in KNOWN_BUGS.values():
            if bug.matches(exc):
                event(f"known bug tolerated: {bug.name}")
                return bug
        raise AssertionError(f"a new 500: {describe(exc)}")


@pytest.fixture
def server_errors() -> Iterator[ServerErrors]:
    errors = ServerErrors()
    got_request_exception.connect(errors.record, weak=False)
    try:
        yield errors
    finally:
        got_request_exception.disconnect(errors.record)


# --- the database, before and after ----------------------------------------------------------

Snapshot = dict[str, list[dict[str, Any]]]


def snapshot(*, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every row of every table (but `skip`), in primary-key order, read on a connection of
    its own (committed state, whatever the test's session holds)."""
    tables: Snapshot = {}
    with db.engine.connect() as connection:
        for table in db.metadata.sorted_tables:
            if table.name in skip:
                continue
            rows = connection.execute(select(table).order_by(*table.primary_key.columns))
            tables[table.name] = [dict(row._mapping) for row in rows]
    return tables


def assert_unchanged(before: Snapshot, after: Snapshot, what: str) -> None:
    changed = [name for name in after if before.get(name) != after[name]]
    assert not changed, f"{what} wrote to {changed}"


def without(tables: Snapshot, name: str) -> Snapshot:
    return {key: rows for key, rows in tables.items() if key != name}


def touched_accounts(before: Snapshot, after: Snapshot) -> set[int]:
    """Accounts whose row changed, or that got a new or changed ledger entry, hold or lot."""
    touched = {row["id"] for row in after["accounts"] if row not in before["accounts"]}
    for table in ("ledger_entries", "ledger_holds", "ledger_lots"):
        touched |= {row["account_id"] for row in after[table] if row not in before[table]}
    return touched


def assert_database_consistent(before: Snapshot, after: Snapshot) -> None:
    """References hold (SQLite does not enforce them) and the touched ledgers add up."""
    contacts = {row["id"]: row for row in after["contacts"]}
    accounts = {row["id"] for row in after["accounts"]}
    messages = {row["id"] for row in after["messages"]}
    for row in after["messages"]:
        assert row["contact_id"] in contacts, row
        assert row["in_reply_to_id"] is None or row["in_reply_to_id"] in messages, row
    for row in contacts.values():
        assert row["account_id"] in accounts, row
    for table in ("ledger_entries", "cost_entries", "revenue_entries", "checkouts",
                  "subscriptions", "affiliate_conversions"):
        for row in after[table]:
            assert row["account_id"] is None or row["account_id"] in accounts, (table, row)
    for account_id in touched_accounts(before, after):
        assert_consistent(db.session, account_id)
    db.session.rollback()


def reason_of(response: Any) -> str:
    return str(response.get_data(as_text=True))


def settled(response: Any) -> Any:
    """End the request as a server does: its app context's teardown closes the session.

    In these tests the request runs inside the test's app context, so its session is the
    test's, and Flask-SQLAlchemy's teardown does not run after each request; a request that
    failed would leave its transaction open (on SQLite, holding the write lock)."""
    db.session.remove()
    return response


def post_twilio(client: FlaskClient, form: dict[str, str], path: str = INBOUND_PATH) -> Any:
    return settled(post_signed(client, form, path=path))


def assert_refusal(response: Any, before: Snapshot, what: str) -> None:
    """A clear 4xx: a reason in the body, and nothing written."""
    assert 400 <= response.status_code < 500, (response.status_code, reason_of(response)[:300])
    assert reason_of(response).strip(), f"{what}: {response.status_code} without a reason"
    assert_unchanged(before, snapshot(), f"a {response.status_code} for {what}")


def assert_known_bug_wrote_nothing(response: Any, errors: ServerErrors, before: Snapshot,
                                   what: str, *, skip: tuple[str, ...] = ()) -> None:
    """A 500 of a known bug (any other fails): still, nothing but `skip` was written."""
    errors.known_bug(response)
    after = snapshot(skip=skip)
    assert_unchanged({k: v for k, v in before.items() if k not in skip}, after,
                     f"a 500 for {what}")


# --- Twilio ------------------------------------------------------------------------------------


def twiml_messages(response: Any) -> list[str]:
    """The texts of a TwiML answer (fails unless it is XML whose root is `<Response>` holding
    only `<Message>` elements)."""
    assert response.mimetype == "text/xml", response.mimetype
    root = ET.fromstring(response.data)
    assert root.tag == "Response"
    assert all(child.tag == "Message" for child in root), [child.tag for child in root]
    return [child.text or "" for child in root]


def short(form: dict[str, str]) -> dict[str, str]:
    """A form for an assertion message: long values cut."""
    return {k[:40]: (v if len(v) <= 80 else f"{v[:60]!r}...({len(v)} chars)")
            for k, v in form.items()}


@fuzz_settings(examples=60)
@given(form=fuzz.inbound_forms, repeat=st.integers(0, 3))
def test_fuzzed_inbound_forms_never_fail_and_never_half_write(client, server_errors, form,
                                                              repeat):
    before = snapshot()
    response = post_twilio(client, form)
    what = f"inbound form {short(form)}"
    if response.status_code >= 500:
        assert_known_bug_wrote_nothing(response, server_errors, before, what)
        return
    if response.status_code != 200:
        event(f"inbound {response.status_code}: {reason_of(response).strip()[:40]}")
        assert_refusal(response, before, what)
        return
    event("inbound 200")
    twiml_messages(response)
    after = snapshot()
    assert_database_consistent(before, after)
    if repeat == 0:
        # The same delivery again (Twilio retries after a timeout): answered, nothing charged.
        again = post_twilio(client, form)
        assert again.status_code == 200, reason_of(again)
        assert twiml_messages(again) == []
        assert_unchanged(after, snapshot(), f"a repeat of {what}")


def post_raw(client: FlaskClient, body: bytes, path: str) -> Any:
    """POST a raw form body, signed over the fields as the app decodes them."""
    content_type = "application/x-www-form-urlencoded"
    decoded = Request(EnvironBuilder(method="POST", data=body,
                                     content_type=content_type).get_environ()).form
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + path, decoded)
    return settled(client.post(path, data=body, content_type=content_type,
                               headers={"X-Twilio-Signature": signature}))


@fuzz_settings(examples=20)
@given(body=fuzz.raw_form_bodies())
def test_fuzzed_raw_form_bodies_never_fail(client, server_errors, body):
    before = snapshot()
    response = post_raw(client, body, INBOUND_PATH)
    what = f"raw body {body[:200]!r}"
    if response.status_code >= 500:
        assert_known_bug_wrote_nothing(response, server_errors, before, what)
    elif response.status_code == 200:
        twiml_messages(response)
        assert_database_consistent(before, snapshot())
    else:
        assert_refusal(response, before, what)


def ensure_outbound_replies(client: FlaskClient) -> None:
    """Paid replies (to "meal plan", SMS and WhatsApp) whose sids are the status fuzz's pool,
    so that callbacks find messages (once per test)."""
    session = db.session
    known = set(session.scalars(select(Message.message_sid).where(
        Message.message_sid.in_(fuzz.SID_POOL))))
    session.rollback()
    for i, sid in enumerate(fuzz.SID_POOL):
        if sid in known:
            continue
        sender = fuzz.SENDERS[i % len(fuzz.SENDERS)]
        fields = sms("meal plan", sender=sender)
        if i % 2:
            fields["From"] = "whatsapp:" + sender
        assert post_twilio(client, fields).status_code == 200
        reply = session.scalar(select(Message).where(Message.direction == "out")
                               .order_by(Message.id.desc()))
        assert reply is not None
        reply.message_sid, reply.status = sid, "queued"
        session.commit()


@fuzz_settings(examples=50)
@given(form=fuzz.status_forms)
def test_fuzzed_status_callbacks_never_fail_and_never_half_write(client, server_errors, form):
    ensure_outbound_replies(client)
    before = snapshot()
    response = post_twilio(client, form, STATUS_PATH)
    what = f"status form {short(form)}"
    if response.status_code >= 500:
        assert_known_bug_wrote_nothing(response, server_errors, before, what)
        return
    if response.status_code != 204:
        event(f"status {response.status_code}: {reason_of(response).strip()[:40]}")
        assert_refusal(response, before, what)
        return
    event("status 204")
    assert response.data == b""
    after = snapshot()
    assert_database_consistent(before, after)
    # The same callback again: kept once, changes nothing.
    again = post_twilio(client, form, STATUS_PATH)
    assert again.status_code == 204
    assert_unchanged(after, snapshot(), f"a repeat of {what}")


# --- Stripe ------------------------------------------------------------------------------------


def open_checkout(client: FlaskClient, text: str) -> None:
    """Text `text` (BUY or BUY PREMIUM) and open the pay link (a Checkout Session)."""
    reply = reason_of(post_twilio(client, sms(text, sender=PHONE)))
    match = re.search(re.escape(PUBLIC_BASE_URL) + r"(/pay/[A-Za-z0-9_-]+)", reply)
    assert match, reply
    assert settled(client.get(match.group(1))).status_code == 303


def stripe_targets(client: FlaskClient, stripe_api: StripeStandIn) -> fuzz.StripeTargets:
    """A pack checkout and a premium checkout of one person (opened once per test), and the
    subscription and the charge the stand-in knows."""
    session = db.session
    query = select(Checkout.mode, Checkout.external_id, Checkout.account_id).order_by(
        Checkout.id)
    rows = session.execute(query).all()
    if not rows:
        open_checkout(client, "BUY")
        open_checkout(client, "BUY PREMIUM")
        rows = session.execute(query).all()
    sessions = {mode: external_id for mode, external_id, _ in rows}
    account = session.get(ledger.Account, rows[0].account_id)
    assert account is not None
    public_id = account.public_id
    session.rollback()
    stripe_api.subscriptions[SUBSCRIPTION] = {
        "id": SUBSCRIPTION, "object": "subscription", "status": "active", "customer": CUSTOMER,
        "cancel_at_period_end": False, "metadata": {"account": public_id},
        "items": {"data": [{"current_period_end": int(utcnow().timestamp()) + 30 * 86400}]},
    }
    stripe_api.charges[CHARGE] = {"id": CHARGE, "object": "charge", "amount": 500,
                                  "payment_intent": PI}
    return fuzz.StripeTargets(
        pack_session=sessions["payment"], premium_session=sessions["subscription"],
        payment_intent=PI, charge=CHARGE, subscription=SUBSCRIPTION, customer=CUSTOMER,
        account_public_id=public_id)


def post_stripe(client: FlaskClient, body: bytes) -> Any:
    return settled(client.post(STRIPE_PATH, data=body, headers={
        "Stripe-Signature": sign_event(body, STRIPE_WEBHOOK_SECRET),
        "Content-Type": "application/json"}))


@fuzz_settings(examples=70)
@given(data=st.data(), escaped=st.integers(0, 9))
def test_fuzzed_stripe_events_never_fail_and_never_half_write(stripe_app, stripe_api,
                                                             twilio_api, server_errors, data,
                                                             escaped):
    client = stripe_app.test_client()
    targets = stripe_targets(client, stripe_api)
    stripe_event = data.draw(fuzz.stripe_events(targets), label="event")
    if stripe_event.get("id") == fuzz.FRESH:
        stripe_event["id"] = f"evt_fuzz_{uuid.uuid4().hex}"
    body = fuzz.stripe_body(stripe_event, ascii_only=escaped > 0)
    before = snapshot()
    sent_before = len(twilio_api.sent)
    response = post_stripe(client, body)
    what = f"event {body[:400]!r}"
    # No 500 is right here (see the module docstring; test_stripe_webhooks.py covers the
    # fetch that fails for a while).
    if response.status_code >= 500:
        assert_known_bug_wrote_nothing(response, server_errors, before, what,
                                       skip=(FAILURE_INBOX,))
        assert len(twilio_api.sent) == sent_before
        return
    if response.status_code != 200:
        event(f"stripe {response.status_code}: {reason_of(response).strip()[:30]}")
        assert_refusal(response, before, what)
        assert len(twilio_api.sent) == sent_before
        return
    answer = response.get_json()
    assert answer["received"] is True
    event(f"stripe 200: {str(answer.get('outcome', 'duplicate')).split(':')[0][:30]}")
    after = snapshot()
    assert_database_consistent(before, after)
    # The same delivery again: a 200 no-op, and no second notice.
    sent_after = len(twilio_api.sent)
    again = post_stripe(client, body)
    assert again.status_code == 200, reason_of(again)
    assert again.get_json() == {"received": True, "duplicate": True}
    assert_unchanged(after, snapshot(), f"a repeat of {what}")
    assert len(twilio_api.sent) == sent_after


# --- affiliate postbacks -----------------------------------------------------------------------


@pytest.fixture
def affiliate_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFILIATE_SECRET_AWIN", AFFILIATE_SECRET)


def ensure_click(app: Flask, client: FlaskClient) -> str:
    """A click id of ours (an offer link followed, once per test)."""
    session = db.session
    click_id = session.scalar(select(Click.click_id))
    if click_id is None:
        account_id = ledger.open_account(session).id
        catalog = bot_settings(app).catalog
        (_, link), *_ = issue_offer_links(session, account_id, "meal_plan", catalog, utcnow())
        session.commit()
        assert settled(client.get(f"/r/{link.token}")).status_code == 302
        click_id = session.scalar(select(Click.click_id))
    session.rollback()
    return str(click_id)


def post_affiliate(client: FlaskClient, body: bytes) -> Any:
    digest = hmac.new(AFFILIATE_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return settled(client.post(AFFILIATE_PATH, data=body, headers={
        "X-Signature": f"sha256={digest}", "Content-Type": "application/json"}))


@fuzz_settings(examples=50)
@given(data=st.data())
def test_fuzzed_affiliate_postbacks_never_fail_and_never_half_write(app, client,
                                                                   affiliate_secret,
                                                                   server_errors, data):
    click_id = ensure_click(app, client)
    value = data.draw(fuzz.postback_bodies((click_id, "unknown-click")), label="body")
    body = json.dumps(value).encode()
    before = snapshot()
    response = post_affiliate(client, body)
    what = f"postback {body[:300]!r}"
    if response.status_code >= 500:
        assert_known_bug_wrote_nothing(response, server_errors, before, what)
        return
    if response.status_code != 200:
        event(f"postback {response.status_code}: {reason_of(response).strip()[:30]}")
        assert_refusal(response, before, what)
        return
    event(f"postback 200 recorded={response.get_json()['recorded']}")
    assert response.get_json()["recorded"] in (True, False)
    after = snapshot()
    assert_database_consistent(before, after)
    again = post_affiliate(client, body)
    assert again.status_code == 200 and again.get_json()["recorded"] is False
    assert again.get_json()["status"] == response.get_json()["status"]
    assert_unchanged(after, snapshot(), f"a repeat of {what}")


# --- the bugs the fuzz found: minimal inputs ---------------------------------------------------
#
# Each failed (a 500, or for one a write) before its fix.


def assert_no_500_and_nothing_written(response: Any, before: Snapshot,
                                      skip: tuple[str, ...] = ()) -> None:
    assert response.status_code < 500, reason_of(response)[:300]
    assert reason_of(response).strip() or response.status_code == 204
    kept = {name: rows for name, rows in before.items() if name not in skip}
    if response.status_code >= 400:
        assert_unchanged(kept, snapshot(skip=skip), "the malformed input")


@pytest.mark.parametrize("num_media", ["²", "9" * 4301], ids=["superscript-two", "4301-digits"])
def test_bug_nummedia_that_isdigit_but_not_an_int_is_a_400(client, num_media):
    before = snapshot()
    response = post_twilio(client, sms("hello") | {"NumMedia": num_media})
    assert response.status_code == 400 and "NumMedia" in reason_of(response)
    assert_unchanged(before, snapshot(), "the malformed form")


@pytest.mark.parametrize("code", ["²", "9" * 4301], ids=["superscript-two", "4301-digits"])
def test_bug_errorcode_that_isdigit_but_not_an_int_is_a_400(client, code):
    form = fuzz.twilio_fixture_fields(fuzz.STATUS_FIXTURES[0]) | {"ErrorCode": code}
    before = snapshot()
    response = post_twilio(client, form, STATUS_PATH)
    assert response.status_code == 400 and "ErrorCode" in reason_of(response)
    assert_unchanged(before, snapshot(), "the malformed form")


def test_bug_errorcode_beyond_the_columns_range_is_not_a_500(client):
    form = fuzz.twilio_fixture_fields(fuzz.STATUS_FIXTURES[0]) | {
        "ErrorCode": "9223372036854775808"}
    before = snapshot()
    assert_no_500_and_nothing_written(post_twilio(client, form, STATUS_PATH), before)


def paid_pack(client: FlaskClient, stripe_api: StripeStandIn) -> fuzz.StripeTargets:
    """The fuzz's targets, with the pack bought (credited), paid by payment intent PI."""
    targets = stripe_targets(client, stripe_api)
    completed = fuzz.stripe_fixture(
        "stripe_ruby_mock/checkout.session.completed.payment_mode.json")
    completed["id"] = "evt_completed_1"
    completed["data"]["object"].update(id=targets.pack_session, amount_total=500,
                                       currency="usd", payment_status="paid",
                                       payment_intent=PI)
    response = post_stripe(client, fuzz.stripe_body(completed))
    assert response.get_json()["outcome"] == "credited 120 tokens"
    return targets


def post_malformed(client: FlaskClient, targets: fuzz.StripeTargets, path: str,
                   changes: dict[str, Any]) -> tuple[Any, Snapshot]:
    """Post the fixture event at `path`, about our objects, with `changes` to its object."""
    malformed = fuzz.stripe_fixture(path)
    malformed["id"] = "evt_malformed_1"
    obj = malformed["data"]["object"]
    if "checkout.session" in path:
        obj.update(id=targets.premium_session, mode="subscription", payment_status="paid",
                   subscription=SUBSCRIPTION, customer=CUSTOMER)
    elif "charge.refunded" in path:
        obj.update(id=CHARGE, payment_intent=PI, amount=500, amount_refunded=250)
    elif "dispute" in path:
        obj.update(id="dp_1", charge=CHARGE, payment_intent=PI, status="lost", amount=500)
    elif "invoice" in path:
        obj.update(id="in_1", subscription=SUBSCRIPTION, billing_reason="subscription_cycle",
                   amount_paid=500)
    obj.update(changes)
    before = snapshot()
    return post_stripe(client, fuzz.stripe_body(malformed)), before


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("field", ["id", "type"])
def test_bug_stripe_event_id_or_type_with_a_nul_is_not_a_500(stripe_app, stripe_api,
                                                             twilio_api, field):
    client = stripe_app.test_client()
    paid_pack(client, stripe_api)
    refund = fuzz.stripe_fixture("pay_rails/charge.refunded.json")
    refund["id"] = "evt_refund_1"
    refund[field] += "\x00"
    before = snapshot()
    assert_no_500_and_nothing_written(post_stripe(client, fuzz.stripe_body(refund)), before,
                                      (FAILURE_INBOX,))


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize(("path", "changes"), [
    ("pay_rails/charge.refunded.json", {"payment_intent": PI + "\x00"}),
    ("stripe_ruby_mock/checkout.session.completed.json", {"subscription": "sub_\x00"}),
    ("stripe_ruby_mock/checkout.session.completed.json", {"customer": "cus_\x00"}),
], ids=["refund-payment-intent", "checkout-subscription", "checkout-customer"])
def test_bug_stripe_ids_with_a_nul_are_not_a_500(stripe_app, stripe_api, twilio_api, path,
                                                 changes):
    client = stripe_app.test_client()
    response, before = post_malformed(client, paid_pack(client, stripe_api), path, changes)
    assert_no_500_and_nothing_written(response, before, (FAILURE_INBOX,))


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize(("path", "changes"), [
    ("stripe_ruby_mock/checkout.session.completed.json", {"customer": "cus_" + "x" * 300}),
    ("stripe_ruby_mock/checkout.session.completed.json", {"subscription": "sub_" + "x" * 300}),
    ("openapi_current_shape/charge.dispute.created.json",
     {"id": "dp_" + "x" * 200, "status": "needs_response"}),
], ids=["checkout-customer-304", "checkout-subscription-304", "dispute-id-203"])
def test_bug_stripe_ids_longer_than_their_columns_are_not_a_500(stripe_app, stripe_api,
                                                                twilio_api, path, changes):
    client = stripe_app.test_client()
    response, before = post_malformed(client, paid_pack(client, stripe_api), path, changes)
    assert_no_500_and_nothing_written(response, before, (FAILURE_INBOX,))


@pytest.mark.parametrize("body", [
    b'{"id": "evt_\\ud800", "object": "event", "type": "charge.refunded", '
    b'"data": {"object": {"id": "ch_1", "object": "charge"}}}',
    b'{"id": "evt_1", "object": "event", "type": "customer.subscription.updated", '
    b'"data": {"object": {"id": "sub_\\ud800", "object": "subscription"}}}',
], ids=["event-id", "subscription-id-fetched"])
def test_bug_stripe_ids_with_a_lone_surrogate_are_not_a_500(stripe_app, stripe_api, twilio_api,
                                                            body):
    client = stripe_app.test_client()
    stripe_targets(client, stripe_api)
    before = snapshot()
    assert_no_500_and_nothing_written(post_stripe(client, body), before, (FAILURE_INBOX,))


@pytest.mark.parametrize(("path", "changes"), [
    ("pay_rails/charge.refunded.json", {"amount_refunded": "abc"}),
    ("pay_rails/charge.refunded.json", {"amount_refunded": [250]}),
    ("stripe_ruby_mock/charge.dispute.closed.json", {"amount": "abc"}),
    ("stripe_ruby_mock/invoice.paid.json", {"amount_paid": "abc"}),
], ids=["refund-string", "refund-list", "dispute-string", "invoice-string"])
def test_bug_stripe_amounts_of_the_wrong_type_are_not_a_500(stripe_app, stripe_api, twilio_api,
                                                            path, changes):
    client = stripe_app.test_client()
    response, before = post_malformed(client, paid_pack(client, stripe_api), path, changes)
    assert_no_500_and_nothing_written(response, before, (FAILURE_INBOX,))


@pytest.mark.parametrize("amount", [1e300, 2**70], ids=["float-1e300", "int-2**70"])
def test_bug_stripe_invoice_amount_past_the_column_is_not_a_500(stripe_app, stripe_api,
                                                                twilio_api, amount):
    client = stripe_app.test_client()
    response, before = post_malformed(client, stripe_targets(client, stripe_api),
                                      "stripe_ruby_mock/invoice.paid.json",
                                      {"amount_paid": amount})
    assert_no_500_and_nothing_written(response, before, (FAILURE_INBOX,))


@pytest.mark.parametrize("key", ["lines", "items"])
def test_bug_stripe_invoice_lines_that_are_not_objects_are_not_a_500(stripe_app, stripe_api,
                                                                     twilio_api, key):
    client = stripe_app.test_client()
    targets = stripe_targets(client, stripe_api)
    changes: dict[str, Any] = {"current_period_end": None, "lines": {}, "items": {}}
    changes[key] = {"data": ["x"]}
    response, before = post_malformed(client, targets, "stripe_ruby_mock/invoice.paid.json",
                                      changes)
    assert_no_500_and_nothing_written(response, before, (FAILURE_INBOX,))


def fromtimestamp_raises_oserror(stamp: int) -> bool:
    """Whether this platform's `datetime.fromtimestamp` fails with OSError for `stamp` (glibc
    does, with EOVERFLOW; others may raise ValueError or OverflowError, which are caught)."""
    try:
        datetime.fromtimestamp(stamp, UTC)
    except OSError:
        return True
    except (ValueError, OverflowError):
        return False
    return False


@pytest.mark.skipif(not fromtimestamp_raises_oserror(10**18),
                    reason="datetime.fromtimestamp(10**18) raises no OSError on this platform")
@pytest.mark.parametrize("stamp", [10**18, 67_768_036_191_676_800])
def test_bug_stripe_period_end_beyond_time_t_is_not_a_500(stripe_app, stripe_api, twilio_api,
                                                          stamp):
    client = stripe_app.test_client()
    stripe_targets(client, stripe_api)
    # No subscription id: nothing is fetched, so the handler reads the event's own object.
    event = fuzz.stripe_fixture("stripe_ruby_mock/customer.subscription.created.json")
    event["id"] = "evt_malformed_1"
    event["data"]["object"].update(id=None, current_period_end=stamp)
    before = snapshot()
    assert_no_500_and_nothing_written(post_stripe(client, fuzz.stripe_body(event)), before,
                                      (FAILURE_INBOX,))


def test_bug_stripe_subscription_event_without_an_id_stores_nothing(stripe_app, stripe_api,
                                                                    twilio_api):
    client = stripe_app.test_client()
    targets = stripe_targets(client, stripe_api)
    event = fuzz.stripe_fixture("stripe_ruby_mock/customer.subscription.created.json")
    event["id"] = "evt_no_object_id"
    event["data"]["object"].update(id=None, status="active", current_period_end=2_000_000_000,
                                   metadata={"account": targets.account_public_id})
    response = post_stripe(client, fuzz.stripe_body(event))
    assert response.status_code < 500
    assert db.session.scalars(select(Subscription)).all() == []


def conversion(**changes: str) -> bytes:
    body = {"conversion_id": "AW-1", "click_id": "c1", "sale_amount": "1.00",
            "commission": "0.10"}
    return json.dumps(body | changes).encode()


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("key", ["conversion_id", "click_id"])
def test_bug_affiliate_postback_with_a_nul_is_a_400(app, client, affiliate_secret, key):
    before = snapshot()
    response = post_affiliate(client, conversion(**{key: "AW\x00"}))
    assert response.status_code == 400
    assert_no_500_and_nothing_written(response, before)


@pytest.mark.parametrize("key", ["conversion_id", "click_id"])
def test_bug_affiliate_postback_with_a_lone_surrogate_is_a_400(app, client, affiliate_secret,
                                                               key):
    before = snapshot()
    response = post_affiliate(client, conversion(**{key: "AW\ud800"}))
    assert response.status_code == 400
    assert_no_500_and_nothing_written(response, before)
