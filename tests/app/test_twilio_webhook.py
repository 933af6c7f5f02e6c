"""POST /webhooks/twilio/messages with the real recorded payloads, signed as Twilio signs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import func, select

from bot.models import Contact, Message
from testing.deployment import INBOUND_PATH, PUBLIC_BASE_URL, post_signed, sign
from testing.payloads import INBOUND_FIXTURES, sms, twilio_fields, whatsapp
from tokens.ledger import Account, LedgerEntry


def messages_of(response) -> list[str]:
    """The texts of the `<Message>` elements of a TwiML response (parsing fails if malformed)."""
    root = ET.fromstring(response.data)
    assert root.tag == "Response"
    return [m.text or "" for m in root.findall("Message")]


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def balance_of(session, address: str) -> int:
    contact = session.scalars(select(Contact).where(Contact.address == address)).one()
    return session.get(Account, contact.account_id).balance


@pytest.mark.parametrize("fixture", INBOUND_FIXTURES)
def test_every_inbound_fixture_is_accepted_and_answered_with_twiml(client, session, fixture):
    fields = twilio_fields(fixture)
    response = post_signed(client, fields)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    texts = messages_of(response)
    assert len(texts) == 1 and texts[0].strip()
    sid = fields["MessageSid"]
    stored = session.scalars(select(Message).where(Message.message_sid == sid)).one()
    assert stored.direction == "in"


def test_meal_plan_then_balance_reports_95_tokens(client, session):
    first = sms("meal plan")
    response = post_signed(client, first)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    (plan,) = messages_of(response)
    assert "Breakfast:" in plan and "Dinner:" in plan and "kcal" in plan

    (balance,) = messages_of(post_signed(client, sms("BALANCE")))
    assert "95 tokens" in balance

    repeat = post_signed(client, first)
    assert repeat.status_code == 200
    assert messages_of(repeat) == []
    assert balance_of(session, "+16505558893") == 95


def test_the_same_message_sid_twice_charges_once(client, session):
    fields = sms("recipes for pancakes", sid="SM" + "1" * 32)
    assert messages_of(post_signed(client, fields))
    assert messages_of(post_signed(client, fields)) == []
    assert balance_of(session, "+16505558893") == 98
    debits = session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "debit")).all()
    assert [(d.amount, d.idempotency_key) for d in debits] == [(-2, "debit:SM" + "1" * 32)]
    assert count(session, Message) == 2  # the inbound message and the one reply


def test_sms_and_whatsapp_forms_of_one_number_share_one_balance(client, session):
    post_signed(client, sms("meal plan", sender="+31612345678"))
    (reply,) = messages_of(post_signed(client, whatsapp("BALANCE", sender="+31612345678")))
    assert "95 tokens" in reply
    assert count(session, Contact) == 1
    assert count(session, Account) == 1


def test_reply_with_markup_characters_stays_well_formed(app, client, monkeypatch):
    from bot.intents import SkillAnswer, offline

    nasty = 'Fish & chips < 500 kcal > salad; literal <Message>oops</Message> & "quotes"'
    monkeypatch.setattr(offline.ChatSkill, "answer", lambda self, request: SkillAnswer(nasty))
    response = post_signed(client, sms("hello"))
    assert response.status_code == 200
    assert messages_of(response) == [nasty]
    assert b"&lt;Message&gt;" in response.data


def test_blank_fields_and_a_query_string_on_the_public_url_validate(client):
    fields = sms("calories in 2 eggs")
    fields.update({"FromCity": "", "FromZip": "", "ToState": "", "ReferralNumMedia": ""})
    response = post_signed(client, fields, query="tenant=a%27b&x=1")
    assert response.status_code == 200
    assert "144 kcal" in messages_of(response)[0]


@pytest.mark.parametrize(
    "case",
    ["forged", "missing", "wrong_url", "wrong_token", "tampered_body"],
)
def test_bad_signatures_get_403_and_store_nothing(client, session, case):
    fields = sms("meal plan")
    url = PUBLIC_BASE_URL + INBOUND_PATH
    headers = {"X-Twilio-Signature": sign(url, fields)}
    if case == "forged":
        headers["X-Twilio-Signature"] = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    elif case == "missing":
        headers = {}
    elif case == "wrong_url":
        headers["X-Twilio-Signature"] = sign("https://attacker.example.com" + INBOUND_PATH, fields)
    elif case == "wrong_token":
        headers["X-Twilio-Signature"] = sign(url, fields, token="not-the-token")
    elif case == "tampered_body":
        fields = {**fields, "Body": "meal plan for 7 days"}
    response = client.post(INBOUND_PATH, data=fields, headers=headers)
    assert response.status_code == 403
    assert count(session, Message) == 0
    assert count(session, Contact) == 0
    assert count(session, LedgerEntry) == 0


def test_a_signature_over_a_decoded_query_string_is_refused(client, session):
    fields = sms("hello")
    decoded = PUBLIC_BASE_URL + INBOUND_PATH + "?Body=It's+amazing"
    response = client.post(INBOUND_PATH + "?Body=It%27s+amazing", data=fields,
                           headers={"X-Twilio-Signature": sign(decoded, fields)})
    assert response.status_code == 403
    assert count(session, Message) == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"MessageSid": "", "SmsMessageSid": "", "SmsSid": ""}, "MessageSid"),
        ({"From": ""}, "From is missing"),
        ({"From": "not-a-number"}, "E.164"),
        ({"NumMedia": "many"}, "NumMedia"),
    ],
)
def test_unusable_forms_get_400_with_a_reason_and_store_nothing(client, session, change, reason):
    fields = {**sms("hello"), **change}
    response = post_signed(client, fields)
    assert response.status_code == 400
    assert reason in response.get_data(as_text=True)
    assert count(session, Message) == 0


def test_media_only_message_is_answered_free(client, session):
    fields = twilio_fields("whatsapp_inbound_image__botbuilder_test.json")
    (reply,) = messages_of(post_signed(client, fields))
    assert "Nothing was charged" in reply
    sid = fields["MessageSid"]
    stored = session.scalars(select(Message).where(Message.message_sid == sid)).one()
    assert stored.num_media == 1
    assert stored.tokens_charged == 0
    assert balance_of(session, "+31612345678") == 100


def test_button_reply_uses_the_button_text(client, session):
    fields = twilio_fields("whatsapp_inbound_button_reply__100eyes_fixture.json")
    response = post_signed(client, fields)
    assert response.status_code == 200
    stored = session.scalars(select(Message).where(Message.direction == "in")).one()
    assert stored.body == "Antworten"
    assert stored.channel == "whatsapp"
    assert session.scalars(select(Contact)).one().address == "+491511234567"


@pytest.mark.backends("postgresql")
def test_concurrent_deliveries_of_one_message_sid_charge_once(app, session):
    from concurrent.futures import ThreadPoolExecutor

    fields = sms("meal plan", sid="SM" + "7" * 32)

    def deliver(_: int) -> tuple[int, int]:
        with app.app_context():
            response = post_signed(app.test_client(), fields)
            return response.status_code, len(messages_of(response))

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(deliver, range(5)))
    assert all(status == 200 for status, _ in results)
    assert sorted(n for _, n in results) == [0, 0, 0, 0, 1]
    assert balance_of(session, "+16505558893") == 95


def test_a_spanish_conversation_is_answered_in_spanish_as_gsm7_twiml(client, session):
    """The webhook's TwiML carries the Spanish replies: the plan, then SALDO and COMPRAR,
    with á, í, ó, ú folded so the SMS stays GSM-7 (é and ñ stay)."""
    from bot.segments import count_segments

    (plan,) = messages_of(post_signed(client, sms(
        "plan de comidas vegetariano para 3 días, soy alérgico al maní")))
    assert plan.startswith("Plan de comidas vegetariano para 3 dias") and "sin mani" in plan
    assert plan.endswith("(Responde MAS para ver el resto)")
    assert count_segments(plan).encoding == "GSM-7"
    contact = session.scalars(select(Contact)).one()
    assert contact.language == "es"
    (saldo,) = messages_of(post_signed(client, sms("SALDO")))
    assert saldo.startswith("Tienes 95 tokens.") and "1 de" in saldo
    (compra,) = messages_of(post_signed(client, sms("COMPRAR")))
    assert compra.startswith("Consigue 120 tokens") and f"{PUBLIC_BASE_URL}/pay/" in compra


def test_no_rate_limit_is_resolved_for_a_provider_webhook(client, monkeypatch):
    # Twilio's and Stripe's webhooks are signed and come from the providers' addresses:
    # Flask-Limiter is filtered out before it resolves any limit (app.extensions), while a
    # limited view (the admin login) still goes through it.
    from app.extensions import limiter

    resolved: list[str | None] = []
    real = limiter.limit_manager.resolve_limits

    def seen(app, endpoint, *args, **kwargs):
        resolved.append(endpoint)
        return real(app, endpoint, *args, **kwargs)

    monkeypatch.setattr(limiter.limit_manager, "resolve_limits", seen)
    assert post_signed(client, sms("hello", sender="+16505550123")).status_code == 200
    assert post_signed(client, {"MessageSid": "SM" + "9" * 32, "MessageStatus": "delivered",
                                "To": "+16505550123", "AccountSid": "AC" + "1" * 32},
                       path="/webhooks/twilio/status").status_code == 204
    assert resolved == []
    client.post("/admin/login", data={})
    assert resolved, "the admin login's limit was not resolved"
