"""Hypothesis strategies for fuzzing the provider webhooks (tests/system/test_fuzz_webhooks.py).

Every strategy starts from the real recorded payloads in testing/fixtures and mutates them the
way a broken provider, a proxy or an attacker with the signing secret could:

* Twilio forms (`inbound_forms`, `status_forms`): any subset of fields dropped; huge,
  non-Latin, emoji and control-character text (NUL included); malformed `From` / `To`; odd
  `NumMedia` with or without `MediaUrlN` / `MediaContentTypeN`; `MessageSid`s from a small
  pool (so repeats happen); odd `MessageStatus` / `ErrorCode`. Values are `str` without lone
  surrogates (a form is UTF-8 on the wire; `raw_form_bodies` sends bytes that are not).
* Stripe events (`stripe_events`): a real event, optionally pointed at the test's own
  checkout, charge and subscription (so handlers reach the ledger), then mutated: fields of
  the wrong type, `data` / `data.object` missing or not an object, unknown or mismatched
  `type`, odd ids, huge strings, NUL bytes.
* Affiliate postbacks (`postback_bodies`): valid bodies with fields missing or of the wrong
  type.

The strategies build values; the tests sign them validly and post them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from testing.payloads import FIXTURES

# --- text ------------------------------------------------------------------------------------

# Characters that break naive code: NUL and other C0/C1 controls, line and paragraph
# separators, BOM, bidi overrides, zero-width joiners, combining marks, the replacement
# character, noncharacters, the last code point, astral emoji.
ODD_CHARS = (
    "\x00", "\x01", "\x07", "\x08", "\t", "\n", "\r", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f",
    "\x80", "\x85", "\x9f", "\xa0", "\xad", "\u0301", "\u0489", "\u200b", "\u200d", "\u200e",
    "\u202e", "\u2028", "\u2029", "\u2066", "\ufeff", "\ufffc", "\ufffd", "\ufffe", "\uffff",
    "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8",
    "\U000e0041", "\U0010ffff", "<", ">", "&", "'", '"', "%", "+", "=", "\\", "]]>",
)
# Real-world scripts: what non-Latin users write.
SAMPLES = (
    "meal plan", "BALANCE", "calories in 2 eggs", "recipe for soup", "tips for a vegan diet",
    "grocery list for the week", "what is a good snack?", "HELP", "hi there, 2+3=4",
    "Привет, план питания", "食谱 鸡蛋", "レシピ", "خطة وجبات", "תוכנית ארוחות", "भोजन योजना",
    "🍳🥑🥗 calories?", "ẞtraße café naïve", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̗̻͐ t̰̟ext", "",
    " ", "\x00", "STOP\x00", "meal\x00plan", "<Message>x</Message>", "]]><Response/>",
)


def _no_surrogates() -> st.SearchStrategy[str]:
    return st.characters(codec="utf-8")  # every code point but the surrogates


odd_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(SAMPLES),
    st.text(_no_surrogates(), max_size=40),
    st.lists(st.sampled_from(ODD_CHARS), min_size=1, max_size=20).map("".join),
    st.lists(st.one_of(st.sampled_from(SAMPLES), st.sampled_from(ODD_CHARS)),
             min_size=1, max_size=8).map("".join),
)


@st.composite
def huge_text(draw: st.DrawFn, max_chars: int = 100_000) -> str:
    """A long text (up to `max_chars`): a drawn chunk repeated, so hypothesis stays fast."""
    chunk = draw(st.one_of(st.sampled_from(SAMPLES[:-6]), odd_text).filter(bool))
    size = draw(st.sampled_from([1_601, 4_095, 4_096, 4_097, 10_000, 65_536, max_chars]))
    return (chunk * (size // len(chunk) + 1))[:size]


any_text: st.SearchStrategy[str] = st.one_of(odd_text, odd_text, huge_text())


def with_nul(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values of `strategy` with a NUL byte at a drawn position."""
    return st.tuples(strategy, st.integers(0, 100)).map(
        lambda pair: pair[0][:pair[1]] + "\x00" + pair[0][pair[1]:])


# --- Twilio forms ----------------------------------------------------------------------------

INBOUND_FIXTURES = (
    "sms_inbound_text_rawbody_specialchars__tigerfarm.json",
    "whatsapp_inbound_text__botbuilder_test.json",
    "whatsapp_inbound_image__botbuilder_test.json",
    "whatsapp_inbound_location__botbuilder_test.json",
    "whatsapp_inbound_button_reply__100eyes_fixture.json",
)
STATUS_FIXTURES = (
    "sms_status_delivered__vendor_doc_sample.json",
    "whatsapp_status_delivered__botbuilder_test.json",
    "whatsapp_status_failed_63016__100eyes_fixture.json",
    "whatsapp_status_read__bottender_test.json",
    "whatsapp_status_sent__botbuilder_test.json",
)


def twilio_fixture_fields(name: str) -> dict[str, str]:
    data = json.loads((FIXTURES / "twilio" / name).read_text(encoding="utf-8"))
    return dict(data["fields"])


# A few senders, so that some examples share a contact (and its balance) and some do not.
SENDERS = ("+16505558893", "+31612345678", "+491511234567", "+447700900123", "+81312345678")

phone_numbers: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(SENDERS),
    st.sampled_from(SENDERS).map(lambda n: "whatsapp:" + n),
    st.sampled_from([
        "", " ", "+", "++16505558893", "16505558893", "0016505558893", "+1 (650) 555-8893",
        " +16505558893 ", "+1650555889", "+165055588931234567890", "+" + "9" * 40,
        "+abc", "letters", "+1650555\x008893", "+١٦٥٠٥٥٥٨٨٩٣", "+１６５０５５５８８９３",
        "whatsapp:", "whatsapp: ", "WHATSAPP:+16505558893", "whatsapp:whatsapp:+16505558893",
        "whatsapp:+", "whatsapp:junk", "whatsapp:" + "x" * 61, "whatsapp:\x00", "whatsapp:\n",
        "whatsapp:🍳", "whatsapp:+31612345678\x00", "sms:+16505558893", "tel:+16505558893",
        "messenger:12345", "<org number>", "whatsapp:<org number>", "00000000000",
    ]),
    st.text(st.sampled_from("+0123456789 -()whatsapp:x\x00"), max_size=30),
    odd_text,
    huge_text(),
)

# A small pool so that the same MessageSid comes back in later examples (repeat deliveries).
SID_POOL = tuple(f"SMfuzz{i:026d}" for i in range(4))
message_sids: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(SID_POOL),
    st.uuids().map(lambda u: f"SM{u.hex}"),
    st.sampled_from(["", " ", "\x00", "SM" + "0" * 62, "SM" + "0" * 63, "SM" + "1" * 1000,
                     "SM\x00abc", "MM🍳", "\u202eSM1", "SM 1", "\tSMtab\n"]),
    odd_text,
)

# Counts as Twilio sends them ("0".."10"), and what `str.isdigit()` lets through although
# `int()` refuses it or the database cannot hold it: other scripts' digits, superscripts,
# thousands of digits.
UNICODE_DIGITS = ("²", "³", "¹", "⁰", "٣", "۳", "௩", "१", "𝟙", "３", "Ⅳ", "½", "①", "1²")
HUGE_NUMBERS = ("2147483647", "2147483648", "9223372036854775807", "9223372036854775808",
                "99999999999999999999", "9" * 4300, "9" * 4301, "9" * 5000)
counts: st.SearchStrategy[str] = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["", " ", "  2 ", "-0", "+1", "1.0", "1e3", "0x1", "many", "NaN", "inf",
                     "\x00", "1\x00", "1 2", "0" * 50]),
    st.sampled_from(UNICODE_DIGITS),
    st.sampled_from(HUGE_NUMBERS),
    odd_text,
)

error_codes: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["", "0", "21610", "30007", "63016", "30003", "00030007", " 63016 "]),
    counts,
)

statuses: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["queued", "sending", "sent", "delivered", "undelivered", "failed", "read",
                     "accepted", "scheduled", "canceled", "receiving", "received",
                     "partially_delivered", "DELIVERED", " Read ", "unknown", "submitting"]),
    st.sampled_from(["", " ", "\x00", "delivered\x00", "x" * 32, "x" * 33, "dé livered",
                     "🍳", "null", "None", "<delivered>"]),
    odd_text,
)

# Values for the fields the inbound handler reads (others are mutated by `extra_fields`).
INBOUND_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Body": any_text,
    "From": phone_numbers,
    "To": phone_numbers,
    "MessageSid": message_sids,
    "SmsMessageSid": message_sids,
    "SmsSid": message_sids,
    "AccountSid": st.one_of(st.just("AC" + "0" * 32), odd_text, huge_text(10_000)),
    "NumMedia": counts,
    "WaId": st.one_of(st.sampled_from(["491511234567", "", "x" * 61]), odd_text),
    "ProfileName": any_text,
    "ButtonText": any_text,
    "ButtonPayload": any_text,
    "OptOutType": st.one_of(st.sampled_from(["STOP", "START", "HELP", "stop", " Start ", "",
                                             "STOP\x00", "UNSUBSCRIBE", "ß", "ﬀ"]),
                            odd_text),
    "Latitude": st.one_of(st.sampled_from(["52.3", "-90", "91", "1e400", "NaN", "", "\x00",
                                           "52.3\x00"]), odd_text, huge_text(5_000)),
    "Longitude": st.one_of(st.sampled_from(["4.75", "-181", "inf", "", "\x00"]), odd_text),
    "Address": any_text,
    "Label": any_text,
    "MessageType": st.sampled_from(["text", "image", "location", "button", "interactive", "",
                                    "\x00", "🍳"]),
    "NumSegments": counts,
    "SmsStatus": statuses,
}

STATUS_VALUES: dict[str, st.SearchStrategy[str]] = {
    "MessageSid": message_sids,
    "SmsSid": message_sids,
    "MessageStatus": statuses,
    "SmsStatus": statuses,
    "ErrorCode": error_codes,
    "ErrorMessage": any_text,
    "To": phone_numbers,
    "From": phone_numbers,
    "ChannelToAddress": phone_numbers,
    "RawDlrDoneDate": st.one_of(st.just("2308102223"), odd_text),
    "EventType": st.one_of(st.sampled_from(["DELIVERED", "READ", ""]), odd_text),
    "AccountSid": odd_text,
}

field_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["MediaUrl10", "MediaUrl99", "MediaContentType-1", "NumMedia ", "body",
                     "FROM", "From\x00", "Body[]", "MessageSid[0]", "", " ", "🍳", "a" * 200]),
    st.text(_no_surrogates(), min_size=1, max_size=12),
)


@st.composite
def media_fields(draw: st.DrawFn) -> dict[str, str]:
    """`NumMedia` and up to 15 `MediaUrlN` / `MediaContentTypeN`, consistent or not."""
    items = draw(st.integers(0, 15))
    fields: dict[str, str] = {}
    for i in range(items):
        if draw(st.booleans()):
            fields[f"MediaUrl{i}"] = draw(st.one_of(
                st.just(f"https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME{i}"),
                st.sampled_from(["", "javascript:alert(1)", "file:///etc/passwd",
                                 "http://127.0.0.1:1/x", "not a url", "\x00"]),
                odd_text, huge_text(5_000)))
        if draw(st.booleans()):
            fields[f"MediaContentType{i}"] = draw(st.one_of(
                st.sampled_from(["image/jpeg", "audio/ogg", "video/mp4", "application/pdf",
                                 "text/vcard", "", "image/\x00", "../../etc"]),
                odd_text))
    fields["NumMedia"] = draw(st.one_of(st.just(str(items)), counts))
    return fields


def _mutated_form(fixtures: tuple[str, ...], values: dict[str, st.SearchStrategy[str]],
                  hot: tuple[str, ...], with_media: bool) -> st.SearchStrategy[dict[str, str]]:
    """Forms from `fixtures`: some fields dropped, up to five set to a value of `values`
    (the `hot` ones, which the handler parses, more often), maybe media, maybe junk fields."""
    bases = [twilio_fixture_fields(name) for name in fixtures]

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, str]:
        form = dict(draw(st.sampled_from(bases)))
        # Drop any subset of the fixture's fields (often none, sometimes all).
        dropped = draw(st.one_of(
            st.just(frozenset()),
            st.just(frozenset()),
            st.frozensets(st.sampled_from(sorted(form)), max_size=3),
            st.frozensets(st.sampled_from(sorted(form)), max_size=len(form)),
            st.just(frozenset(form)),
        ))
        for name in dropped:
            del form[name]
        names = st.sampled_from(hot) | st.sampled_from(sorted(values))
        for name in draw(st.lists(names, max_size=5, unique=True)):
            form[name] = draw(values[name])
        if with_media and draw(st.booleans()):
            form.update(draw(media_fields()))
        extra = draw(st.dictionaries(field_names, odd_text, max_size=3))
        form.update(extra)
        return form

    return build()


inbound_forms: st.SearchStrategy[dict[str, str]] = _mutated_form(
    INBOUND_FIXTURES, INBOUND_VALUES, ("Body", "From", "MessageSid", "NumMedia"),
    with_media=True)
status_forms: st.SearchStrategy[dict[str, str]] = _mutated_form(
    STATUS_FIXTURES, STATUS_VALUES, ("MessageSid", "MessageStatus", "ErrorCode", "To"),
    with_media=False)


@st.composite
def raw_form_bodies(draw: st.DrawFn) -> bytes:
    """An `application/x-www-form-urlencoded` body that is not clean UTF-8 text: raw bytes
    that are not UTF-8, percent-escapes of invalid UTF-8 (an encoded surrogate, a lone
    continuation byte, an overlong NUL), stray `%`, `&&`, `==`."""
    from urllib.parse import urlencode

    form = draw(inbound_forms)
    body = urlencode(form).encode("ascii")
    junk = draw(st.lists(st.sampled_from([
        b"%ED%A0%80", b"%C0%80", b"%80", b"%FF%FE", b"%", b"%G1", b"%0", b"&&", b"==", b"&=",
        b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00", b"+", b";",
    ]), min_size=1, max_size=4))
    for piece in junk:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + piece + body[at:]
    return body


# --- Stripe events ---------------------------------------------------------------------------

STRIPE_EVENT_FIXTURES = tuple(sorted(
    str(path.relative_to(FIXTURES / "stripe")) for path in (FIXTURES / "stripe").glob("*/*.json")
))
STRIPE_TYPES = (
    "checkout.session.completed", "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed", "checkout.session.expired", "charge.refunded",
    "charge.dispute.created", "charge.dispute.closed", "customer.subscription.created",
    "customer.subscription.updated", "customer.subscription.deleted", "invoice.paid",
    "invoice.payment_succeeded", "invoice.payment_failed",
)


def stripe_fixture(path: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / "stripe" / path).read_text(encoding="utf-8"))
    return event


@dataclass(frozen=True)
class StripeTargets:
    """The test's own Stripe objects, which fuzzed events may name."""

    pack_session: str
    premium_session: str
    payment_intent: str
    charge: str
    subscription: str
    customer: str
    account_public_id: str


# Stands for "a fresh event id" (the test puts a new one in, so events are new by default).
FRESH = "<fresh>"

json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 499, 500, 501, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([500.0, 499.99, 1e300, -0.0, 5e-324]),
    st.sampled_from(["500", "5e2", "five hundred", "", " ", "usd", "USD", "paid", "lost",
                     "\x00", "500\x00", "cs_\x00", "sub_\x00", "\ud800", "id\udfff"]),
    odd_text,
    huge_text(20_000),
    with_nul(odd_text),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)

OBJECT_KEYS = (
    "id", "object", "amount", "amount_total", "amount_refunded", "amount_paid", "currency",
    "payment_status", "status", "mode", "payment_intent", "charge", "subscription", "customer",
    "metadata", "billing_reason", "current_period_end", "cancel_at_period_end", "items",
    "lines", "parent", "refunded",
)
NESTED_PATHS = (
    ("metadata", "account"), ("parent", "subscription_details", "subscription"),
    ("parent", "subscription_details"), ("items", "data"), ("lines", "data"),
    ("payment_intent", "id"), ("subscription", "id"), ("customer", "id"),
)


# The fields each kind of event's handler reads (mutated more often than the others).
READ_BY_HANDLER = {
    "checkout.session.": ("id", "amount_total", "currency", "payment_status", "mode",
                          "payment_intent", "customer", "subscription"),
    "charge.dispute.": ("id", "amount", "charge", "payment_intent", "status"),
    "charge.": ("id", "amount", "amount_refunded", "payment_intent"),
    "customer.subscription.": ("id", "status", "customer", "metadata", "items",
                               "current_period_end", "cancel_at_period_end"),
    "invoice.": ("id", "amount_paid", "billing_reason", "subscription", "customer", "parent",
                 "lines", "items", "current_period_end"),
}


def _read_keys(kind: object) -> tuple[str, ...]:
    for prefix, keys in READ_BY_HANDLER.items():
        if str(kind).startswith(prefix):
            return keys
    return OBJECT_KEYS


def _set_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


# Ids and amounts as a broken sender could put them where the handlers read them: what the
# database cannot hold (NUL, lone surrogates, more than the 255 characters of the id columns),
# and amounts of every JSON type.
odd_ids: st.SearchStrategy[Any] = st.sampled_from([
    "", " ", "\x00", "id_\x00", "\ud800", "id_\udfff", "x" * 255, "x" * 256, "x" * 300,
    "🍳" * 64, "id with spaces", "id/../../v1", "id?x=1&y=2", "%00", 7, 7.5, True, None,
    ["id_1"], {"id": "id_1"}, {"id": "\x00"}, {"id": "x" * 300},
])
odd_amounts: st.SearchStrategy[Any] = st.sampled_from([
    "500", "250", "abc", "", "5e2", [500], {"amount": 500}, 500.0, 499.5, 1e300, -500, True,
    None, 2**70, -(2**70), "\x00",
])
# `lines` / `items` of an invoice or a subscription: Stripe's list objects, and broken ones.
odd_lists: st.SearchStrategy[Any] = st.sampled_from([
    {"data": []}, {"data": [{}]}, {"data": ["x"]}, {"data": [None]}, {"data": [[]]},
    {"data": "x"}, {"data": 7}, {"data": {"0": {}}}, {"data": [{"period": "x"}]},
    {"data": [{"period": {"end": "x"}}]}, {"data": [{"period": {"end": 10**30}}]},
    {"data": [{"current_period_end": "x"}]}, {"data": [{"current_period_end": -1}]},
    "x", [], None,
])


def _usually(real: Any, odd: st.SearchStrategy[Any], draw: st.DrawFn) -> Any:
    """`real` three times in four, else an odd value."""
    return draw(st.one_of(st.just(real), st.just(real), st.just(real), odd))


def _retarget(event: dict[str, Any], targets: StripeTargets, draw: st.DrawFn) -> None:
    """Point the event's object at the test's own checkout / charge / subscription, with now
    and then an odd id or amount in a field the handler reads."""
    obj = event["data"]["object"]
    kind = str(event.get("type"))
    if kind.startswith("checkout.session."):
        premium = draw(st.booleans())
        obj.update(id=targets.premium_session if premium else targets.pack_session,
                   amount_total=_usually(500, odd_amounts, draw), currency="usd",
                   payment_intent=_usually(targets.payment_intent, odd_ids, draw),
                   payment_status=draw(st.sampled_from(["paid", "unpaid", "no_payment_required"])),
                   mode="subscription" if premium else "payment")
        if premium:
            obj.update(subscription=_usually(targets.subscription, odd_ids, draw),
                       customer=_usually(targets.customer, odd_ids, draw))
    elif kind.startswith("charge.dispute."):
        obj.update(id=_usually(draw(st.sampled_from(["dp_fuzz_1", "dp_fuzz_2"])), odd_ids, draw),
                   charge=_usually(targets.charge, odd_ids, draw),
                   payment_intent=draw(st.sampled_from([targets.payment_intent, None])),
                   amount=_usually(500, odd_amounts, draw), status=draw(st.sampled_from(
                       ["needs_response", "warning_needs_response", "won", "lost"])))
    elif kind.startswith("charge."):
        refunded = draw(st.sampled_from([0, 100, 250, 500]))
        obj.update(id=_usually(targets.charge, odd_ids, draw),
                   payment_intent=_usually(targets.payment_intent, odd_ids, draw), amount=500,
                   amount_refunded=_usually(refunded, odd_amounts, draw),
                   refunded=refunded == 500)
    elif kind.startswith("customer.subscription."):
        obj.update(id=_usually(targets.subscription, odd_ids, draw),
                   customer=_usually(targets.customer, odd_ids, draw),
                   metadata={"account": targets.account_public_id})
    elif kind.startswith("invoice."):
        obj.update(id=_usually(draw(st.sampled_from(["in_fuzz_1", "in_fuzz_2"])), odd_ids, draw),
                   amount_paid=_usually(500, odd_amounts, draw),
                   subscription=_usually(targets.subscription, odd_ids, draw),
                   customer=targets.customer,
                   billing_reason=draw(st.sampled_from(["subscription_cycle", "manual"])))
        if draw(st.booleans()):
            obj.update(current_period_end=None, lines=draw(odd_lists), items=draw(odd_lists))


def stripe_events(targets: StripeTargets) -> st.SearchStrategy[dict[str, Any]]:
    """A real event, maybe pointed at `targets`, then mutated (see the module docstring).

    Returns a dict to serialise; `"id": FRESH` asks the test for a new event id."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        event = copy.deepcopy(stripe_fixture(draw(st.sampled_from(STRIPE_EVENT_FIXTURES))))
        event["id"] = FRESH
        if draw(st.sampled_from([True, True, False])):
            event["type"] = draw(st.sampled_from(STRIPE_TYPES))  # maybe not what the object is
        if draw(st.integers(0, 3)) != 3:  # hypothesis favours 0: the common case
            _retarget(event, targets, draw)
        for _ in range(draw(st.integers(0, 4))):
            _mutate(event, draw)
        return event

    return build()


def _mutate(event: dict[str, Any], draw: st.DrawFn) -> None:
    what = draw(st.sampled_from(["object_key", "object_key", "object_key", "object_key",
                                 "nested", "nested", "drop", "data", "type", "id", "envelope",
                                 "swap_object"]))
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if what in ("object_key", "nested", "drop") and not isinstance(obj, dict):
        what = "data"
    if what == "object_key":
        assert isinstance(obj, dict)
        keys = st.sampled_from(_read_keys(event.get("type"))) | st.sampled_from(OBJECT_KEYS)
        obj[draw(keys)] = draw(json_values)
    elif what == "nested":
        assert isinstance(obj, dict)
        _set_path(obj, draw(st.sampled_from(NESTED_PATHS)), draw(json_values))
    elif what == "drop":
        assert isinstance(obj, dict)
        for key in draw(st.lists(st.sampled_from(OBJECT_KEYS), max_size=5)):
            obj.pop(key, None)
    elif what == "data":
        choice = draw(st.sampled_from(["no data", "no object", "data", "object"]))
        if choice == "no data":
            event.pop("data", None)
        elif choice == "data":
            event["data"] = draw(json_values)
        elif not isinstance(data, dict):
            event["data"] = {}
        elif choice == "no object":
            data.pop("object", None)
        else:
            data["object"] = draw(json_values)
    elif what == "type":
        event["type"] = draw(st.one_of(
            st.sampled_from(STRIPE_TYPES),
            st.sampled_from(["", "charge", "checkout.session.", "invoice.paid\x00",
                             "customer.subscription.updated ", "x" * 500, None, 7, ["invoice.paid"],
                             {"type": "invoice.paid"}]),
            odd_text))
    elif what == "id":
        event["id"] = draw(st.one_of(
            st.sampled_from(["evt_fuzz_repeat", "evt_\x00", "evt_" + "x" * 300, "\ud800", 7, 7.5,
                             True, ["evt_1"], {"id": "evt_1"}, "", None, 0]),
            odd_text, huge_text(10_000)))
    elif what == "envelope":
        key = draw(st.sampled_from(["object", "api_version", "created", "livemode",
                                    "pending_webhooks", "request"]))
        event[key] = draw(json_values)
    else:  # the object of another event type than the event says
        other = stripe_fixture(draw(st.sampled_from(STRIPE_EVENT_FIXTURES)))
        event["data"] = {"object": copy.deepcopy(other["data"]["object"])}


def stripe_body(event: dict[str, Any], ascii_only: bool = True) -> bytes:
    """The JSON body of `event`: escaped (`\\u0000`, `\\ud800`) as Stripe sends, or raw UTF-8
    with what UTF-8 cannot hold passed through (invalid UTF-8 that no JSON parser takes)."""
    text = json.dumps(event, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


# --- affiliate postbacks ---------------------------------------------------------------------

amount_values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["12.50", "0", "0.00", "1", "999999999999.99", "1000000000000", "-1.00",
                     "1.001", "1e2", "1,50", " 4.50 ", "4.50\n", "4.50\x00", "", "NaN", "Infinity",
                     "٣.٥٠", "１２", "0x10", ".5", "5.", "+5"]),
    st.decimals(min_value=0, max_value=10**12, places=2).map(str),
    json_scalars,
)
conversion_ids: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["AW-1", "AW-2", "AW-3"]),  # a pool: repeats happen
    st.sampled_from(["", " ", "\x00", "AW\x00", "x" * 100, "x" * 101, "\ud800", "🍳"]),
    odd_text, json_scalars,
)


valid_amounts: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["45.00", "4.50", "0", "0.00", "12.5", "999999999999.99", " 1.00 "]),
    st.decimals(min_value=0, max_value=10**6, places=2).map(str),
)
odd_postback_values: dict[str, st.SearchStrategy[Any]] = {
    "conversion_id": conversion_ids,
    "click_id": st.one_of(odd_text, json_scalars, st.just("c" * 300)),
    "sale_amount": amount_values,
    "commission": amount_values,
}


@st.composite
def postback_bodies(draw: st.DrawFn, click_ids: tuple[str, ...]) -> Any:
    """A conversion postback body: valid; or with one field missing or of the wrong type; or
    several; or not a JSON object at all."""
    body: dict[str, Any] = {
        "conversion_id": draw(st.one_of(st.sampled_from(["AW-1", "AW-2", "AW-3"]),
                                        st.uuids().map(lambda u: f"AW-{u.hex[:12]}"))),
        "click_id": draw(st.one_of(st.sampled_from(click_ids), st.none())),
        "sale_amount": draw(valid_amounts),
        "commission": draw(valid_amounts),
    }
    mode = draw(st.sampled_from(["valid", "one field", "one field", "several", "not an object"]))
    if mode == "not an object":
        return draw(json_values)
    keys = st.sampled_from(sorted(odd_postback_values))
    for key in draw(st.lists(keys, min_size=1, max_size=1 if mode == "one field" else 4,
                             unique=True)) if mode != "valid" else []:
        if draw(st.booleans()):
            body[key] = draw(odd_postback_values[key])
        else:
            del body[key]
    body.update(draw(st.dictionaries(st.text(max_size=10), json_scalars, max_size=2)))
    return body
