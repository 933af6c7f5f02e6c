"""`GET /metrics`: what the pipeline counts, in Prometheus's text format, and who may read it."""

from __future__ import annotations

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from testing.deployment import post_signed, run_worker
from testing.payloads import sms


def samples(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_queued_answer_is_counted_from_acknowledgement_to_reply(queued_app, twilio_api):
    before = samples(queued_app)
    post_signed(queued_app.test_client(), sms("meal plan", sid="SMmetrics1"))
    waiting = samples(queued_app)
    assert waiting[("bot_inbox_backlog", ())] == 1.0
    assert waiting[("bot_queue_depth", ())] == 1.0
    run_worker(queued_app)
    after = samples(queued_app)
    assert delta(before, after, "bot_webhook_acks_total", result="queued") == 1
    assert delta(before, after, "bot_webhook_ack_seconds_count") == 1
    assert delta(before, after, "bot_answers_total", outcome="answered") == 1
    assert delta(before, after, "bot_reply_seconds_count") == 1
    assert delta(before, after, "bot_llm_seconds_count") == 1
    assert delta(before, after, "bot_ledger_holds_placed_total") == 1
    assert delta(before, after, "bot_ledger_entries_total", kind="debit") >= 1  # the capture
    assert delta(before, after, "bot_cogs_musd_total", channel="sms", kind="messaging") \
        == 2 * 7900  # one SMS segment in, one out
    assert delta(before, after, "bot_cogs_musd_total", channel="none", kind="llm") > 0
    assert after[("bot_inbox_backlog", ())] == 0.0
    assert after[("bot_queue_depth", ())] == 0.0
    assert after[("bot_answers_in_flight", ())] == 0.0


def test_a_refused_signature_is_counted(app):
    before = samples(app)
    assert app.test_client().post("/webhooks/twilio/messages", data={"Body": "x"}) \
        .status_code == 403
    assert delta(before, samples(app), "bot_webhook_acks_total", result="refused") == 1


@pytest.fixture
def production_env() -> dict[str, str]:
    return {"APP_ENV": "production", "SECRET_KEY": "s" * 40,
            "TWILIO_AUTH_TOKEN": "a-real-twilio-auth-token-0123456789",
            "PUBLIC_BASE_URL": "https://bot.example.com"}


def test_production_serves_no_metrics_without_a_token(make_app, production_env):
    app = make_app(**production_env)
    assert app.test_client().get("/metrics").status_code == 404


def test_with_a_token_metrics_need_it(make_app, production_env):
    app = make_app(**production_env, METRICS_TOKEN="m" * 32)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32})
    assert ok.status_code == 200 and b"bot_webhook_acks_total" in ok.data
