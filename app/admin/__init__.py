"""Admin surfaces: the login-protected pages (`/admin/...`, `app.admin.web`) and the bearer-token
API (`/admin/api/...`, `app.admin.api`)."""

from __future__ import annotations

from app.admin import ops, pages  # noqa: F401  (their routes join `web.bp`)
from app.admin.api import bp as api_bp
from app.admin.web import bp as pages_bp

__all__ = ["api_bp", "pages_bp"]
