"""Pay links: `GET /pay/<token>`.

The checkout behind a pay link (Stripe Checkout or the sandbox page) is not built yet; until it
is, a valid link shows what it will buy and says plainly that payments are not enabled on this
server. Unknown tokens get 404 and expired ones 410, each with a friendly page.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

from app.extensions import db
from bot.router import BotSettings
from tokens.errors import PayLinkExpired, PayLinkNotFound
from tokens.payments import find_pay_link

bp = Blueprint("pay", __name__)


@bp.get("/pay/<token>")
def pay_link(token: str) -> ResponseReturnValue:
    """The page behind a pay link sent by SMS or WhatsApp."""
    settings: BotSettings = current_app.extensions["bot_settings"]
    try:
        link = find_pay_link(db.session, token)
    except PayLinkNotFound:
        return render_template("pay_unavailable.html", reason="unknown",
                               bot_name=settings.catalog.bot_name), 404
    except PayLinkExpired:
        return render_template("pay_unavailable.html", reason="expired",
                               bot_name=settings.catalog.bot_name), 410
    pack = settings.catalog.pack(link.pack_code)
    return render_template("pay.html", pack=pack, bot_name=settings.catalog.bot_name,
                           expires_at=link.expires_at)
