"""The consent log: every opt-out and opt-in appended, shown on the person's admin page and
exported as CSV (masked numbers); START words opt in only someone opted out."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from bot.models import ConsentEvent, Contact
from testing.admin import logged_in
from testing.deployment import post_signed
from testing.payloads import sms

PHONE = "+16505558893"


def test_opt_outs_and_opt_ins_are_logged_shown_and_exported(app, client, session):
    post_signed(client, sms("yes", sid="SMc1"))  # never opted out: ordinary text
    post_signed(client, sms("STOP", sid="SMc2"))
    post_signed(client, sms("start", sid="SMc3"))
    post_signed(client, {**sms("STOP", sid="SMc4"), "OptOutType": "STOP"})
    post_signed(client, {**sms("STOP", sid="SMc4"), "OptOutType": "STOP"})  # a repeat
    rows = session.execute(select(ConsentEvent.action, ConsentEvent.keyword,
                                  ConsentEvent.source).order_by(ConsentEvent.id)).all()
    assert rows == [("opt_out", "STOP", "keyword"), ("opt_in", "START", "keyword"),
                    ("opt_out", "STOP", "twilio")]
    account_id = session.scalars(select(Contact.account_id)).one()
    admin = logged_in(app)
    page = admin.get(f"/admin/people/{account_id}").text
    table = page.split('id="consent"', 1)[1].split("</table>", 1)[0]
    assert table.count("<td>opt_out</td>") == 2 and table.count("<td>opt_in</td>") == 1
    assert "<td>twilio</td>" in table and PHONE not in page
    export = admin.get(f"/admin/consent.csv?account={account_id}")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    lines = list(csv.DictReader(io.StringIO(export.text)))
    assert [line["action"] for line in lines] == ["opt_out", "opt_in", "opt_out"]
    assert {line["contact"] for line in lines} == {"+1********93"}
    assert PHONE not in export.text
    everyone = admin.get("/admin/consent.csv")
    assert len(list(csv.DictReader(io.StringIO(everyone.text)))) == 3
    assert admin.get("/admin/consent.csv?account=x1").status_code == 400
    # the export needs a login like every admin page
    assert client.get("/admin/consent.csv").status_code == 302


def test_twilio_start_from_someone_not_opted_out_changes_nothing(client, session):
    fields = sms("START", sid="SMc9")
    response = post_signed(client, {**fields, "OptOutType": "START"})
    assert response.status_code == 200
    assert session.scalars(select(ConsentEvent)).all() == []
