"""Affiliate offers: offer links, clicks, conversions and affiliate revenue.

Design (shared/design/economy.md, "Affiliate gating"):

- At the AFFILIATE level a costly intent is answered with 1-3 partner offers relevant to it
  (`AffiliateSettings.offers_for`), each sent as `PUBLIC_BASE_URL/r/<token>`. The token is
  random (`secrets.token_urlsafe`, 192 bits) and stored as an `OfferLink` with the account,
  the partner's code, the intent and an expiry (30 days); the URL carries nothing else.
- Opening the link records one `Click` with a fresh random click id and redirects to the
  partner's URL template with `{click_id}` replaced by it (the partner's sub-id). The target
  always comes from the current catalog, never from the request, and is checked again at click
  time: https, on an allow-listed domain, no user-info, no backslash or control characters.
  Nothing else can be redirected to (no open redirect).
- A conversion comes back from the network (signed postback or CSV import) with our click id.
  It is stored once per (network, conversion id) (`UNIQUE`); a repeat is a no-op. Its
  commission is revenue of kind "affiliate" for the account that clicked
  (`tokens.costs.record_revenue`, key `affiliate:<network>:<conversion id>`), which lowers that
  person's exposure. A conversion whose click id we do not know is stored unattributed, with
  no revenue.
- Mode `click_to_unlock` (off by default; many affiliate programmes forbid incentivised
  clicks): a click recorded in the last 24 hours and not used yet unlocks one full answer
  (`unlocked`, `use_unlock`).

Amounts: sale amounts in US cents, commissions in µUSD (1 cent = `MUSD_PER_CENT` = 10,000
µUSD). Networks report USD decimal strings ("12.50"), parsed with `Decimal`, never floats.

Domain functions take the `Session` and flush; the caller (route, CLI) commits.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Integer,
    Select,
    String,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, utcnow
from tokens.catalog import Catalog, Partner
from tokens.costs import MUSD_PER_CENT, record_revenue
from tokens.errors import TokensError
from tokens.ledger import lock_account

# A new offer link lives this long (a person may come back to an old message).
OFFER_LINK_TTL = timedelta(days=30)
# click_to_unlock: a click unlocks one full answer within this long (economy.md).
UNLOCK_WINDOW = timedelta(hours=24)
# Offers per answer (economy.md: 1-3 relevant offers).
MAX_OFFERS = 3
CONVERSION_STATES = ("attributed", "unattributed")
CSV_COLUMNS = ("conversion_id", "click_id", "sale_amount", "commission")

TOKEN_MAX = 64
CLICK_ID_MAX = 40
CONVERSION_ID_MAX = 100
NETWORK_MAX = 32
_NETWORK = re.compile(r"^[a-z0-9_]{1,32}$")
# USD as a decimal string: digits, optionally a point and one or two decimals. No sign, no
# exponent, no thousands separator; at most 12 integer digits (far below BigInteger's range).
_USD = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,2})?$")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class UnknownOfferLink(TokensError):
    """No offer link has this token, it has expired, or its partner left the catalog.

    Protects: `/r/<token>` redirects only through a link we issued (404 otherwise).
    """


class OfferNotAllowed(TokensError):
    """The partner URL built at click time is not https on an allow-listed domain.

    Protects: no open redirect, even if the catalog changed after the catalog check at load
    time or a URL template is malformed.
    """


class InvalidConversion(TokensError):
    """A conversion (postback or CSV row) is malformed: missing id, bad network name, or an
    amount that is not a non-negative USD decimal string with at most two decimals.

    Protects: nothing half-read is stored and no revenue comes from a guessed amount.
    """


class OfferLink(Base):
    """An offer sent to a person: opaque `token` -> (account, partner, intent, expiry)."""

    __tablename__ = "offer_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(TOKEN_MAX), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    partner_code: Mapped[str] = mapped_column(String(32))
    intent: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Click(Base):
    """One recorded opening of an offer link.

    Attributes:
        click_id: our opaque random id, sent to the partner as the sub-id; conversions name it.
        used_at: when this click unlocked an answer (mode click_to_unlock), else None.
    """

    __tablename__ = "affiliate_clicks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    click_id: Mapped[str] = mapped_column(String(CLICK_ID_MAX), unique=True)
    offer_link_id: Mapped[int] = mapped_column(ForeignKey("offer_links.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    partner_code: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Conversion(Base):
    """A sale a network reported, once per (network, conversion id).

    Attributes:
        network: the affiliate network's name as in the webhook path or the CLI ("awin").
        conversion_id: the network's id of the conversion.
        click_id: our click id as the network reported it (None when absent or not ours).
        account_id: the account that clicked (None: unattributed, no revenue).
        partner_code: the clicked partner's code (None when unattributed).
        sale_amount_cents: the sale, US cents.
        commission_musd: our commission, µUSD (revenue when attributed and > 0).
        status: "attributed" or "unattributed".
    """

    __tablename__ = "affiliate_conversions"
    __table_args__ = (
        UniqueConstraint("network", "conversion_id",
                         name="uq_affiliate_conversions_network_conversion_id"),
        CheckConstraint("sale_amount_cents >= 0 AND commission_musd >= 0",
                        name="amounts_not_negative"),
        CheckConstraint(f"status IN ({', '.join(repr(v) for v in CONVERSION_STATES)})",
                        name="status_known"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    network: Mapped[str] = mapped_column(String(NETWORK_MAX))
    conversion_id: Mapped[str] = mapped_column(String(CONVERSION_ID_MAX))
    click_id: Mapped[str | None] = mapped_column(String(CLICK_ID_MAX), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    partner_code: Mapped[str | None] = mapped_column(String(32))
    sale_amount_cents: Mapped[int] = mapped_column(BigInteger)
    commission_musd: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ImportResult(NamedTuple):
    """What `import_csv` did: rows added, rows already known (repeats), and one message per
    bad row ("line N: reason"). A tuple: `added, repeated, errors = import_csv(...)`."""

    added: int
    repeated: int
    errors: list[str]


# --- offers and clicks --------------------------------------------------------------------


def offer_url(public_base_url: str, token: str) -> str:
    """The public URL of an offer link: `PUBLIC_BASE_URL/r/<token>`."""
    return f"{public_base_url.rstrip('/')}/r/{token}"


def issue_offer_links(
    session: Session,
    account_id: int,
    intent: str,
    catalog: Catalog,
    now: datetime | None = None,
    *,
    limit: int = MAX_OFFERS,
    ttl: timedelta = OFFER_LINK_TTL,
) -> list[tuple[Partner, OfferLink]]:
    """Offer links for the partners relevant to `intent`, one per partner.

    Partners come from `catalog.affiliates.offers_for(intent, limit)` (catalog order, at most
    `limit`, itself at most 3). For each, the newest link of this account, partner and intent
    still valid for more than half `ttl` is reused (so a person's recent messages keep one link
    per offer, and a reused link never dies minutes after it was sent); else a new one is made.

    Args:
        session: the caller's session; this function flushes, never commits.
        account_id: the person the offers go to.
        intent: the intent being answered, e.g. "meal_plan".
        catalog: the economy catalog (partners and which categories suit which intent).
        now: the current time (UTC).
        limit: at most this many offers (clamped to 1..3).
        ttl: lifetime of a new link (default 30 days).

    Returns:
        (partner, link) pairs in catalog order; empty when no partner suits the intent.
    """
    now = now or utcnow()
    partners = catalog.affiliates.offers_for(intent, max(1, min(limit, MAX_OFFERS)))
    fresh_after = now + ttl / 2
    issued: list[tuple[Partner, OfferLink]] = []
    for partner in partners:
        link = session.scalars(
            select(OfferLink)
            .where(OfferLink.account_id == account_id, OfferLink.partner_code == partner.code,
                   OfferLink.intent == intent, OfferLink.expires_at > fresh_after)
            .order_by(OfferLink.expires_at.desc())
            .limit(1)
        ).first()
        if link is None:
            link = OfferLink(token=secrets.token_urlsafe(24), account_id=account_id,
                             partner_code=partner.code, intent=intent, created_at=now,
                             expires_at=now + ttl)
            session.add(link)
        issued.append((partner, link))
    session.flush()
    return issued


def find_offer_link(session: Session, token: str, now: datetime | None = None) -> OfferLink:
    """The unexpired offer link with this token.

    Raises:
        UnknownOfferLink: no link has this token, or it has expired.
    """
    if not token or len(token) > TOKEN_MAX:
        raise UnknownOfferLink("no offer link has this token")
    link = session.scalars(select(OfferLink).where(OfferLink.token == token)).first()
    if link is None:
        raise UnknownOfferLink("no offer link has this token")
    if link.expires_at <= (now or utcnow()):
        raise UnknownOfferLink("this offer link has expired")
    return link


def partner_url(partner: Partner, click_id: str, allowed_domains: frozenset[str]) -> str:
    """The partner's URL with `{click_id}` replaced by the URL-quoted click id, checked.

    Raises:
        OfferNotAllowed: the result is not https, has user-info, unsafe characters, or a host
            outside `allowed_domains` (a domain or any of its subdomains).
    """
    url = partner.url.replace("{click_id}", quote(click_id, safe=""))
    if not is_allowed_url(url, allowed_domains):
        raise OfferNotAllowed(f"partner {partner.code!r}: URL is not https on an allowed domain")
    return url


def is_allowed_url(url: str, allowed_domains: frozenset[str]) -> bool:
    """Whether `url` is a safe redirect target: https, a host equal to an allowed domain or
    under one, no user-info, no whitespace, control characters or backslashes (which
    browsers may read as a path separator and so as another host)."""
    if _UNSAFE_URL_CHARS.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme != "https" or not host or parts.username is not None or "@" in parts.netloc:
        return False
    return any(host == d or host.endswith("." + d) for d in allowed_domains)


def record_click(session: Session, token: str, catalog: Catalog,
                 now: datetime | None = None) -> str:
    """Record one click on the offer link `token` and return where to send the person.

    Every call records one `Click` with a new click id (two clicks are two rows). The target
    is the partner's URL template from `catalog` (the current one), checked again here.

    Args:
        session: the caller's session; this function flushes, never commits.
        token: the token from `/r/<token>`.
        catalog: the economy catalog in force.
        now: the current time (UTC).

    Returns:
        The partner URL with our click id as sub-id.

    Raises:
        UnknownOfferLink: unknown or expired token, or its partner is no longer in the catalog.
        OfferNotAllowed: the partner URL is not https on an allow-listed domain (nothing is
            recorded).
    """
    now = now or utcnow()
    link = find_offer_link(session, token, now)
    settings = catalog.affiliates
    partner = next((p for p in settings.partners if p.code == link.partner_code), None)
    if partner is None:
        raise UnknownOfferLink("this offer is no longer available")
    click_id = secrets.token_urlsafe(24)
    url = partner_url(partner, click_id, settings.allowed_domains)
    session.add(Click(click_id=click_id, offer_link_id=link.id, account_id=link.account_id,
                      partner_code=partner.code, created_at=now))
    session.flush()
    return url


# --- click_to_unlock ----------------------------------------------------------------------


def _unused_clicks(account_id: int, now: datetime) -> Select[tuple[int]]:
    """Ids of the account's clicks that can still unlock an answer at `now`, oldest first."""
    return (
        select(Click.id)
        .where(Click.account_id == account_id, Click.used_at.is_(None),
               Click.created_at > now - UNLOCK_WINDOW, Click.created_at <= now)
        .order_by(Click.created_at, Click.id)
    )


def unlocked(session: Session, account_id: int, now: datetime | None = None) -> bool:
    """Mode click_to_unlock: whether the account has a click from the last 24 hours that has
    not unlocked an answer yet. Reads only; the caller checks the catalog's mode."""
    now = now or utcnow()
    return session.scalar(_unused_clicks(account_id, now).limit(1)) is not None


def use_unlock(session: Session, account_id: int, now: datetime | None = None) -> bool:
    """Mode click_to_unlock: spend one unused click from the last 24 hours (the oldest) on one
    full answer. Safe under concurrency: a click is marked used by one caller only.

    Returns:
        True when a click was marked used; False when none was available.
    """
    now = now or utcnow()
    for click_id in session.scalars(_unused_clicks(account_id, now).limit(5)).all():
        marked = session.execute(
            update(Click).where(Click.id == click_id, Click.used_at.is_(None)).values(used_at=now)
        )
        if marked.rowcount == 1:  # type: ignore[attr-defined]
            return True
    return False


# --- conversions --------------------------------------------------------------------------


def normalise_network(name: str) -> str:
    """The stored form of a network name: lower case, letters, digits and "_", 1-32 chars.

    Raises:
        InvalidConversion: any other name.
    """
    network = name.strip().lower() if isinstance(name, str) else ""
    if not _NETWORK.match(network):
        raise InvalidConversion(f"network name {name!r}: 1-32 letters, digits or _ expected")
    return network


def usd_to_cents(value: object, field: str) -> int:
    """Parse a USD amount given as a decimal string ("12.50") into US cents.

    Floats and numbers are refused (binary rounding); so are signs, exponents, more than two
    decimals and more than 12 integer digits.

    Raises:
        InvalidConversion: naming `field`.
    """
    if not isinstance(value, str) or not _USD.match(value.strip()):
        raise InvalidConversion(
            f"{field}: a non-negative USD amount as a decimal string like \"12.50\" is "
            f"required, not {value!r}")
    try:
        cents = Decimal(value.strip()) * 100
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise InvalidConversion(f"{field}: not a decimal amount: {value!r}") from exc
    return int(cents)


def record_conversion(
    session: Session,
    network: str,
    conversion_id: str,
    click_id: str | None,
    sale_amount_cents: int,
    commission_cents: int,
    now: datetime | None = None,
) -> bool:
    """Store one conversion a network reported, once per (network, conversion id).

    The conversion is attributed to the account of the click `click_id` names; its
    commission (if > 0) is recorded as that account's "affiliate" revenue, µUSD =
    `commission_cents * MUSD_PER_CENT`, key `affiliate:<network>:<conversion_id>`. An unknown
    (or missing) click id stores the conversion unattributed, with no revenue. The conversion
    and its revenue are written together or not at all (one savepoint).

    Args:
        session: the caller's session; this function flushes, never commits.
        network: the network's name ("awin"), normalised by `normalise_network`.
        conversion_id: the network's conversion id (1-100 characters).
        click_id: our click id as the network reported it, or None.
        sale_amount_cents, commission_cents: non-negative US cents.
        now: the current time (UTC); the revenue counts in its month.

    Returns:
        True when stored now; False when (network, conversion id) was stored before (nothing
        changes, even if the amounts differ).

    Raises:
        InvalidConversion: bad network name, empty or too long conversion id, negative or
            non-integer amounts.
    """
    now = now or utcnow()
    network = normalise_network(network)
    if not isinstance(conversion_id, str) or not conversion_id.strip():
        raise InvalidConversion("conversion_id: a non-empty string is required")
    conversion_id = conversion_id.strip()
    if len(conversion_id) > CONVERSION_ID_MAX:
        raise InvalidConversion(f"conversion_id: at most {CONVERSION_ID_MAX} characters")
    if not _storable(conversion_id):
        raise InvalidConversion("conversion_id: NUL or unpaired surrogate characters")
    for name, amount in (("sale_amount", sale_amount_cents), ("commission", commission_cents)):
        if type(amount) is not int or amount < 0:
            raise InvalidConversion(f"{name}: a non-negative whole number of cents is required")
    if click_id is not None and not isinstance(click_id, str):
        raise InvalidConversion("click_id: a string or null is required")
    click_id = (click_id or "").strip() or None
    if click_id is not None and not _storable(click_id):
        raise InvalidConversion("click_id: NUL or unpaired surrogate characters")
    if click_id is not None and len(click_id) > CLICK_ID_MAX:
        click_id = None  # not one of ours: keep the conversion, unattributed

    def exists() -> bool:
        return session.scalar(select(Conversion.id).where(
            Conversion.network == network, Conversion.conversion_id == conversion_id)) is not None

    if exists():
        return False
    click = None
    if click_id is not None:
        click = session.scalars(select(Click).where(Click.click_id == click_id)).first()
    if click is not None:
        lock_account(session, click.account_id)  # the account first, as everywhere
    commission_musd = commission_cents * MUSD_PER_CENT
    conversion = Conversion(
        network=network, conversion_id=conversion_id, click_id=click_id,
        account_id=click.account_id if click else None,
        partner_code=click.partner_code if click else None,
        sale_amount_cents=sale_amount_cents, commission_musd=commission_musd,
        status="attributed" if click else "unattributed", created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(conversion)
            session.flush()
            if click is not None and commission_musd > 0:
                record_revenue(session, click.account_id, "affiliate", commission_musd,
                               key=f"affiliate:{network}:{conversion_id}",
                               memo=f"{network} conversion {conversion_id}"[:200], now=now)
    except IntegrityError:
        if not exists():  # not a concurrent repeat of the same conversion: a real error
            raise
        return False
    return True


def import_csv(session: Session, network: str, text: str,
               now: datetime | None = None,
               after_row: Callable[[], None] | None = None) -> ImportResult:
    """Import a network's conversion report (CSV), idempotent per conversion id.

    The header names the columns `conversion_id,click_id,sale_amount,commission` (any order;
    other columns are ignored); amounts are USD decimal strings ("12.50"). Each good row goes
    through `record_conversion`. A bad row (missing id, bad amount, wrong number of fields) is
    skipped and reported as "line N: reason"; nothing of it is written.

    Args:
        session: the caller's session; this function flushes, never commits.
        network: the network the report comes from ("awin").
        text: the file's text (a UTF-8 byte-order mark is ignored).
        now: the current time (UTC).
        after_row: called after each stored row (the CLI commits there, so a large import
            holds one person's lock at a time).

    Returns:
        `ImportResult(added, repeated, errors)`.

    Raises:
        InvalidConversion: a bad network name, or a header without the four columns (nothing
            is imported).
    """
    now = now or utcnow()
    network = normalise_network(network)
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lower() for cell in row]
            break
    if header is None:
        raise InvalidConversion("the file is empty: a header "
                                f"{','.join(CSV_COLUMNS)} is required")
    missing = [name for name in CSV_COLUMNS if name not in header]
    if missing:
        raise InvalidConversion(f"line {reader.line_num}: the header lacks "
                                f"{', '.join(missing)} (expected {','.join(CSV_COLUMNS)})")
    where = {name: header.index(name) for name in CSV_COLUMNS}
    added = repeated = 0
    errors: list[str] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(f"line {reader.line_num}: unreadable CSV: {exc}")
            continue
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        values = {name: row[index].strip() for name, index in where.items()}
        try:
            sale = usd_to_cents(values["sale_amount"], "sale_amount")
            commission = usd_to_cents(values["commission"], "commission")
            stored = record_conversion(session, network, values["conversion_id"],
                                       values["click_id"] or None, sale, commission, now)
        except InvalidConversion as exc:
            errors.append(f"line {line}: {exc}")
            continue
        if stored:
            added += 1
            if after_row is not None:
                after_row()
        else:
            repeated += 1
    return ImportResult(added=added, repeated=repeated, errors=errors)


def _storable(text: str) -> bool:
    """Whether a database can store `text`: no NUL (PostgreSQL refuses it) and valid UTF-8
    (no unpaired surrogate from a JSON escape)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
