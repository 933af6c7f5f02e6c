"""Report pages. Stub: filled in next."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from app.admin.web import bp


@bp.get("/")
def overview() -> ResponseReturnValue:
    return render_template("admin/error.html", title="Overview", message="coming")


@bp.get("/people")
def people() -> ResponseReturnValue:
    return render_template("admin/error.html", title="People", message="coming")


@bp.get("/people/<int:account_id>")
def person(account_id: int) -> ResponseReturnValue:
    return render_template("admin/error.html", title="Person", message="coming")
