"""A person's own account page (issue #20, docs/account.md).

- `GET /account/link/<token>`: the link ACCOUNT sent. A valid one (`tokens.account_links`)
  starts a page session for its account (Flask's signed cookie: HttpOnly, SameSite=Lax,
  Secure in production) for 15 minutes, and answers 303 to `/account`, so the token leaves
  the address bar. Unknown: 404; expired: 410; each a clear page. The token is masked in every
  log line (`app.logs.BEARER_ROUTES`).
- `GET /account`: the page (`tokens.statement`), in the person's language; without a page
  session, 401 and how to get a link. It shows that one account and nothing else: numbers
  masked, no message text.
- Actions are POST forms with a CSRF token and a random key; `claim_action` makes a double
  submit act once (the second is sent where the first went). Buy (a pack or premium: the
  same pay link as BUY, 303 to `/pay/<token>`), auto top-up on or off, language, the billing
  portal, and delete my data (a confirmation page first; then what `contacts forget` does, for
  every number of the account, and the page session ends).

Pages send no script and no inline style (`ACCOUNT_CSP`), only `/account/style.css`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from markupsafe import Markup, escape
from sqlalchemy import select

from app.billing import notice_language, payment_provider
from app.extensions import bot_settings, csrf, db
from bot import allergies, replies
from bot.contacts import chosen_language, erasure_key, forget
from bot.knowledge import load_knowledge
from bot.models import Contact
from bot.router import BotSettings
from tokens import account_links, auto_topup, payments, statement
from tokens.account_links import AccountAction, AccountLink
from tokens.base import utcnow
from tokens.catalog import LANGUAGES
from tokens.errors import AccountLinkExpired, AccountLinkNotFound
from tokens.money import format_cents

bp = Blueprint("account", __name__)
HERE = Path(__file__).resolve().parent
TEXTS_PATH = HERE / "texts.yaml"
STYLE_PATH = HERE / "style.css"
# No script at all, styles only from this app's stylesheet, no other origin (no third-party
# assets); forms post here, and may be redirected on to the provider's https checkout.
ACCOUNT_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; "
               "form-action 'self' https:; frame-ancestors 'none'; base-uri 'none'")
# The page session's keys in Flask's session (beside the admin's, which they never touch).
LINK_KEY, UNTIL_KEY = "account_link", "account_until"


@functools.cache
def texts() -> dict[str, dict[str, str]]:
    """The page's words (`texts.yaml`): key -> language -> text.

    Raises:
        ValueError: a key without both languages, or whose languages' placeholders differ.
    """
    raw = yaml.safe_load(TEXTS_PATH.read_text(encoding="utf-8"))
    for key, values in raw.items():
        if not isinstance(values, dict) or set(values) != set(LANGUAGES):
            raise ValueError(f"{TEXTS_PATH.name}: {key} needs exactly {', '.join(LANGUAGES)}")
        holes = {lang: replies.placeholders(text) for lang, text in values.items()}
        if len(set(holes.values())) != 1:
            raise ValueError(f"{TEXTS_PATH.name}: {key} has other placeholders in each language")
    return raw  # type: ignore[no-any-return]


def text(key: str, lang: str, **values: Any) -> str:
    """The page's text `key` in `lang`, with `values` filled in (`str.format`)."""
    return texts()[key][replies.language(lang)].format(**values)


def _settings() -> BotSettings:
    return bot_settings()


def _bot_name() -> str:
    return _settings().catalog.bot_name


def _lang() -> str:
    """The language of this request's page: the person's, else English."""
    lang = g.get("account_lang")
    return lang if isinstance(lang, str) else "en"


@bp.app_template_global("t")
def _t(key: str, **values: Any) -> str:
    return text(key, _lang(), **values)


@bp.before_request
def _check() -> None:
    """Every POST must carry this session's CSRF token (Flask-WTF): 400 otherwise."""
    g.pop("csrf_token", None)  # the token must come from this request's session
    if request.method == "POST":
        csrf.protect()


@bp.after_request
def _headers(response: Response) -> Response:
    """No caching, no framing, no script (`ACCOUNT_CSP`)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = ACCOUNT_CSP
    return response


@bp.errorhandler(CSRFError)
def _csrf_failed(_error: CSRFError) -> ResponseReturnValue:
    _session_account()  # the page's language, when the session is good
    return _message("error_form_heading", "error_form", 400, back=True)


def _message(heading: str, body: str, status: int, *, back: bool = False) -> ResponseReturnValue:
    return render_template("account/message.html", heading=heading, body=body,
                           bot_name=_bot_name(), lang=_lang(), back=back), status


# --- the link and the page session ---------------------------------------------------------


@bp.get("/account/link/<token>")
def open_link(token: str) -> ResponseReturnValue:
    """Open an account link: start a 15-minute page session, 303 to /account.

    Returns:
        303 to `/account`; 404 unknown token; 410 expired link (each a page that says to text
        ACCOUNT for a new one).
    """
    now = utcnow()
    try:
        link = account_links.open_link(db.session, token, now)
    except AccountLinkNotFound:
        return _message("error_unknown_heading", "error_unknown", 404)
    except AccountLinkExpired:
        return _message("error_expired_heading", "error_expired", 410)
    link_id = link.id
    db.session.commit()
    # Only this page's keys change: whatever else the cookie holds (an admin's session) stays,
    # and another account's page session in this browser is replaced, never mixed.
    session[LINK_KEY] = link_id
    session[UNTIL_KEY] = int(time.time() + account_links.LINK_TTL.total_seconds())
    return redirect(url_for("account.page"), code=303)


def _session_account() -> int | None:
    """The account of this request's page session, or None (none, ended, or its link gone:
    delete my data deletes the links, which ends every page session of the account)."""
    link_id, until = session.get(LINK_KEY), session.get(UNTIL_KEY)
    if not isinstance(link_id, int) or not isinstance(until, int) or time.time() >= until:
        return None
    account_id = db.session.scalar(select(AccountLink.account_id).where(AccountLink.id == link_id))
    if account_id is not None:
        g.account_lang = notice_language(db.session, account_id)
    return account_id


def _end_session() -> None:
    session.pop(LINK_KEY, None)
    session.pop(UNTIL_KEY, None)


def _signed_out() -> ResponseReturnValue:
    return _message("error_signed_out_heading", "error_signed_out", 401)


@bp.get("/account")
def page() -> ResponseReturnValue:
    """The account page; 401 without a page session."""
    account_id = _session_account()
    if account_id is None:
        return _signed_out()
    settings = _settings()
    now = utcnow()
    figures = statement.statement(db.session, account_id, settings.catalog, now)
    contacts = db.session.execute(select(Contact.address, Contact.allergies)
                                  .where(Contact.account_id == account_id)
                                  .order_by(Contact.id)).all()
    numbers = [address for address, _ in contacts]
    # What the person told the bot they are allergic to, on any number, oldest first.
    remembered = tuple(dict.fromkeys(k for _, stored in contacts
                                     for k in allergies.decode(stored)))
    db.session.commit()
    until = datetime.fromtimestamp(session[UNTIL_KEY], UTC)
    return render_template(
        "account/page.html", s=figures, catalog=settings.catalog, lang=_lang(),
        bot_name=settings.catalog.bot_name, numbers=[masked_number(n) for n in numbers],
        until=f"{until:%H:%M}", payments_on=payment_provider(_app()) is not None,
        unpaid=payments.has_unpaid_subscription(db.session, account_id),
        flashes=get_flashed_messages(), languages=LANGUAGES,
        language_names={"en": "English", "es": "Español"},
        allergies=allergies.labels(remembered, load_knowledge(), _lang()))



def masked_number(address: str) -> str:
    """A number as the page shows it: the country code's first digit and the last four,
    "+1 ••• ••• 8893"; a WhatsApp id without a number, "WhatsApp ••• 4321". Never whole."""
    if address.startswith("+") and len(address) > 6:
        return f"{address[:2]} ••• ••• {address[-4:]}"
    return f"WhatsApp ••• {address[-4:]}" if len(address) > 8 else "WhatsApp •••"


def _app() -> Any:
    return current_app._get_current_object()  # type: ignore[attr-defined]


# --- actions -------------------------------------------------------------------------------


def _act(action: str, run: Callable[[int], str]) -> ResponseReturnValue:
    """One action of the page, once per form key: check the session, claim the key, `run`
    it (it returns where to send the person: a path), commit, 303 there. A repeat submit of
    the same form is sent where the first went; a refused input is a 400 page."""
    account_id = _session_account()
    if account_id is None:
        return _signed_out()
    try:
        key = request.form.get("key", "")
        claim = account_links.claim_action(db.session, account_id, key, action, utcnow())
        if not claim.first:
            db.session.commit()
            return redirect(claim.result or url_for("account.page"), code=303)
        target = run(account_id)
        account_links.finish_action(db.session, key, target)
    except ValueError:
        db.session.rollback()
        return _message("error_form_heading", "error_form", 400, back=True)
    db.session.commit()
    return redirect(target, code=303)


def _pay_path(account_id: int, code: str, purpose: str) -> str:
    """The path of a pay link for `code` (`tokens.payments.issue_pay_link`, as BUY does)."""
    link = payments.issue_pay_link(db.session, account_id, code, purpose=purpose,
                                   ttl_seconds=_settings().catalog.pay_link_ttl_seconds)
    return f"/pay/{link.token}"


@bp.post("/account/buy")
def buy() -> ResponseReturnValue:
    """Buy a pack (`item` = its code) or premium (`item` = "premium"): the same pay link as BUY
    and BUY PREMIUM (a subscriber, or one whose payment is missing, gets the billing portal),
    303 to it."""
    def run(account_id: int) -> str:
        catalog = _settings().catalog
        item = request.form.get("item", "")
        if payment_provider(_app()) is None:
            raise ValueError("payments are not enabled")
        if item == "premium":
            now = utcnow()
            if payments.has_premium(db.session, account_id, now, catalog.premium.grace_days) \
                    or payments.has_unpaid_subscription(db.session, account_id):
                return _pay_path(account_id, "", "portal")
            return _pay_path(account_id, catalog.premium.code, "premium")
        if item not in catalog.packs:
            raise ValueError("no such pack")
        return _pay_path(account_id, item, "pack")
    return _act("buy", run)


@bp.post("/account/portal")
def portal() -> ResponseReturnValue:
    """The billing portal (change the card, see invoices, cancel), through a portal pay link."""
    def run(account_id: int) -> str:
        if payment_provider(_app()) is None:
            raise ValueError("payments are not enabled")
        return _pay_path(account_id, "", "portal")
    return _act("portal", run)


@bp.post("/account/auto-topup")
def auto_topup_switch() -> ResponseReturnValue:
    """Auto top-up on (`on` = "1") or off ("0"), as AUTO ON and AUTO OFF: on at once with a
    saved card, else the pay link whose checkout saves the card (the person's consent)."""
    def run(account_id: int) -> str:
        catalog, now = _settings().catalog, utcnow()
        wanted = request.form.get("on", "")
        if wanted not in ("0", "1") or payment_provider(_app()) is None:
            raise ValueError("auto top-up: on must be 0 or 1, with payments enabled")
        if wanted == "0":
            auto_topup.turn_off(db.session, account_id, now)
            flash(text("auto_done_off", _lang()))
            return url_for("account.page")
        pack = catalog.auto_topup_pack()
        result = auto_topup.request_on(db.session, account_id, pack.code, now)
        if result.kind == "enabled":
            flash(text("auto_done_on", _lang()))
            return url_for("account.page")
        return _pay_path(account_id, pack.code, "auto_topup")
    return _act("auto_topup", run)


@bp.post("/account/language")
def language() -> ResponseReturnValue:
    """Choose the language of the person's messages and of this page (`lang` "en" or "es"),
    as LANGUAGE EN / IDIOMA ES does: chosen for good, on every number of the account."""
    def run(account_id: int) -> str:
        lang = request.form.get("lang", "")
        state = chosen_language(lang, utcnow())  # ValueError: not a language the bot speaks
        for contact in db.session.scalars(select(Contact).where(Contact.account_id == account_id)):
            state.write(contact)
        g.account_lang = lang
        flash(text("language_done", lang))
        return url_for("account.page")
    return _act("language", run)


@bp.post("/account/allergies")
def forget_allergies() -> ResponseReturnValue:
    """Forget the allergies the person told the bot about, on every number of the account, as
    FORGET ALLERGIES does (docs/messaging.md, "Allergies")."""
    def run(account_id: int) -> str:
        for contact in db.session.scalars(select(Contact).where(Contact.account_id == account_id)):
            contact.allergies = None
        flash(text("allergies_done", _lang()))
        return url_for("account.page")
    return _act("allergies", run)


@bp.get("/account/delete")
def delete_confirm() -> ResponseReturnValue:
    """Delete my data, step one: what goes, what stays, and the button that confirms."""
    if _session_account() is None:
        return _signed_out()
    return render_template("account/delete.html", lang=_lang(), bot_name=_bot_name())


@bp.post("/account/delete")
def delete() -> ResponseReturnValue:
    """Delete my data, confirmed: every number of the account is forgotten as `contacts
    forget` does (messages, consent log, the contact; a keyed hash of the number stays with
    the account), the account's links are deleted (every page session ends), 303 to the page
    that says what is kept for accounting. A repeat submit goes there too."""
    key = request.form.get("key", "")
    if _session_account() is None and account_links.FORM_KEY.fullmatch(key) and db.session.scalar(
            select(AccountAction.id).where(AccountAction.key == key,
                                           AccountAction.action == "delete")):
        return redirect(url_for("account.deleted", lang=_lang()), code=303)

    def run(account_id: int) -> str:
        lang = _lang()
        secret = erasure_key(current_app.config["SECRET_KEY"])
        addresses = db.session.scalars(
            select(Contact.address).where(Contact.account_id == account_id)).all()
        for address in addresses:
            forget(db.session, address, secret)
        account_links.forget_links(db.session, account_id)
        _end_session()
        current_app.logger.info("account page: data deleted",
                                extra={"account": account_id, "numbers": len(addresses)})
        return url_for("account.deleted", lang=lang)
    return _act("delete", run)


@bp.get("/account/deleted")
def deleted() -> ResponseReturnValue:
    """What was deleted and what is kept for accounting (no session: there is none left)."""
    lang = request.args.get("lang", "en")
    g.account_lang = lang if lang in LANGUAGES else "en"
    return render_template("account/deleted.html", lang=_lang(), bot_name=_bot_name())


@bp.get("/account/style.css")
def style() -> ResponseReturnValue:
    """The pages' only stylesheet (the CSP allows no inline style)."""
    return Response(_style(), content_type="text/css; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=3600"})


@functools.cache
def _style() -> str:
    return STYLE_PATH.read_text(encoding="utf-8")


# --- template helpers ----------------------------------------------------------------------


@bp.app_template_filter("account_money")
def _money(cents: int, currency: str = "usd") -> str:
    return format_cents(cents, currency)


@bp.app_template_filter("account_date")
def _date(moment: datetime | None) -> str:
    return replies.date_text(moment, _lang()) if moment is not None else ""


@bp.app_template_filter("account_when")
def _when(moment: datetime) -> str:
    return f"{replies.date_text(moment, _lang())}, {moment:%H:%M} UTC"


@bp.app_template_global("intent_label")
def _intent_label(name: str | None) -> str:
    catalog = _settings().catalog
    for spec in catalog.intents:
        if spec.name == name:
            return spec.label_in(_lang())
    return text("unknown_intent", _lang())


@bp.app_template_global("hidden_fields")
def _hidden_fields() -> Markup:
    """The CSRF token and a fresh idempotency key of one form."""
    from flask_wtf.csrf import generate_csrf

    return Markup(f'<input type="hidden" name="csrf_token" value="{escape(generate_csrf())}">'
                  f'<input type="hidden" name="key" value="{account_links.new_form_key()}">')
