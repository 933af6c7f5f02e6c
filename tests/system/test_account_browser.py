"""The person's account page in a real browser (issue #20): Playwright drives Debian's chromium,
at a phone's size (390 x 844), against the app served on a loopback port on its embedded
defaults (inline TwiML answers, the sandbox checkout).

The person has a real history made through the signed Twilio webhook: a priced answer, a
second one whose reply was not delivered (its tokens refunded), then ACCOUNT. The test opens
the link from that reply, reads the figures against the ledger, buys a pack through the
sandbox, turns auto top-up on (the sandbox checkout saves a card) and off, switches the page to
Spanish, and deletes the person's data. Every page it sees is checked with axe-core
(axe-playwright-python, which bundles axe.min.js: nothing is fetched) for serious or critical
violations, and saved as a full-page screenshot (with axe's report) to `$TEST_ARTIFACTS_DIR`
(default `artifacts/screenshots/`).

Without chromium the tests are skipped, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.account import masked_number
from app.extensions import db
from bot.models import Contact, Message
from testing.deployment import post_signed
from testing.payloads import sms
from tests.support.browser import (
    TIMEOUT_MS,
    LiveServer,
    artifacts_dir,
    needs_chromium,
)
from tests.tokens.ledger_checks import assert_consistent
from tokens import ledger
from tokens.ledger import LedgerEntry
from tokens.providers import SandboxProvider

PHONE = "+16505558893"
ANSWERED = "vegetarian meal plan 1800 calories"
UNDELIVERED = "chicken recipe with rice"
PHONE_SIZE = {"width": 390, "height": 844}
LINK = re.compile(r"https?://[^\s<]+(/account/link/[A-Za-z0-9_-]{43})")
SERIOUS = ("serious", "critical")

pytestmark = [
    pytest.mark.backends("postgresql"),
    needs_chromium,
]


@dataclass(frozen=True)
class Person:
    account_id: int
    link_path: str  # /account/link/<token>, from the ACCOUNT reply


@pytest.fixture
def seeded(make_app) -> Iterator[tuple[Flask, Person]]:
    """The app on its embedded defaults and one person with a history, committed before any
    page is served: two priced answers, the second one's reply undelivered and refunded, and
    the ACCOUNT reply whose link the test opens."""
    application = make_app()
    with application.app_context():
        client = application.test_client()
        assert post_signed(client, sms(ANSWERED, sender=PHONE)).status_code == 200
        undelivered = sms(UNDELIVERED, sender=PHONE)
        assert post_signed(client, undelivered).status_code == 200
        sid = undelivered["MessageSid"]
        refunded = ledger.reverse_debit(db.session, f"debit:{sid}", key=f"reversal:{sid}",
                                       memo="reply not delivered")
        assert refunded.amount > 0
        db.session.commit()
        reply = post_signed(client, sms("ACCOUNT", sender=PHONE)).get_data(as_text=True)
        found = LINK.search(html.unescape(reply))
        assert found, reply
        account_id = db.session.scalars(
            select(Contact.account_id).where(Contact.address == PHONE)).one()
        db.session.remove()
    try:
        yield application, Person(account_id, found.group(1))
    finally:
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def live(seeded: tuple[Flask, Person]) -> Iterator[LiveServer]:
    """The seeded app on a free loopback port. The sandbox's checkout URLs are made from its
    base URL (`PUBLIC_BASE_URL` in production, where it is the public origin): here, this
    server's, so that the browser reaches the checkout page (tests/system/conftest.py's `live`,
    with that one change)."""
    with LiveServer(seeded[0]) as server:
        provider = seeded[0].extensions["payment_provider"]
        assert isinstance(provider, SandboxProvider)
        provider.base_url = server.base_url
        yield server


@pytest.fixture
def expected_errors() -> set[str]:
    """URL paths whose 4xx answer the test asks for (a signed-out page, a dead link)."""
    return set()


@pytest.fixture
def page(browser: Any, live: LiveServer, problems: list[str], expected_errors: set[str]
         ) -> Iterator[Any]:
    """A fresh phone-sized browser context (no cookies) and page on the live server."""
    context = browser.new_context(base_url=live.base_url, viewport=PHONE_SIZE,
                                  is_mobile=True, has_touch=True, device_scale_factor=2)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    opened = context.new_page()

    def on_console(message: Any) -> None:
        where = message.location.get("url", "")
        if message.type == "error" and not where.endswith("/favicon.ico") and not any(
                where.endswith(path) for path in expected_errors):
            problems.append(f"console error at {where}: {message.text}")

    def on_response(response: Any) -> None:
        path = re.sub(r"^https?://[^/]+", "", response.url)
        if response.status >= 400 and path not in expected_errors \
                and not path.endswith("/favicon.ico"):
            problems.append(f"HTTP {response.status} for {path}")

    opened.on("console", on_console)
    opened.on("response", on_response)
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        yield opened
    finally:
        context.close()


# --- helpers -----------------------------------------------------------------------------


def check_page(page: Any, name: str) -> None:
    """Save a full-page screenshot and axe-core's report, and fail on any serious or critical
    accessibility violation of the page as shown."""
    from axe_playwright_python.sync_playwright import Axe

    folder = artifacts_dir()
    page.screenshot(path=str(folder / f"account-{name}.png"), full_page=True)
    results = Axe().run(page)
    violations = results.response["violations"]
    (folder / f"account-{name}.axe.json").write_text(json.dumps(violations, indent=2))
    serious = [f"{v['id']} ({v['impact']}): {v['help']} at "
               f"{[n['target'] for n in v['nodes']]}" for v in violations
               if v.get("impact") in SERIOUS]
    assert not serious, f"{name}: " + "\n".join(serious)


def figures(application: Flask, account_id: int) -> dict[str, Any]:
    """What the page should show, read from the ledger on this thread after checking its
    caches: the balance, and this month's tokens by intent net of refunds."""
    with application.app_context():
        try:
            session = db.session
            assert_consistent(session, account_id)
            balance = ledger.balance(session, account_id)
            entries = session.scalars(select(LedgerEntry).where(
                LedgerEntry.account_id == account_id)).all()
            intent_of = {e.id: e.memo for e in entries if e.kind == "debit"}
            net: dict[str, int] = {}
            for entry in entries:
                if entry.kind == "debit":
                    net[entry.memo or ""] = net.get(entry.memo or "", 0) - entry.amount
                elif entry.kind == "reversal" and entry.corrects_id in intent_of:
                    memo = intent_of[entry.corrects_id] or ""
                    net[memo] = net.get(memo, 0) - entry.amount
            refunds = session.scalar(select(func.count()).select_from(LedgerEntry).where(
                LedgerEntry.account_id == account_id, LedgerEntry.kind == "reversal"))
            return {"balance": balance, "net": net, "refunds": refunds}
        finally:
            db.session.remove()


def count(application: Flask, model: Any, *where: Any) -> int:
    with application.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(model).where(*where)))
        finally:
            db.session.remove()


def number(text: str) -> int:
    found = re.search(r"-?\d[\d,]*", text)
    assert found, f"no number in {text!r}"
    return int(found.group(0).replace(",", ""))


def assert_private(content: str) -> None:
    """No full phone number and no message text in the page."""
    assert PHONE.lstrip("+")[1:] not in content, "the full phone number is in the page"
    for body in (ANSWERED, UNDELIVERED):
        assert body not in content.lower(), f"a message body is in the page: {body!r}"


# --- the test ----------------------------------------------------------------------------


def test_the_account_page_from_a_chat_link_to_deleting_my_data(page, seeded, problems,
                                                               expected_errors):
    from playwright.sync_api import expect

    application, person = seeded
    # The link from the chat: it opens the page and leaves the address bar.
    page.goto(person.link_path)
    expect(page).to_have_url(re.compile(r"/account$"))
    expect(page.locator("h1")).to_contain_text("account")
    expect(page.locator(".who")).to_contain_text(masked_number(PHONE))
    assert_private(page.content())

    # The figures, against the ledger.
    known = figures(application, person.account_id)
    balance = known["balance"]
    expect(page.locator("#available")).to_have_text(str(balance.available))
    for bucket, tokens in balance.by_bucket.items():
        expect(page.locator(f'#buckets tr[data-bucket="{bucket}"] td.num')).to_have_text(
            str(tokens))
    assert len(known["net"]) == 2, known  # two intents, one of them refunded in full
    for intent, tokens in known["net"].items():
        row = page.locator(f'#usage-table tr[data-intent="{intent}"]')
        expect(row).to_have_count(1)
        assert number(row.locator("td").nth(1).inner_text()) == tokens, intent
    expect(page.locator('#charges-list li[data-kind="reversal"]')).to_have_count(known["refunds"])
    expect(page.locator('#charges-list li[data-kind="reversal"]')).to_contain_text(
        "not delivered")
    expect(page.locator("#level-text")).to_have_attribute("data-level", "NORMAL")
    expect(page.locator("#purchases")).to_contain_text("No purchases yet.")
    expect(page.locator("script")).to_have_count(0)
    check_page(page, "01-page")

    # Buy a pack through the sandbox checkout: the same Checkout as BUY.
    page.get_by_role("button", name=re.compile(r"^Buy \d+ tokens")).click()
    expect(page).to_have_url(re.compile(r"/sandbox/checkout/"))
    check_page(page, "02-sandbox-checkout")
    page.get_by_role("button", name="Pay (sandbox)").click()
    expect(page).to_have_url(re.compile(r"/pay/[^/]+/done$"))
    page.goto("/account")
    after = figures(application, person.account_id)["balance"]
    assert after.available == balance.available + 120  # the starter pack: 100 + 20 bonus
    expect(page.locator("#available")).to_have_text(str(after.available))
    expect(page.locator('#purchases-list li[data-kind="pack"]')).to_have_count(1)
    expect(page.locator('#purchases-list li[data-kind="pack"]')).to_contain_text("$5.00")
    expect(page.locator('#buckets tr[data-bucket="paid"] td.num')).to_have_text("100")
    check_page(page, "03-after-purchase")

    # Auto top-up on: no saved card yet, so the checkout that saves one (as AUTO ON), then off.
    expect(page.locator("#auto-state")).to_have_attribute("data-state", "off")
    page.get_by_role("button", name="Turn auto top-up on").click()
    expect(page).to_have_url(re.compile(r"/sandbox/checkout/"))
    expect(page.locator('input[name="save_card"]')).to_be_checked()
    page.get_by_role("button", name="Pay (sandbox)").click()
    expect(page).to_have_url(re.compile(r"/pay/[^/]+/done$"))
    page.goto("/account")
    expect(page.locator("#auto-state")).to_have_attribute("data-state", "on")
    check_page(page, "04-auto-topup-on")
    page.get_by_role("button", name="Turn auto top-up off").click()
    expect(page).to_have_url(re.compile(r"/account$"))
    expect(page.locator("#auto-state")).to_have_attribute("data-state", "off")
    expect(page.locator(".flash")).to_have_text("Auto top-up is off.")

    # Spanish, for the messages and the page.
    page.select_option("#lang", "es")
    page.get_by_role("button", name="Save language").click()
    expect(page.locator("html")).to_have_attribute("lang", "es")
    expect(page.locator("#balance-h")).to_have_text("Saldo")
    check_page(page, "05-spanish")

    # Delete my data: a confirmation, then what is kept for accounting.
    entries = count(application, LedgerEntry, LedgerEntry.account_id == person.account_id)
    page.get_by_role("link", name="Borrar mis datos…").click()
    expect(page).to_have_url(re.compile(r"/account/delete$"))
    check_page(page, "06-delete-confirm")
    page.get_by_role("button", name="Sí, borrar mis datos").click()
    expect(page).to_have_url(re.compile(r"/account/deleted\?lang=es$"))
    expect(page.locator("#kept")).to_contain_text("contabilidad")
    check_page(page, "07-deleted")
    assert count(application, Contact) == 0 and count(application, Message) == 0
    assert count(application, LedgerEntry,
                 LedgerEntry.account_id == person.account_id) == entries

    # The session is gone, and so is the link: clear pages, not stack traces.
    expected_errors.update({"/account", person.link_path})
    page.goto("/account")
    expect(page.locator("h1")).to_have_text("Open your account from your messages")
    check_page(page, "08-signed-out")
    page.goto(person.link_path)
    expect(page.locator("h1")).to_have_text("This link does not work")
    check_page(page, "09-unknown-link")
    assert problems == [], "\n".join(problems)
