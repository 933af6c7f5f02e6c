"""The admin API (`/admin/api/...`): the month's report as JSON and CSV, behind the
`ADMIN_API_TOKEN` bearer token (no session cookie, so no CSRF)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from app.bearer import bearer_refused
from app.extensions import bot_settings, db
from app.ids import use_id_converter
from bot.contacts import mask_address
from bot.models import Contact
from tokens.base import utcnow
from tokens.periods import Month
from tokens.reports import month_report, people_csv

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
use_id_converter(bp)  # ids in paths are `<id:...>`: 404 when out of range (app.ids)


@bp.before_request
def require_token() -> ResponseReturnValue | None:
    """Every API call needs `Authorization: Bearer <ADMIN_API_TOKEN>`; without the setting
    the API is off (404)."""
    token = current_app.config.get("ADMIN_API_TOKEN")
    if not token:
        return Response("the admin API is off: set ADMIN_API_TOKEN\n", status=404,
                        content_type="text/plain; charset=utf-8")
    return bearer_refused(token, "admin")


@bp.after_request
def no_store(response: Response) -> Response:
    """Financial data: never cached by a browser or proxy."""
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/report")
def report() -> ResponseReturnValue:
    """The month's report as JSON (`?month=YYYY-MM`, default this month), or as CSV with one
    row per person (`&format=csv`, phones masked). 400 for a malformed month."""
    label = request.args.get("month") or str(Month.of(utcnow()))
    try:
        Month.parse(label)
    except ValueError:
        return jsonify(error="month must be YYYY-MM, e.g. 2026-11"), 400
    catalog = bot_settings().catalog
    result = month_report(db.session, label, catalog)
    if request.args.get("format") == "csv":
        return Response(people_csv(result, masked_phones()),
                        content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition":
                                 f'attachment; filename="report-{label}.csv"'})
    return jsonify(result.as_json())


def masked_phones() -> dict[int, str]:
    """Account id -> the masked phone (or WhatsApp id) of its person, for reports."""
    rows = db.session.execute(select(Contact.account_id, Contact.address)).all()
    return {account_id: mask_address(address) for account_id, address in rows}
