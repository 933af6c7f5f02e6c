"""Affiliate offers: offer links, clicks, conversions and affiliate revenue.

Design (docs/economy.md, "Affiliate gating"; README, "Partner offers"; the catalog's
`affiliates` section in tokens/economy.yaml):

- At the AFFILIATE level a costly intent is answered with 1-3 partner offers relevant to it
  (`AffiliateSettings.offers_for`), each sent as `PUBLIC_BASE_URL/r/<token>`. The token is
  random (`secrets.token_urlsafe`, 192 bits) and stored as an `OfferLink` with the account,
  the partner's code, the intent and an expiry (30 days); the URL carries nothing else.
- Opening the link records at most one `Click` per offer link and clock hour (UTC):
  `UNIQUE(offer_link_id, hour)`, written by one `INSERT ... ON CONFLICT DO UPDATE` that counts
  the opening and returns the hour's click id. So 100 GETs of a link in one hour (or 100 at
  once) are one click with one click id, the partner sees one sub-id, and a later hour is a
  new click. The person is redirected to the partner's URL template with `{click_id}`
  replaced by it. The target always comes from the current catalog, never from the request,
  and is checked again at click time: https, on an allow-listed domain, no user-info, no
  backslash or control characters. Nothing else can be redirected to (no open redirect).
- A conversion comes back from the network (signed postback or CSV import) with our click id.
  It is stored once per (network, conversion id) (`UNIQUE`) and is a small state machine,
  pending -> approved -> reversed, moving only forward: a report of the state it is in, or of
  an earlier one, changes nothing, so reports may come in any order and any number of times.
  Its commission is booked as revenue of kind "affiliate" for the account that clicked when
  it is approved, in the month of the approval (`tokens.costs.record_revenue`, key
  `affiliate:<network>:<conversion id>`), which lowers that person's exposure; a reversal
  after approval books the opposite amount once (key `affiliate-reversal:<network>:<id>`).
  A conversion whose click id we do not know is stored unattributed, with no revenue.
- Mode `click_to_unlock` (off by default; many affiliate programmes forbid incentivised
  clicks): a click recorded in the last 24 hours and not used yet unlocks one full answer
  (`unlocked`, `use_unlock`).

Amounts: sale amounts in US cents, commissions in µUSD (1 cent = `tokens.money.MUSD_PER_CENT`
= 10,000 µUSD). Networks report USD decimal strings ("12.50", "-4.50" for a reversal), parsed with
`Decimal`, never floats.

Domain functions take the `Session` and flush; the caller (route, CLI) commits.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    bindparam,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tokens.base import Base, UTCDateTime, insert_on_conflict, utcnow
from tokens.catalog import Catalog, Partner
from tokens.costs import record_revenue
from tokens.errors import TokensError
from tokens.ledger import lock_account
from tokens.money import CENTS_PER_USD, cents_to_musd

# A new offer link lives this long (a person may come back to an old message).
OFFER_LINK_TTL = timedelta(days=30)
# click_to_unlock: a click unlocks one full answer within this long (docs/economy.md).
UNLOCK_WINDOW = timedelta(hours=24)
# Offers per answer (docs/economy.md: 1-3 relevant offers).
MAX_OFFERS = 3
# A conversion's states, in the only order it may move through.
CONVERSION_STATES = ("pending", "approved", "reversed")
_RANK = {state: rank for rank, state in enumerate(CONVERSION_STATES)}
# The words networks use for a conversion's state, lower case, "-" and " " read as "_":
# Awin reports pending/approved/declined/deleted, Impact pending/approved/reversed, CJ
# new/extended/locked, Partnerize pending/approved/rejected. Declined (never approved) and
# reversed (approved, then taken back) both end in "reversed"; only the second books anything.
STATUS_WORDS: dict[str, str] = {
    **dict.fromkeys(("pending", "open", "new", "extended", "on_hold"), "pending"),
    **dict.fromkeys(("approved", "confirmed", "accepted", "locked", "paid"), "approved"),
    **dict.fromkeys(("reversed", "declined", "rejected", "deleted", "cancelled", "canceled",
                     "void", "voided", "refunded", "reversal"), "reversed"),
}
CSV_COLUMNS = ("conversion_id", "click_id", "sale_amount", "commission")
CSV_OPTIONAL_COLUMNS = ("status",)

TOKEN_MAX = 64
CLICK_ID_MAX = 40
CONVERSION_ID_MAX = 100
NETWORK_MAX = 32
STATUS_WORD_MAX = 32
_NETWORK = re.compile(r"^[a-z0-9_]{1,32}$")
# USD as a decimal string: digits, optionally a point and one or two decimals; a leading "-"
# only where a sign is allowed. No "+", no exponent, no thousands separator; at most 12
# integer digits (far below BigInteger's range).
_USD = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,2})?$")
_SIGNED_USD = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,2})?$")
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
    """A conversion (postback or CSV row) is malformed: missing id, bad network name, an
    amount that is not a USD decimal string with at most two decimals, or a status word we
    do not know.

    Protects: nothing half-read is stored and no revenue comes from a guessed amount or state.
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
    """A person's click on an offer link: one per offer link and clock hour (UTC).

    Attributes:
        click_id: our opaque random id, sent to the partner as the sub-id; conversions name it.
        hour: the UTC hour the click belongs to (`click_hour`); `UNIQUE(offer_link_id, hour)`.
            None only for a click recorded before migration 0011 that repeated an earlier
            click of its link in the same hour (kept: a conversion may name it).
        created_at: the first opening in that hour.
        opens: how many times the link was opened in that hour (1 or more).
        used_at: when this click unlocked an answer (mode click_to_unlock), else None.
    """

    __tablename__ = "affiliate_clicks"
    __table_args__ = (
        UniqueConstraint("offer_link_id", "hour", name="uq_affiliate_clicks_offer_link_id_hour"),
        CheckConstraint("opens >= 1", name="opens_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    click_id: Mapped[str] = mapped_column(String(CLICK_ID_MAX), unique=True)
    offer_link_id: Mapped[int] = mapped_column(ForeignKey("offer_links.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    partner_code: Mapped[str] = mapped_column(String(32))
    hour: Mapped[datetime | None] = mapped_column(UTCDateTime())
    opens: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Conversion(Base):
    """A sale a network reported, once per (network, conversion id), with its state.

    States (`status`): "pending" (reported, not yet approved by the
    partner), "approved" (commission confirmed: booked as revenue when attributed), "reversed"
    (declined before approval, or taken back after it: a reversing revenue entry then). Moves
    only go forward in that order.

    Attributes:
        network: the affiliate network's name as in the webhook path or the CLI ("awin").
        conversion_id: the network's id of the conversion.
        click_id: our click id as the network reported it (None when absent or not ours).
        account_id: the account that clicked (None: unattributed, never any revenue).
        partner_code: the clicked partner's code (None when unattributed).
        sale_amount_cents: the sale, US cents (as approved, else as first reported).
        commission_musd: our commission, µUSD (as approved, else as first reported).
        status: "pending", "approved" or "reversed".
        created_at: when the conversion was first reported: its own month, for the report.
        approved_at: when it was approved (the month its revenue counts in), else None.
        reversed_at: when it was declined or reversed, else None.
        booked_musd: the commission booked as revenue at approval, µUSD (0 when unattributed
            or zero); a reversal books minus this.
    """

    __tablename__ = "affiliate_conversions"
    __table_args__ = (
        UniqueConstraint("network", "conversion_id",
                         name="uq_affiliate_conversions_network_conversion_id"),
        CheckConstraint("sale_amount_cents >= 0 AND commission_musd >= 0",
                        name="amounts_not_negative"),
        CheckConstraint(f"status IN ({', '.join(repr(v) for v in CONVERSION_STATES)})",
                        name="status_known"),
        CheckConstraint(
            "(status = 'pending' AND approved_at IS NULL AND reversed_at IS NULL)"
            " OR (status = 'approved' AND approved_at IS NOT NULL AND reversed_at IS NULL)"
            " OR (status = 'reversed' AND reversed_at IS NOT NULL)",
            name="status_times_agree"),
        CheckConstraint("booked_musd >= 0 AND (booked_musd = 0 OR approved_at IS NOT NULL)",
                        name="booked_when_approved"),
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
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    booked_musd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


@dataclass(frozen=True)
class ConversionOutcome:
    """What `record_conversion` did.

    Attributes:
        changed: True when the conversion was stored or moved to a later state now; False for
            a repeat, or a report of an earlier state (nothing written).
        status: the conversion's state after the call.
        revenue_musd: revenue booked by this call, µUSD: the commission on approval, minus the
            booked commission on a reversal after approval, else 0.
        created: True when this call stored the conversion (its first report).
    """

    changed: bool
    status: str
    revenue_musd: int = 0
    created: bool = False


class ImportResult(NamedTuple):
    """What `import_csv` did: rows that added a conversion, rows that updated a known one (moved
    it to a later state), rows that changed nothing (repeats, earlier states), and one message
    per bad row ("line N: reason"). `added, updated, repeated, errors = import_csv(...)`."""

    added: int
    updated: int
    repeated: int
    errors: list[str]


# --- offers and clicks --------------------------------------------------------------------

def offer_url(public_base_url: str, token: str) -> str:
    """The public URL of an offer link: `PUBLIC_BASE_URL/r/<token>`."""
    return f"{public_base_url.rstrip('/')}/r/{token}"


# The reusable links of one account, intent and set of partners (`issue_offer_links`), built
# once: building the statement on each turn cost as much as SQLAlchemy's cached run of it.
_REUSABLE_LINKS = (
    select(OfferLink)
    .where(OfferLink.account_id == bindparam("account_id"),
           OfferLink.intent == bindparam("intent"),
           OfferLink.partner_code.in_(bindparam("codes", expanding=True)),
           OfferLink.expires_at > bindparam("fresh_after"))
    .order_by(OfferLink.expires_at.desc(), OfferLink.id.desc()))


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
    The reusable links of all the partners are read with one SELECT (a link is made at most
    every half `ttl` per partner, so there are a few at most).

    Args:
        session: the caller's session; this function flushes the links it makes (so they
            have ids), never commits.
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
    if not partners:
        return []
    fresh_after = now + ttl / 2
    newest: dict[str, OfferLink] = {}
    for found in session.scalars(_REUSABLE_LINKS, {
            "account_id": account_id, "intent": intent,
            "codes": [partner.code for partner in partners], "fresh_after": fresh_after}):
        newest.setdefault(found.partner_code, found)
    issued: list[tuple[Partner, OfferLink]] = []
    for partner in partners:
        link = newest.get(partner.code)
        if link is None:
            link = OfferLink(token=secrets.token_urlsafe(24), account_id=account_id,
                             partner_code=partner.code, intent=intent, created_at=now,
                             expires_at=now + ttl)
            session.add(link)
        issued.append((partner, link))
    if len(newest) < len(partners):  # some links were made
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


def click_hour(moment: datetime) -> datetime:
    """The clock hour (UTC) a click at `moment` belongs to: `moment` truncated to the hour.

    One click per offer link (so per person) and hour: 12:00:00 to 12:59:59 is one hour,
    13:00 starts the next.
    """
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# One statement: a new click for the link's hour, or one more opening of the hour's click;
# either way it returns the hour's click id (compiled once, `tokens.base.insert_on_conflict`).
# On PostgreSQL a concurrent opening waits on the conflicting row and then counts on it.
_STORE_CLICK = insert_on_conflict(
    Click.__table__,
    ("click_id", "offer_link_id", "account_id", "partner_code", "hour", "opens", "created_at"),
    ("offer_link_id", "hour"), add=("opens",), returning=("click_id", "opens"))


def record_click(session: Session, token: str, catalog: Catalog,
                 now: datetime | None = None) -> str:
    """Record a click on the offer link `token` and return where to send the person.

    One click per offer link and clock hour (UTC): the first opening in an hour records a
    `Click` with a new random click id; every later opening of the link in that hour, also a
    concurrent one, counts one more `opens` on the same click and gets the same click id, so
    the partner sees one sub-id per person, link and hour. The target is the partner's URL
    template from `catalog` (the current one), checked again here. The caller must not call
    this for link previews and prefetches (app/affiliates does the filtering).

    Args:
        session: the caller's session; this function writes one statement, never commits.
        token: the token from `/r/<token>`.
        catalog: the economy catalog in force.
        now: the current time (UTC).

    Returns:
        The partner URL with the hour's click id as sub-id.

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
    fresh = secrets.token_urlsafe(24)
    partner_url(partner, fresh, settings.allowed_domains)  # refuse before writing anything
    click_id, _opens = session.execute(_STORE_CLICK, {
        "click_id": fresh, "offer_link_id": link.id, "account_id": link.account_id,
        "partner_code": partner.code, "hour": click_hour(now), "opens": 1, "created_at": now,
    }).one()
    return partner_url(partner, str(click_id), settings.allowed_domains)


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


def usd_to_cents(value: object, field: str, *, signed: bool = False) -> int:
    """Parse a USD amount given as a decimal string ("12.50") into US cents.

    Floats and numbers are refused (binary rounding); so are "+", exponents, more than two
    decimals and more than 12 integer digits. A leading "-" only when `signed` (a network's
    reversal: "-4.50" -> -450).

    Raises:
        InvalidConversion: naming `field` and the value.
    """
    pattern = _SIGNED_USD if signed else _USD
    if not isinstance(value, str) or not pattern.match(value.strip()):
        kind = "a USD amount" if signed else "a non-negative USD amount"
        raise InvalidConversion(
            f"{field}: {kind} as a decimal string like \"12.50\" is required, "
            f"not {_shown(value)}")
    try:
        cents = Decimal(value.strip()) * CENTS_PER_USD
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise InvalidConversion(f"{field}: not a decimal amount: {_shown(value)}") from exc
    return int(cents)


def conversion_status(word: object, sale_amount_cents: int, commission_cents: int) -> str:
    """The state a network's report asks for: "pending", "approved" or "reversed".

    A negative amount is a reversal whatever the word (networks report a reversed commission
    as a negative amount). Otherwise the word decides (`STATUS_WORDS`, case-insensitive);
    no word (None or blank) means "approved": a network that reports no states reports
    confirmed commissions.

    Raises:
        InvalidConversion: the word is not a string, or not a known status word.
    """
    if word is not None and not isinstance(word, str):
        raise InvalidConversion("status: a string or null is required")
    if sale_amount_cents < 0 or commission_cents < 0:
        return "reversed"
    key = re.sub(r"[\s-]+", "_", (word or "").strip().lower())
    if not key:
        return "approved"
    state = STATUS_WORDS.get(key) if len(key) <= STATUS_WORD_MAX else None
    if state is None:
        raise InvalidConversion(
            f"status: {_shown(word)} is not a status we know (pending, approved, declined, "
            "reversed, or an amount's sign)")
    return state


def booking_key(network: str, conversion_id: str) -> str:
    """The revenue idempotency key of a conversion's approval (as before migration 0011)."""
    return f"affiliate:{network}:{conversion_id}"


def reversal_key(network: str, conversion_id: str) -> str:
    """The revenue idempotency key of a conversion's reversal after approval. Its prefix is
    not "affiliate:", so no (network, conversion id) pair can spell it as a booking key."""
    return f"affiliate-reversal:{network}:{conversion_id}"


def record_conversion(
    session: Session,
    network: str,
    conversion_id: str,
    click_id: str | None,
    sale_amount_cents: int,
    commission_cents: int,
    now: datetime | None = None,
    *,
    status: str | None = None,
) -> ConversionOutcome:
    """Apply one report of a conversion: store it, or move it to a later state.

    The state asked for is `conversion_status(status, sale, commission)`. A first report
    stores the conversion, attributed to the account of the click `click_id` names (an
    unknown or missing click id: unattributed). A later report moves it only forward
    (pending -> approved -> reversed, or pending -> reversed); the same or an earlier state
    changes nothing, so reports may arrive in any order and any number of times.

    Revenue (kind "affiliate", `tokens.costs.record_revenue`), only when attributed:
    - on approval (first report "approved", or pending -> approved): +commission µUSD =
      `cents_to_musd(commission_cents)` if > 0, in the month of `now` (the approval's),
      key `booking_key`; the approving report's amounts replace the pending ones;
    - on reversal after approval: minus what was booked, once, key `reversal_key`. A
      conversion declined before approval books nothing.
    The row and its revenue are written together or not at all (one savepoint). Safe under
    concurrency: the account is locked first, and the move is a compare-and-set on the state.

    Args:
        session: the caller's session; this function flushes, never commits.
        network: the network's name ("awin"), normalised by `normalise_network`.
        conversion_id: the network's conversion id (1-100 characters).
        click_id: our click id as the network reported it, or None.
        sale_amount_cents, commission_cents: US cents; negative means a reversal (the
            magnitudes are stored).
        now: the current time (UTC).
        status: the network's status word ("pending", "approved", "declined", ...), or None.

    Returns:
        `ConversionOutcome(changed, status, revenue_musd)`.

    Raises:
        InvalidConversion: bad network name, empty or too long conversion id, non-integer
            amounts, or an unknown status word.
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
        if type(amount) is not int:
            raise InvalidConversion(f"{name}: a whole number of cents is required")
    if click_id is not None and not isinstance(click_id, str):
        raise InvalidConversion("click_id: a string or null is required")
    click_id = (click_id or "").strip() or None
    if click_id is not None and not _storable(click_id):
        raise InvalidConversion("click_id: NUL or unpaired surrogate characters")
    if click_id is not None and len(click_id) > CLICK_ID_MAX:
        click_id = None  # not one of ours: keep the conversion, unattributed
    target = conversion_status(status, sale_amount_cents, commission_cents)
    report = _Report(network, conversion_id, target, abs(sale_amount_cents),
                     cents_to_musd(abs(commission_cents)), now)

    # Each failed attempt means another writer stored the row or moved its state forward
    # meanwhile; with three states that happens at most three times, so four attempts end.
    for _ in range(4):
        row = _find(session, report)
        account_id = row.account_id if row is not None else None
        click = None
        if row is None and click_id is not None:
            click = session.scalars(select(Click).where(Click.click_id == click_id)).first()
            account_id = click.account_id if click is not None else None
        if account_id is not None:
            lock_account(session, account_id)  # the account first, as everywhere
            row = _find(session, report)  # again: it may have changed while we waited
        outcome = (_insert(session, report, click_id, click) if row is None
                   else _advance(session, row, report))
        if outcome is not None:
            return outcome
    raise RuntimeError("conversion state kept changing")  # pragma: no cover - see above


@dataclass(frozen=True)
class _Report:
    """One checked report: magnitudes in cents and µUSD, the state it asks for."""

    network: str
    conversion_id: str
    status: str
    sale_cents: int
    commission_musd: int
    now: datetime


def _find(session: Session, report: _Report) -> Conversion | None:
    """The stored conversion, read afresh (not from the session's identity map)."""
    return session.scalars(
        select(Conversion)
        .where(Conversion.network == report.network,
               Conversion.conversion_id == report.conversion_id)
        .execution_options(populate_existing=True)
    ).first()


def _memo(report: _Report, what: str) -> str:
    return f"{report.network} conversion {report.conversion_id} {what}"[:200]


def _insert(session: Session, report: _Report, click_id: str | None,
            click: Click | None) -> ConversionOutcome | None:
    """Store a first report; None when a concurrent first report stored it meanwhile."""
    now, approved = report.now, report.status == "approved"
    booked = report.commission_musd if approved and click is not None else 0
    conversion = Conversion(
        network=report.network, conversion_id=report.conversion_id, click_id=click_id,
        account_id=click.account_id if click else None,
        partner_code=click.partner_code if click else None,
        sale_amount_cents=report.sale_cents, commission_musd=report.commission_musd,
        status=report.status, created_at=now, approved_at=now if approved else None,
        reversed_at=now if report.status == "reversed" else None, booked_musd=booked,
    )
    try:
        with session.begin_nested():
            session.add(conversion)
            session.flush()
            if click is not None and booked > 0:
                record_revenue(session, click.account_id, "affiliate", booked,
                               key=booking_key(report.network, report.conversion_id),
                               memo=_memo(report, "approved"), now=now)
    except IntegrityError:
        if _find(session, report) is None:  # not a concurrent first report: a real error
            raise
        return None
    return ConversionOutcome(changed=True, status=report.status, revenue_musd=booked,
                             created=True)


def _advance(session: Session, row: Conversion,
             report: _Report) -> ConversionOutcome | None:
    """Move `row` to the report's state if that is later; None when another writer moved it
    first (the caller reads it again)."""
    current = row.status
    if _RANK[report.status] <= _RANK[current]:
        return ConversionOutcome(changed=False, status=current)
    now = report.now
    values: dict[str, object] = {"status": report.status}
    revenue, key, memo = 0, "", ""
    if report.status == "approved":  # from pending
        revenue = report.commission_musd if row.account_id is not None else 0
        values.update(approved_at=now, sale_amount_cents=report.sale_cents,
                      commission_musd=report.commission_musd, booked_musd=revenue)
        key, memo = booking_key(row.network, row.conversion_id), _memo(report, "approved")
    else:  # reversed, from pending (declined: nothing was booked) or from approved
        values.update(reversed_at=now)
        revenue = -row.booked_musd
        key, memo = reversal_key(row.network, row.conversion_id), _memo(report, "reversed")
    with session.begin_nested():
        moved = session.execute(
            update(Conversion)
            .where(Conversion.id == row.id, Conversion.status == current)
            .values(**values)
            .execution_options(synchronize_session="fetch"))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            return None
        if revenue != 0 and row.account_id is not None:
            revenue = record_revenue(session, row.account_id, "affiliate", revenue, key=key,
                                     memo=memo, now=now)
    return ConversionOutcome(changed=True, status=report.status, revenue_musd=revenue)


def import_csv(session: Session, network: str, text: str,
               now: datetime | None = None,
               after_row: Callable[[], None] | None = None) -> ImportResult:
    """Import a network's conversion report (CSV), idempotent per conversion id and state.

    The header names the columns `conversion_id,click_id,sale_amount,commission` and
    optionally `status` (any order, any case; other columns are ignored); amounts are USD
    decimal strings ("12.50", "-4.50" for a reversal). Each good row goes through
    `record_conversion` (so a report may approve or reverse a conversion imported or posted
    before). A bad row (missing id, bad amount, unknown status, wrong number of fields) is
    skipped and reported as "line N: reason"; nothing of it is written.

    Args:
        session: the caller's session; this function flushes, never commits.
        network: the network the report comes from ("awin").
        text: the file's text (a UTF-8 byte-order mark is ignored).
        now: the current time (UTC): approvals in the file count in its month.
        after_row: called after each row that changed something (the CLI commits there, so a
            large import holds one person's lock at a time).

    Returns:
        `ImportResult(added, updated, repeated, errors)`.

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
    where = {name: header.index(name) for name in (*CSV_COLUMNS, *CSV_OPTIONAL_COLUMNS)
             if name in header}
    added = updated = repeated = 0
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
            sale = usd_to_cents(values["sale_amount"], "sale_amount", signed=True)
            commission = usd_to_cents(values["commission"], "commission", signed=True)
            outcome = record_conversion(session, network, values["conversion_id"],
                                        values["click_id"] or None, sale, commission, now,
                                        status=values.get("status") or None)
        except InvalidConversion as exc:
            errors.append(f"line {line}: {exc}")
            continue
        if not outcome.changed:
            repeated += 1
            continue
        if outcome.created:
            added += 1
        else:
            updated += 1
        if after_row is not None:
            after_row()
    return ImportResult(added=added, updated=updated, repeated=repeated, errors=errors)


def _shown(value: object) -> str:
    """A short repr of a rejected value for an error message (at most 40 characters)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
