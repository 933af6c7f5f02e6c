"""Bearer-token checks for the machine-read endpoints (the admin API, `/metrics`)."""

from __future__ import annotations

import hmac

from flask import Response, request


def bearer_refused(token: str, realm: str) -> Response | None:
    """None when the request carries `Authorization: Bearer <token>` (compared in constant
    time), else the 401 to answer, naming `realm`."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                          token.encode()):
        return None
    return Response("a valid bearer token is required\n", status=401,
                    headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
                    content_type="text/plain; charset=utf-8")
