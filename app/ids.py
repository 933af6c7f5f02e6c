"""The `<id:name>` URL converter: a database id in a path, 404 when out of range.

Werkzeug's `<int:...>` accepts any number of digits, and a number past the database's integer
(`GET /admin/people/99999999999999999999999`) made SQLite raise OverflowError and PostgreSQL
"integer out of range": a 500. `<id:...>` matches only 1 to `MAX_ID`, the range of the
`Integer` primary keys (32-bit on PostgreSQL), so anything else is a plain 404 before the
view runs.
"""

from __future__ import annotations

import builtins
from typing import Any

from flask import Blueprint
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import IntegerConverter, Map

MAX_ID = 2**31 - 1  # PostgreSQL's `integer`, what `sqlalchemy.Integer` columns are


class IdConverter(IntegerConverter):
    """`<id:name>`: ASCII digits only, 1 to `MAX_ID` (an `int` for the view); anything else
    does not match (404). Narrower bounds may be given, e.g. `<id(max=1000):n>`."""

    regex = r"[0-9]+"

    def __init__(self, url_map: Map, min: int = 1, max: int = MAX_ID) -> None:
        super().__init__(url_map, min=builtins.max(min, 1), max=builtins.min(max, MAX_ID))


def use_id_converter(bp: Blueprint) -> None:
    """Make `<id:...>` available to `bp`'s routes: call it before the first route is added
    (the converter joins the app's `url_map` when the blueprint is registered, before its
    routes)."""

    def register(state: BlueprintSetupState) -> None:
        converters: dict[str, Any] = state.app.url_map.converters
        converters.setdefault("id", IdConverter)

    bp.record_once(register)
