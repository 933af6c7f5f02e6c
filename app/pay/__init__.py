"""Pay links: `GET /pay/<token>` opens the checkout behind a link sent by SMS or WhatsApp.

The checkout is created at click time with the provider (Stripe Checkout, or the sandbox
page), from the server-side catalog only, and the person is sent there with a 303
(docs/payments.md, "Pay links"). A second click reuses the open checkout. The Stripe idempotency
key is derived from the link's token and the attempt, so a double click opens one session.
Unknown tokens get 404 and expired ones 410, each with a friendly page.
"""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Flask, current_app, redirect, render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select, update

from app.billing import payment_provider
from app.extensions import bot_settings, db
from tokens.base import insert_once
from tokens.catalog import Catalog
from tokens.errors import CatalogError, PayLinkExpired, PayLinkNotFound
from tokens.ledger import Account
from tokens.payments import Checkout, PayLink, Subscription, find_pay_link, open_checkout_for
from tokens.providers import CheckoutRequest, PaymentError, PaymentProvider

bp = Blueprint("pay", __name__)
log = logging.getLogger(__name__)


def _unavailable(reason: str, status: int) -> ResponseReturnValue:
    settings = bot_settings()
    return render_template("pay_unavailable.html", reason=reason,
                           bot_name=settings.catalog.bot_name), status


@bp.get("/pay/<token>")
def pay_link(token: str) -> ResponseReturnValue:
    """The page behind a pay link: 303 to the checkout (or the billing portal).

    Returns:
        303 to the provider; 404 unknown link; 410 expired link; 403 when an operator suspended
        the account; 503 when this server takes no payments; 502 when the provider refused
        (nothing charged).
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        link = find_pay_link(db.session, token)
    except PayLinkNotFound:
        return _unavailable("unknown", 404)
    except PayLinkExpired:
        return _unavailable("expired", 410)
    account = db.session.get(Account, link.account_id)
    if account is not None and account.suspended_at is not None:
        return _unavailable("suspended", 403)
    provider = payment_provider(app)
    if provider is None:
        return _unavailable("disabled", 503)
    try:
        if link.purpose == "portal":
            url = _portal(app, provider, link)
        else:
            url = _checkout(app, provider, link)
    except PaymentError as exc:
        log.error("checkout not created: %s", exc)
        return _unavailable("error", 502)
    except CatalogError:
        return _unavailable("unknown", 404)
    return redirect(url, code=303)


@bp.get("/pay/<token>/done")
def pay_done(token: str) -> ResponseReturnValue:
    """Where the provider sends the person back after paying."""
    settings = bot_settings()
    link = db.session.scalar(select(PayLink).where(PayLink.token == token))
    if link is None:
        return _unavailable("unknown", 404)
    paid = db.session.scalar(select(func.count()).select_from(Checkout).where(
        Checkout.pay_link_id == link.id, Checkout.status == "completed"))
    provider = payment_provider(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template("pay_done.html", bot_name=settings.catalog.bot_name,
                           paid=bool(paid),
                           provider_name="Stripe" if provider and provider.name == "stripe"
                           else "the payment")



def checkout_request(catalog: Catalog, link: PayLink, public_id: str, base_url: str,
                     attempt: int) -> CheckoutRequest:
    """The checkout to open for `link`: the premium plan or the link's pack (an "auto_topup"
    link's pack saves the card, `CheckoutRequest.save_card`), priced from the catalog
    (cents), with return URLs under `base_url` and the idempotency key
    `paylink-<sha256(token)[:32]>-<attempt>` (a new attempt after each provider failure, as
    Stripe keeps a key's result for 24 h, failures included).

    Raises:
        CatalogError: the link's pack is no longer in the catalog.
    """
    if link.purpose == "premium":
        plan = catalog.premium
        mode, code, name = "subscription", plan.code, f"{catalog.bot_name} {plan.name}"
        amount, currency, tokens, bonus = plan.price_cents, plan.currency, 0, 0
    else:
        pack = catalog.pack(link.pack_code)
        mode, code = "payment", pack.code
        name = f"{catalog.bot_name} {pack.name}: {pack.total_tokens} tokens"
        amount, currency, tokens, bonus = (pack.price_cents, pack.currency, pack.tokens,
                                           pack.bonus_tokens)
    base = base_url.rstrip("/")
    digest = hashlib.sha256(link.token.encode()).hexdigest()[:32]
    return CheckoutRequest(
        mode=mode, account_public_id=public_id, item_code=code, name=name,
        amount_cents=amount, currency=currency, tokens=tokens, bonus_tokens=bonus,
        success_url=f"{base}/pay/{link.token}/done", cancel_url=f"{base}/pay/{link.token}",
        idempotency_key=f"paylink-{digest}-{attempt}",
        # AUTO ON's link: the person consented; Stripe saves the card for off-session use.
        save_card=link.purpose == "auto_topup",
    )

def _checkout(app: Flask, provider: PaymentProvider, link: PayLink) -> str:
    """The URL of the open checkout for `link`, creating it with the provider if needed."""
    settings = bot_settings(app)
    catalog = settings.catalog
    session = db.session
    existing = open_checkout_for(session, link)
    if existing is not None:
        return existing.url
    public_id = session.scalar(select(Account.public_id).where(Account.id == link.account_id))
    # Stripe keeps a key's result for 24 h, failures included: a new key after each failure.
    attempt = 1 + link.failed_attempts + (session.scalar(
        select(func.count()).select_from(Checkout).where(Checkout.pay_link_id == link.id)) or 0)
    request = checkout_request(catalog, link, str(public_id), app.config["PUBLIC_BASE_URL"],
                               attempt)
    link_id = link.id
    session.commit()  # no transaction stays open while the provider answers
    try:
        created = provider.create_checkout(request)
    except PaymentError:
        session.execute(update(PayLink).where(PayLink.id == link_id)
                        .values(failed_attempts=PayLink.failed_attempts + 1))
        session.commit()
        raise
    checkout = Checkout(
        pay_link_id=link.id, account_id=link.account_id, provider=provider.name,
        mode=request.mode, item_code=request.item_code, amount_cents=request.amount_cents,
        currency=request.currency, tokens=request.tokens, bonus_tokens=request.bonus_tokens,
        external_id=created.external_id, url=created.url, status="open",
        expires_at=created.expires_at,
    )
    # False: a concurrent click got the same session (same idempotency key) and stored it.
    insert_once(session, checkout)
    session.commit()
    return created.url


def _portal(app: Flask, provider: PaymentProvider, link: PayLink) -> str:
    """The billing portal of the person's subscription."""
    customer = db.session.scalar(
        select(Subscription.customer_id)
        .where(Subscription.account_id == link.account_id, Subscription.customer_id.is_not(None))
        .order_by(Subscription.updated_at.desc()).limit(1)
    )
    done = f"{app.config['PUBLIC_BASE_URL']}/pay/{link.token}/done"
    db.session.commit()  # no transaction stays open while the provider answers
    if customer is None:
        raise CatalogError("no subscription to manage")
    return provider.create_portal(customer, done)
