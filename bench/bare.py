"""The bare baseline of `bench.load`: a Flask app whose webhook answers a static TwiML.

It has the inbound webhook's path and nothing else of the pipeline: no signature check, no form
parsing, no database, no Redis. Served by gunicorn with the same settings as the real app
(`gunicorn ... 'bench.bare:app'`), it measures what the server, Flask and the loopback network
cost per request on this machine, so the webhook's throughput can be stated as a share of it.
"""

from __future__ import annotations

from flask import Flask, Response

INBOUND_PATH = "/webhooks/twilio/messages"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>ok</Message></Response>'

app = Flask(__name__)


@app.post(INBOUND_PATH)
def inbound_message() -> Response:
    """A static TwiML reply (`text/xml`), whatever was posted."""
    return Response(TWIML, status=200, content_type="text/xml; charset=utf-8")


@app.get("/healthz")
def healthz() -> Response:
    """Liveness, like the real app's: the harness waits for it before loading."""
    return Response('{"status":"ok"}', status=200, content_type="application/json")
