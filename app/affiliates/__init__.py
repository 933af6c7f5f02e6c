"""Affiliate links and conversions (docs/economy.md, "Affiliate gating").

- `GET /r/<token>`: an offer link from a reply. Records the click and answers 302 to the
  partner's URL with our click id as sub-id. One click per offer link (so per person) and
  clock hour (UTC): opening the link again within the hour counts one more opening of that
  click and sends the same click id, so the partner sees one sub-id. The target comes only
  from the catalog in force and is checked again (https, allow-listed domain); the request
  supplies nothing but the token, so there is no open redirect. An unknown, expired or refused
  link is a plain 404.
- `POST /webhooks/affiliates/<network>`: a network's conversion postback. The body is JSON
  `{"conversion_id", "click_id", "sale_amount", "commission", "status"}`: amounts are USD
  decimal strings, negative for a reversal ("-4.50"); `status` is optional ("pending",
  "approved", "declined", "reversed", ... see `tokens.affiliates.STATUS_WORDS`; none means
  approved). It is signed with `X-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`; the
  secret is the environment variable `AFFILIATE_SECRET_<NETWORK>` (network in upper case). No
  secret: 404. A bad or missing signature is a 401 that stores nothing; a bad body a 400 with
  the reason that stores nothing; a repeat, or a report of an earlier state, a 200 no-op.
- `flask --app wsgi affiliates import NETWORK CSV_PATH`: the same reports from a network's CSV
  (`conversion_id,click_id,sale_amount,commission`, optionally `status`).

A conversion moves pending -> approved -> reversed, only forward (`record_conversion` in
`tokens.affiliates`); its commission is booked as revenue when approved, in the month of the
approval, and taken back once by a reversal after approval.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import click
from flask import Blueprint, Response, jsonify, redirect, request
from flask.cli import with_appcontext
from flask.typing import ResponseReturnValue

from app.extensions import bot_settings, db
from tokens.affiliates import (
    InvalidConversion,
    OfferNotAllowed,
    UnknownOfferLink,
    import_csv,
    normalise_network,
    record_click,
    record_conversion,
    usd_to_cents,
)

bp = Blueprint("affiliates", __name__)
log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature"
SIGNATURE_PREFIX = "sha256="
SECRET_PREFIX = "AFFILIATE_SECRET_"
# A conversion postback is a few hundred bytes; refuse anything far larger unread.
MAX_POSTBACK_BYTES = 16 * 1024


def _plain(text: str, status: int) -> Response:
    response = Response(f"{text}\n", status=status, content_type="text/plain; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/r/<token>")
def offer_redirect(token: str) -> ResponseReturnValue:
    """Follow an offer link: record the click (one per link and hour), then 302 to the
    partner with the hour's click id.

    Returns:
        302 to the allow-listed partner URL (with our click id); 404 for an unknown or expired
        token, a partner no longer in the catalog, or a partner URL the allow-list refuses.
    """
    settings = bot_settings()
    if _is_preview():
        # A link preview (WhatsApp, iMessage, Slack...) or a HEAD request is not a person
        # clicking: no click is recorded (it would count, and unlock answers).
        return _plain(f"An offer from {settings.catalog.bot_name}'s partners.", 200)
    try:
        url = record_click(db.session, token, settings.catalog)
    except UnknownOfferLink:
        db.session.rollback()
        return _plain("This offer link is unknown or has expired.", 404)
    except OfferNotAllowed as exc:
        db.session.rollback()
        log.error("offer link refused at click time: %s", exc)
        return _plain("This offer link is unknown or has expired.", 404)
    db.session.commit()
    response = redirect(url, code=302)
    response.headers["Cache-Control"] = "no-store"  # every opening is counted, not cached
    response.headers["Referrer-Policy"] = "no-referrer"  # the token stays ours
    return response


PREVIEW_AGENTS = ("facebookexternalhit", "whatsapp", "twitterbot", "slackbot", "telegrambot",
                  "discordbot", "linkedinbot", "skypeuripreview", "googlebot", "bingbot")


def _is_preview() -> bool:
    agent = (request.headers.get("User-Agent") or "").lower()
    return request.method == "HEAD" or any(bot in agent for bot in PREVIEW_AGENTS)


def network_secret(network: str) -> str | None:
    """The postback secret of `network` (`AFFILIATE_SECRET_<NETWORK>`), or None."""
    secret = os.environ.get(SECRET_PREFIX + network.upper(), "")
    return secret or None


def signature_problem(secret: str, body: bytes, header: str | None) -> str | None:
    """None when `header` is `sha256=<hex HMAC-SHA256(secret, body)>`; else the reason."""
    if not header:
        return f"missing {SIGNATURE_HEADER} header"
    header = header.strip()
    if not header.lower().startswith(SIGNATURE_PREFIX):
        return f"{SIGNATURE_HEADER} must be {SIGNATURE_PREFIX}<hex>"
    given = header[len(SIGNATURE_PREFIX):].strip().lower().encode("latin-1", "replace")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, given):
        return "signature does not match"
    return None


def _postback_fields(body: bytes) -> tuple[str, str | None, int, int, str | None]:
    """(conversion_id, click_id, sale cents, commission cents, status word) of a postback body.
    The amounts are signed (negative: a reversal); the status is None when absent.

    Raises:
        InvalidConversion: not a JSON object, or a field missing or malformed.
    """
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidConversion("the body is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidConversion("the body must be a JSON object")
    conversion_id = data.get("conversion_id")
    if not isinstance(conversion_id, str) or not conversion_id.strip():
        raise InvalidConversion("conversion_id: a non-empty string is required")
    click_id = data.get("click_id")
    if click_id is not None and not isinstance(click_id, str):
        raise InvalidConversion("click_id: a string or null is required")
    status = data.get("status")
    if status is not None and not isinstance(status, str):
        raise InvalidConversion("status: a string or null is required")
    sale = usd_to_cents(data.get("sale_amount"), "sale_amount", signed=True)
    commission = usd_to_cents(data.get("commission"), "commission", signed=True)
    return conversion_id, click_id, sale, commission, status


@bp.post("/webhooks/affiliates/<network>")
def affiliate_postback(network: str) -> ResponseReturnValue:
    """Receive one report of a conversion from an affiliate network.

    Returns:
        200 `{"recorded": true, "status": <state>}` when the conversion was stored or moved
        to a later state, `{"recorded": false, "status": <state>}` for a repeat or a report of
        an earlier state (nothing changed; <state> is the stored one: "pending", "approved"
        or "reversed"); 401 bad or missing signature; 400 bad body (the reason as text); 404
        unknown network (no secret configured); 413 too large. Nothing is stored unless the
        answer is 200.
    """
    try:
        name = normalise_network(network)
    except InvalidConversion:
        return _plain("unknown affiliate network", 404)
    secret = network_secret(name)
    if secret is None:
        return _plain("unknown affiliate network", 404)
    if (request.content_length or 0) > MAX_POSTBACK_BYTES:
        return _plain("postback too large", 413)
    request.max_content_length = MAX_POSTBACK_BYTES  # also bounds a chunked body
    body = request.get_data(cache=False)
    if len(body) > MAX_POSTBACK_BYTES:
        return _plain("postback too large", 413)
    reason = signature_problem(secret, body, request.headers.get(SIGNATURE_HEADER))
    if reason is not None:
        log.warning("affiliate postback from %s rejected: %s", name, reason)
        return _plain(reason, 401)
    try:
        conversion_id, click_id, sale, commission, status = _postback_fields(body)
        outcome = record_conversion(db.session, name, conversion_id, click_id, sale,
                                    commission, status=status)
    except InvalidConversion as exc:
        db.session.rollback()
        return _plain(str(exc), 400)
    db.session.commit()
    if outcome.changed:
        log.info("affiliate conversion %s/%r is %s (revenue %d µUSD)", name,
                 conversion_id.strip()[:100], outcome.status, outcome.revenue_musd)
    return jsonify(recorded=outcome.changed, status=outcome.status)


@click.group("affiliates")
def affiliates_group() -> None:
    """Affiliate conversions."""


@affiliates_group.command("import")
@click.argument("network")
@click.argument("csv_path", metavar="CSV_PATH",
                type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
def affiliates_import(network: str, csv_path: Path) -> None:
    """Import a network's conversion report (CSV).

    Example: `flask --app wsgi affiliates import awin conversions.csv`. The CSV's header
    names conversion_id, click_id, sale_amount and commission (USD decimal strings like
    12.50, negative for a reversal) and optionally status (pending, approved, declined,
    reversed...; none means approved). A row for a known conversion in a later state updates
    it (approval books the commission, reversal takes it back); a repeat or an earlier state
    is counted as repeated and changes nothing. Bad rows are listed by line and skipped, the
    good ones are kept. Exits 1 when some rows were bad.
    """
    try:
        name = normalise_network(network)
    except InvalidConversion as exc:
        raise click.BadParameter(str(exc), param_hint="NETWORK") from None
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise click.ClickException(f"{csv_path}: no such file") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{csv_path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise click.ClickException(f"{csv_path}: cannot read it ({exc.strerror})") from None
    try:
        added, updated, repeated, errors = import_csv(db.session, name, text,
                                                      after_row=db.session.commit)
    except InvalidConversion as exc:
        db.session.rollback()
        raise click.ClickException(f"{csv_path}: {exc}") from None
    db.session.commit()
    click.echo(f"added {added}, updated {updated}, repeated {repeated}, "
               f"errors {len(errors)}")
    for error in errors:
        click.echo(f"  {error}", err=True)
    if errors:
        raise SystemExit(1)
