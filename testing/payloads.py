"""Recorded provider payloads (testing/fixtures: real Twilio and Stripe payloads) and inbound
Twilio messages built from them with another body, MessageSid and sender."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    """A recorded provider payload from testing/fixtures (real Twilio and Stripe payloads)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def twilio_fields(name: str, **changes: str) -> dict[str, str]:
    """The form fields of a Twilio fixture, with `changes` applied."""
    fields = dict(load_fixture(f"twilio/{name}")["fields"])
    fields.update(changes)
    return fields


SMS_FIXTURE = "sms_inbound_text_rawbody_specialchars__tigerfarm.json"
WHATSAPP_FIXTURE = "whatsapp_inbound_text__botbuilder_test.json"
INBOUND_FIXTURES = (
    SMS_FIXTURE,
    WHATSAPP_FIXTURE,
    "whatsapp_inbound_image__botbuilder_test.json",
    "whatsapp_inbound_location__botbuilder_test.json",
    "whatsapp_inbound_button_reply__100eyes_fixture.json",
)


def sms(body: str, sid: str | None = None, sender: str = "+16505558893") -> dict[str, str]:
    """The real SMS fixture with another Body, MessageSid and sender."""
    sid = sid or f"SM{uuid.uuid4().hex}"
    return twilio_fields(SMS_FIXTURE, Body=body, MessageSid=sid, SmsMessageSid=sid, SmsSid=sid,
                         From=sender)


def whatsapp(body: str, sid: str | None = None, sender: str = "+16505558893") -> dict[str, str]:
    """The real WhatsApp fixture with another Body, MessageSid and sender."""
    sid = sid or f"SM{uuid.uuid4().hex}"
    return twilio_fields(WHATSAPP_FIXTURE, Body=body, MessageSid=sid, SmsMessageSid=sid,
                         SmsSid=sid, From=f"whatsapp:{sender}")


def event_from(base: dict[str, Any], event_type: str | None = None,
               **changes: Any) -> dict[str, Any]:
    """A copy of a recorded provider event (e.g. a Stripe event from `load_fixture`) with a
    fresh id, another `type` when given, and `changes` applied to its `data.object`."""
    copied = copy.deepcopy(base)
    copied["id"] = f"evt_{uuid.uuid4().hex}"
    if event_type:
        copied["type"] = event_type
    copied["data"]["object"].update(changes)
    return copied
