"""The ledger's and the profit engine's tests run on a session with no Flask app
(`db_session`): `tokens/` imports nothing of Flask, and its tests need nothing of it. The few
that drive the app too (concurrent writers through the app's engine, a migration, the admin
API) ask for `app` as well, and read through their own session."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session


@pytest.fixture
def session(db_session: Session) -> Session:
    """The Flask-free session (`tests.conftest.db_session`)."""
    return db_session
