"""The admin pages in a real browser (issue #7): Playwright drives Debian's chromium against the
app served on a loopback port.

The person seen in the pages has a real history, made by the real router in queued mode (Redis,
an RQ worker, and local stand-ins for OpenAI and Twilio): the monthly allowance, a priced answer
whose hold the worker captured (with its LLM and messaging costs), a second priced message whose
hold is still pending, and a goodwill grant. The test logs in, opens the overview, the people
list and the person's page, checks what they show (and what they must not: the full phone
number, message bodies), grants tokens through the page's form, and saves full-page screenshots
to `$TEST_ARTIFACTS_DIR` (default `artifacts/screenshots/`).

Without chromium the tests are skipped, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from app.extensions import db
from bot.contacts import mask_address
from bot.models import Contact, Message
from testing.admin import PASSWORD, make_admin
from testing.deployment import post_signed, queued_environment, routed_not_answered, run_worker
from testing.openai_standin import OpenAIStandIn
from testing.payloads import sms
from testing.redis_server import RedisServer
from testing.twilio_standin import TwilioStandIn
from tests.support.browser import (
    TIMEOUT_MS,
    LiveServer,
    artifacts_dir,
    needs_chromium,
)
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger

PHONE = "+16505558893"
CAPTURED_BODY = "vegetarian meal plan 1800 calories"
PENDING_BODY = "keto grocery list for the week"
LLM_REPLY = "Day 1: oats with walnuts, lentil soup, tofu stir-fry. About 1800 kcal."
GOODWILL = 20
KPI_LABELS = ("Revenue", "COGS", "Gross margin", "ARPU", "Active people")
CHARTS = 5

pytestmark = [
    # One backend is enough here: the pages' queries run on both in the test-client tests
    # (the browser test passes on SQLite too; it just doubles the time).
    pytest.mark.backends("postgresql"),
    needs_chromium,
]


# --- fixtures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    account_id: int
    phone: str
    bodies: tuple[str, ...]


@pytest.fixture
def seeded(
    make_app, redis_srv: RedisServer, twilio_api: TwilioStandIn,
    openai_api: OpenAIStandIn,
) -> Iterator[tuple[Flask, Person]]:
    """The app as deployed (Redis + RQ, OpenAI, Twilio REST, all local) with an admin "alice"
    and one person with a history, all committed before any page is served."""
    connection = redis.Redis.from_url(redis_srv.url)
    connection.flushdb()
    connection.close()
    application = make_app(**queued_environment(redis_srv.url, twilio_api, openai_api))
    openai_api.reply = LLM_REPLY
    with application.app_context():
        make_admin()
        client = application.test_client()
        assert post_signed(client, sms(CAPTURED_BODY, sender=PHONE)).status_code == 200
        assert run_worker(application) == 1  # answered: the hold is captured
        routed_not_answered(application, db.session, sms(PENDING_BODY, sender=PHONE))
        account_id = db.session.scalars(
            select(Contact.account_id).where(Contact.address == PHONE)).one()
        ledger.grant(db.session, account_id, GOODWILL, key=f"grant:goodwill:{account_id}",
                     memo="goodwill for the outage", actor="seed")
        db.session.commit()
        held = ledger.balance(db.session, account_id).held
        assert held > 0, "the second priced message should still hold tokens"
        db.session.remove()
    try:
        yield application, Person(account_id, PHONE, (CAPTURED_BODY, PENDING_BODY, LLM_REPLY))
    finally:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def page(browser: Any, live: LiveServer, problems: list[str]) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page on the live server."""
    context = browser.new_context(base_url=live.base_url,
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    opened = context.new_page()

    def on_console(message: Any) -> None:
        where = message.location.get("url", "")
        # chromium asks for /favicon.ico by itself; the app has none (404), which is fine.
        if message.type == "error" and not where.endswith("/favicon.ico"):
            problems.append(f"console error at {where}: {message.text}")

    def on_response(response: Any) -> None:
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url}")

    opened.on("console", on_console)
    opened.on("response", on_response)
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        yield opened
    finally:
        context.close()


# --- helpers -----------------------------------------------------------------------------


def screenshot(page: Any, name: str) -> Path:
    path = artifacts_dir() / f"admin-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Any, expect: Any) -> None:
    """Open /admin/, get sent to the login page, log in as alice, land on the overview."""
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=(/|%2F)admin(/|%2F)"))
    expect(page.locator("h1")).to_contain_text("log in", ignore_case=True)
    screenshot(page, "01-login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.locator("h1")).to_have_text(re.compile(r"^\s*Overview"))


def number(text: str) -> int:
    """The integer shown in a cell ("1,234", "-5", "#12")."""
    found = re.search(r"-?\d[\d,]*", text)
    assert found, f"no number in {text!r}"
    return int(found.group(0).replace(",", ""))


def column(table: Any, header: str) -> list[str]:
    """The texts of a table's column, by its header's text."""
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    assert header in headers, f"no {header!r} column in {headers}"
    index = headers.index(header)
    return [row.locator("td").nth(index).inner_text().strip()
            for row in table.locator("tbody tr").all()]


def final_balance(page: Any) -> int:
    """The "Balance after" of the person's latest ledger entry (the highest entry id),
    whichever order the table lists them in."""
    table = page.locator("#ledger")
    ids = [number(text) for text in column(table, "#")]
    balances = [number(text) for text in column(table, "Balance after")]
    assert ids, "the ledger table is empty"
    return balances[ids.index(max(ids))]


def balance_of(application: Flask, account_id: int) -> ledger.Balance:
    """The person's balance as the ledger has it now (read on this thread, in its own app
    context), after checking the ledger's caches agree with its records."""
    with application.app_context():
        try:
            assert_consistent(db.session, account_id)
            return ledger.balance(db.session, account_id)
        finally:
            db.session.remove()


def message_count(application: Flask, account_id: int) -> int:
    with application.app_context():
        try:
            return len(db.session.scalars(
                select(Message.id).join(Contact, Contact.id == Message.contact_id)
                .where(Contact.account_id == account_id)).all())
        finally:
            db.session.remove()


def assert_private(html: str, person: Person) -> None:
    """Neither the full phone number nor any message text is in the page's HTML."""
    digits = person.phone.lstrip("+")
    assert digits[1:] not in html, "the full phone number is in the page"
    for body in person.bodies:
        assert body.lower() not in html.lower(), f"a message body is in the page: {body!r}"


# --- tests -------------------------------------------------------------------------------


def test_overview_people_and_person_pages_show_the_history(page, seeded, problems):
    from playwright.sync_api import expect

    application, person = seeded
    log_in(page, expect)

    # Overview: the KPI tiles and the five server-drawn charts (drawn: they have a size).
    labels = [text.strip() for text in page.locator(".kpi .label").all_inner_texts()]
    for label in KPI_LABELS:
        assert any(text.startswith(label) for text in labels), f"no {label!r} KPI in {labels}"
    values = [text.strip() for text in page.locator(".kpi .value").all_inner_texts()]
    assert len(values) == len(labels) and all(values), f"KPI values: {values}"
    expect(page.locator(".chart svg")).to_have_count(CHARTS)
    for chart in page.locator(".chart svg").all():
        box = chart.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, f"chart not drawn: {box}"
    assert page.locator(".chart svg .series").count() > 0, "the charts have no data series"
    # No script in the charts: the CSP (script-src 'none') would block it and log an error.
    expect(page.locator("script")).to_have_count(0)
    screenshot(page, "02-overview")

    # People: reached through the header's link; the phone is masked.
    page.locator("header").get_by_role("link", name="People").click()
    expect(page).to_have_url(re.compile(r"/admin/people$"))
    masked = mask_address(person.phone)
    row = page.locator("#people tbody tr", has_text=masked)
    expect(row).to_have_count(1)
    assert_private(page.content(), person)
    screenshot(page, "03-people")

    # The person's page, by clicking their (masked) phone in the table.
    row.get_by_role("link", name=masked).click()
    expect(page).to_have_url(re.compile(rf"/admin/people/{person.account_id}$"))
    expect(page.locator("h1")).to_have_text(re.compile(r"^\s*Person"))
    expect(page.locator("main")).to_contain_text(masked)
    ledger_rows = page.locator("#ledger tbody tr")
    expect(ledger_rows.filter(has_text="free monthly allowance")).to_have_count(1)
    expect(ledger_rows.filter(has_text="goodwill for the outage")).to_have_count(1)
    expect(ledger_rows.filter(has_text="debit")).to_have_count(1)  # the captured hold
    balance = balance_of(application, person.account_id)
    assert balance.held > 0  # the second message's hold is still pending
    assert final_balance(page) == balance.available + balance.held == balance.posted
    expect(page.locator("#available")).to_have_text(str(balance.available))
    expect(page.locator("#holds tr", has_text="pending")).to_have_count(1)
    expect(page.locator("#messages tr:has(td)")).to_have_count(
        message_count(application, person.account_id))
    expect(page.locator("#messages")).to_contain_text("meal_plan")  # the intent, not the text
    assert_private(page.content(), person)
    screenshot(page, "04-person")
    assert problems == [], "\n".join(problems)


def test_granting_tokens_from_the_person_page(page, seeded, problems):
    from playwright.sync_api import expect

    application, person = seeded
    log_in(page, expect)
    page.goto(f"/admin/people/{person.account_id}")
    expect(page.locator("h1")).to_have_text(re.compile(r"^\s*Person"))
    balance = balance_of(application, person.account_id)
    before = final_balance(page)
    assert before == balance.posted
    expect(page.locator("#available")).to_have_text(str(balance.available))

    page.fill("#grant-tokens", "25")
    page.fill("#grant-reason", "browser test: sorry for the wait")
    page.get_by_role("button", name="Grant", exact=True).click()

    expect(page).to_have_url(re.compile(rf"/admin/people/{person.account_id}$"))
    expect(page.locator(".flash")).to_have_count(1)
    expect(page.locator(".flash")).to_contain_text("granted", ignore_case=True)
    expect(page.locator(".flash.error")).to_have_count(0)
    expect(page.locator("h1")).to_have_text(re.compile(r"^\s*Person"))
    granted = page.locator("#ledger tbody tr", has_text="sorry for the wait")
    expect(granted).to_have_count(1)
    expect(granted).to_contain_text("alice")
    expect(page.locator("#audit")).to_contain_text("alice")
    after = balance_of(application, person.account_id)
    assert after.posted == balance.posted + 25 and after.available == balance.available + 25
    assert final_balance(page) == before + 25 == after.available + after.held
    expect(page.locator("#available")).to_have_text(str(after.available))
    assert_private(page.content(), person)
    screenshot(page, "05-person-after-grant")
    assert problems == [], "\n".join(problems)
