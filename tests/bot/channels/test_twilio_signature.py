"""The signature test vectors (testing/fixtures/twilio), through the adapter's check."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from bot.channels.twilio import TWILIO, normalise_sender
from bot.errors import InvalidSender
from testing.payloads import load_fixture

VECTORS = load_fixture("twilio/twilio_signature_test_vectors.json")


def params_of(case: dict) -> MultiDict | str:
    if "body" in case:
        return VECTORS[case["body"]] if case["body"] in VECTORS else case["body"]
    params = case["params"]
    if params == "default_params":
        return MultiDict(VECTORS["default_params"])
    if isinstance(params, list):
        return MultiDict([tuple(pair) for pair in params])
    return MultiDict(params)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_signature_vectors(case):
    token = case.get("auth_token", VECTORS["auth_token"])
    valid = TWILIO.signature_is_valid(token, case["url"], params_of(case), case["signature"])
    assert valid is case["python_expect_valid"]


def test_a_missing_signature_is_invalid():
    assert not TWILIO.signature_is_valid("12345", "https://mycompany.com/x", MultiDict(), None)
    assert not TWILIO.signature_is_valid("12345", "https://mycompany.com/x", MultiDict(), "")


@pytest.mark.parametrize(
    ("raw", "channel", "wa_id", "expected"),
    [
        ("+16505558893", "sms", None, "+16505558893"),
        ("whatsapp:+31612345678", "whatsapp", None, "+31612345678"),
        ("whatsapp:+491511234567", "whatsapp", "491511234567", "+491511234567"),
        ("whatsapp:US.13491208655302741918", "whatsapp", None, "wa:US.13491208655302741918"),
    ],
)
def test_senders_normalise_to_one_identity(raw, channel, wa_id, expected):
    assert normalise_sender(raw, channel, wa_id) == expected


@pytest.mark.parametrize("raw", ["6505558893", "+1", "hello", "+999999999999999999"])
def test_sms_senders_must_be_e164(raw):
    with pytest.raises(InvalidSender):
        normalise_sender(raw, "sms")
