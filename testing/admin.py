"""An admin user and a logged-in test client, for the admin pages' tests and bench/report.py,
and readers of the pages' tables, sections and KPI boxes."""

from __future__ import annotations

import html
import re

from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db
from tokens.admin import create_user

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_admin(username: str = "alice", password: str = PASSWORD) -> None:
    """Create an admin user (committed)."""
    create_user(db.session, username, password)
    db.session.commit()


def csrf_token(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token of the form on `path` (the session's token)."""
    page = client.get(path)
    found = CSRF.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def logged_in(app: Flask, username: str = "alice", password: str = PASSWORD) -> FlaskClient:
    """A test client logged in as a new admin `username`."""
    make_admin(username, password)
    client = app.test_client()
    response = client.post("/admin/login", data={
        "username": username, "password": password, "csrf_token": csrf_token(client)})
    assert response.status_code == 303, response.get_data(as_text=True)
    return client


def cells(page: str, marker: str) -> list[str]:
    """The cell texts (tags stripped, whitespace collapsed) of the first table row holding
    `marker`."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S):
        if marker in row:
            return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
                    for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    raise AssertionError(f"no table row holds {marker!r}")


def section(page: str, heading: str) -> str:
    """The page from the <h2> starting with `heading` to the next <h2>."""
    found = re.search(r"<h2>" + re.escape(heading) + r".*?</h2>(.*?)(?=<h2>|$)", page, re.S)
    assert found, f"no section {heading!r}"
    return found.group(1)


def kpi(page: str, label: str) -> str:
    """The value of the KPI box labelled `label`."""
    found = re.search(re.escape(f'<div class="label">{label}</div>') + r"\s*"
                      r'<div class="value[^"]*"[^>]*>([^<]*)</div>', page)
    assert found, f"no KPI {label!r}"
    return found.group(1).strip()
