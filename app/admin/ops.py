"""Operations pages (payments, affiliates, the webhook inbox, queue health). Stub: filled in next."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from app.admin.web import bp


@bp.get("/payments")
def payments() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Payments", message="coming")


@bp.get("/affiliates")
def affiliates() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Affiliates", message="coming")


@bp.get("/webhooks")
def webhooks() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Webhook inbox", message="coming")


@bp.get("/queues")
def queues() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Queues", message="coming")
