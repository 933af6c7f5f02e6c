"""Flask CLI commands (`flask --app wsgi ...`)."""

from __future__ import annotations

import functools
import getpass
import logging
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo, with_appcontext

from app.extensions import bot_settings, db, migrations_directory
from bot.channels import get_adapter
from bot.channels.console import ConsoleAdapter
from bot.channels.twilio import to_e164
from bot.contacts import find_contact, mask_address
from bot.errors import InvalidSender
from bot.router import answer_message
from tokens import costs, ledger
from tokens.errors import InsufficientTokens, InvalidAmount
from tokens.money import format_cents, format_usd


def register_cli(app: Flask) -> None:
    """Add this project's commands to `app.cli`. Each of them (and each added here later)
    first checks the database's schema (`require_schema`), except those in `OWN_DATABASE`."""
    before = set(app.cli.commands)  # Flask-Migrate's `db` is there already, and stays as is
    app.cli.add_command(chat)
    app.cli.add_command(tokens_group)
    app.cli.add_command(worker)
    app.cli.add_command(messages_group)
    app.cli.add_command(report)
    app.cli.add_command(admin_group)
    app.cli.add_command(contacts_group)
    from app.simulate import simulate

    app.cli.add_command(simulate)
    from app.affiliates import affiliates_group

    app.cli.add_command(affiliates_group)
    require_schema(command for name, command in app.cli.commands.items()
                   if name not in before and name not in OWN_DATABASE)


# Commands that work on a database of their own (`simulate` migrates a fresh one).
OWN_DATABASE = frozenset({"simulate"})
_SCHEMA_CHECKED = "_checks_schema"


def require_schema(commands: Iterable[click.Command]) -> None:
    """Make each command, and every subcommand of a group (recursively), check the database
    first (`check_schema`). Each command object is wrapped once: calling this again (one call
    per app built) changes nothing."""
    for command in commands:
        if isinstance(command, click.Group):
            require_schema(command.commands.values())
        elif command.callback is not None and not getattr(command.callback, _SCHEMA_CHECKED,
                                                          False):
            command.callback = _schema_checked(command.callback)


def _schema_checked(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        check_schema()
        return callback(*args, **kwargs)

    setattr(run, _SCHEMA_CHECKED, True)
    return run


def check_schema() -> None:
    """Refuse to go on unless the app's database is at the migrations' head (`app.schema`).

    Reads on the app's session (in its transaction when one is open, else in a new one that
    is rolled back). A database that cannot be reached is left to the command itself, which
    reports it (or, for the worker, retries its jobs) as it always did.

    Raises:
        click.ClickException: the schema is missing, behind or unknown; click prints the one
            line, e.g. "Error: the database has no schema yet: run `flask --app wsgi db
            upgrade`", and exits with status 1.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from app.schema import schema_state

    if not current_app:
        app = click.get_current_context().ensure_object(ScriptInfo).load_app()
        with app.app_context():
            check_schema()
        return
    session = db.session()  # the scoped session's own Session
    began = not session.in_transaction()
    try:
        state = schema_state(session.connection(), migrations_directory())
    except SQLAlchemyError as exc:
        logging.getLogger(__name__).debug("schema not checked: database unreachable (%s)",
                                          type(exc).__name__)
        return
    except ValueError as exc:  # no migrations folder: a broken install
        raise click.ClickException(str(exc)) from None
    finally:
        if began:
            session.rollback()
    problem = state.problem()
    if problem is not None:
        raise click.ClickException(problem)


@click.command("report")
@click.option("--month", "label", default=None, metavar="YYYY-MM",
              help="The month (UTC); default this month.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per person instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@with_appcontext
def report(label: str | None, as_csv: bool, as_json: bool) -> None:
    """The month's profitability report, read from the monthly rollups: revenue, COGS,
    margin, ARPU, levels, top intents; `--csv` lists every person (masked phone)."""
    import json

    from app.admin.api import masked_phones
    from tokens.periods import Month
    from tokens.reports import month_report, people_csv

    if label is not None:
        try:
            Month.parse(label)
        except ValueError:
            raise click.BadParameter("use YYYY-MM, e.g. 2026-11", param_hint="--month") from None
    label = label or str(Month.of(datetime.now(UTC)))
    catalog = bot_settings().catalog
    result = month_report(db.session, label, catalog)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
        return
    if as_csv:
        click.echo(people_csv(result, masked_phones()), nl=False)
        return
    click.echo(f"Month {result.month}: {result.active_people} active people, "
               f"{result.paying_people} paying")
    click.echo(f"Revenue {usd(result.revenue_musd)}, COGS {usd(result.cost_musd)}, "
               f"profit {usd(result.profit_musd)}, margin {result.gross_margin}")
    click.echo(f"ARPU {usd(result.arpu_musd)}, average cost {usd(result.average_cost_musd)}, "
               f"profitable {result.share_profitable}, at target {result.share_at_target}, "
               f"pack conversion {result.pack_conversion}")
    click.echo("Revenue mix: " + ", ".join(f"{k} {v}" for k, v in result.revenue_mix.items()))
    click.echo("Levels: " + ", ".join(f"{k} {v}" for k, v in result.level_distribution.items()))
    click.echo("Top intents by LLM cost: " + (", ".join(
        f"{name} {usd(llm)} ({answers} answers)" for name, llm, answers in result.top_intents)
        or "none"))


@click.group("admin")
def admin_group() -> None:
    """Admin users of the web pages (/admin)."""


@admin_group.command("create-user")
@click.argument("username")
@click.password_option(help="Asked for twice when not given (at least 12 characters).")
@with_appcontext
def admin_create_user(username: str, password: str) -> None:
    """Add an admin who can log in at /admin (the password is stored as an argon2id hash)."""
    from tokens.admin import AdminError, create_user

    try:
        user = create_user(db.session, username, password)
    except AdminError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"created admin {user.username}; log in at /admin/login")


@admin_group.command("set-password")
@click.argument("username")
@click.password_option(help="Asked for twice when not given (at least 12 characters).")
@with_appcontext
def admin_set_password(username: str, password: str) -> None:
    """Replace an admin's password; their open sessions end."""
    from tokens.admin import AdminError, set_password

    try:
        user = set_password(db.session, username, password)
    except AdminError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"password of {user.username} replaced; their sessions have ended")


@admin_group.command("unlock")
@click.argument("username")
@with_appcontext
def admin_unlock(username: str) -> None:
    """Forget an admin's wrong passwords, so their next login at /admin need not wait
    (the growing delay of `tokens.admin.login_wait_seconds`). Unknown admin: an error, exit 1."""
    from tokens.admin import AdminError, unlock

    try:
        user = unlock(db.session, username)
    except AdminError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    click.echo(f"unlocked {user.username}: wrong passwords forgotten, the next login need not "
               "wait")


@click.group("contacts")
def contacts_group() -> None:
    """People's contact data."""


@contacts_group.command("forget")
@click.argument("phone")
@click.option("--whatsapp-id", "is_wa_id", is_flag=True,
              help="PHONE is a WhatsApp id (WaId) without a phone number.")
@click.confirmation_option(prompt="Delete this person's messages and contact for good?")
@with_appcontext
def contacts_forget(phone: str, is_wa_id: bool) -> None:
    """Delete the conversation data of the person with PHONE (E.164); their money records stay,
    detached from the number."""
    from bot.contacts import erasure_key, forget
    from tokens import account_links

    if is_wa_id:
        address = f"wa:{phone.strip()}"
    else:
        e164 = to_e164(phone.strip())
        if e164 is None:
            raise click.BadParameter(f"{phone!r} is not a phone number in E.164 form",
                                     param_hint="PHONE")
        address = e164
    done = forget(db.session, address, erasure_key(current_app.config["SECRET_KEY"]))
    if done is None:
        db.session.commit()  # its messages still waiting in the inbox, if any, are gone
        raise click.ClickException(f"no contact has the number {mask_address(address)} "
                                   "(any messages of it still waiting were deleted)")
    # The account page's links went to this number: none opens the page any more.
    account_links.forget_links(db.session, done.account_id)
    db.session.commit()
    logging.getLogger(__name__).info("contact forgotten", extra={
        "account": done.account_id, "messages": done.messages})
    click.echo(f"forgot {mask_address(address)}: {done.messages} messages and "
               f"{done.status_events} delivery callbacks deleted; account #{done.account_id} "
               f"keeps its ledger, costs and payments, linked only to a keyed hash of the "
               f"number (if it writes again it gets this account back, not a new allowance)")


@click.group("messages")
def messages_group() -> None:
    """Look after messages whose answer or delivery is stuck."""


@messages_group.command("sweep")
@click.option("--queued-minutes", default=2, show_default=True, type=click.IntRange(min=1),
              help="Re-enqueue priced messages still waiting for their answer after this long.")
@click.option("--unconfirmed-minutes", default=15, show_default=True,
              type=click.IntRange(min=1),
              help="Fail replies whose send no callback confirmed after this long (their "
                   "charge reversed).")
@with_appcontext
def messages_sweep(queued_minutes: int, unconfirmed_minutes: int) -> None:
    """Expire stale holds, re-enqueue lost answer jobs, give up on replies whose send was
    never confirmed, and tell people whose premium grace period ended (once each). Safe to
    run any time; run it from cron every few minutes."""
    from datetime import timedelta

    import redis

    from app.billing import deliver_notices, queue_notices
    from app.queue import enqueue_answer
    from bot import outbound, router
    from tokens.payment_events import grace_notices

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    expired = ledger.expire_holds(db.session)
    failed = outbound.give_up_unconfirmed(db.session, timedelta(minutes=unconfirmed_minutes))
    db.session.commit()
    settings = bot_settings(app)
    now = datetime.now(UTC)
    notices = grace_notices(db.session, now, settings.catalog.premium.grace_days)
    told = queue_notices(app, db.session, tuple(notices), now)
    db.session.commit()
    deliver_notices(app, told)
    waiting = router.waiting_answers(db.session, timedelta(minutes=queued_minutes))
    db.session.commit()
    try:
        requeued = sum(1 for sid in waiting if enqueue_answer(app, sid))
    except redis.RedisError as exc:
        raise click.ClickException(
            f"expired {expired} holds and failed {failed} unconfirmed replies, but Redis "
            f"cannot be reached ({type(exc).__name__}): {len(waiting)} waiting answers were "
            f"not re-enqueued; run the sweep again once Redis is back") from None
    click.echo(f"expired {expired} holds, failed {failed} unconfirmed replies, "
               f"re-enqueued {requeued} of {len(waiting)} waiting answers")


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Jobs in flight at once (default: WORKER_CONCURRENCY, else 128).")
@with_appcontext
def worker(burst: bool, concurrency: int | None) -> None:
    """Run a worker for the answers queue, inside the app context (needs REDIS_URL).

    One process keeps many answers in flight (`app.worker.ThreadedWorker`: RQ's worker loop
    with jobs on a thread pool), so the LLM's seconds hold a thread, not the process. One
    person's messages are still answered one at a time, in order (`app.turns`). The RQ
    scheduler runs too, for the delayed retries of failed jobs.
    """
    from app.queue import answers_queue, redis_connection
    from app.worker import ThreadedWorker, lower_priority

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    connection = redis_connection(app)
    queue = answers_queue(app)
    if connection is None or queue is None:
        raise click.ClickException("REDIS_URL is not set: without Redis, answers are given "
                                   "inline by the web process and no worker is needed")
    slots = concurrency or app.config["WORKER_CONCURRENCY"]
    app.config["WORKER_CONCURRENCY"] = slots  # the REST sender keeps as many connections
    if app.config["WORKER_NICE"]:
        # Below the web processes: with a backlog the workers would take every core, and
        # Twilio's webhooks (which only acknowledge) must keep answering within milliseconds.
        lower_priority(app.config["WORKER_NICE"])
    # RQ logs three INFO lines per job; "answer given" (app.jobs) says what each answer did,
    # so RQ's own lines are kept for LOG_LEVEL=DEBUG (they cost a few % of a job's CPU).
    rq_level = "DEBUG" if app.config["LOG_LEVEL"] == "DEBUG" else "WARNING"
    ThreadedWorker([queue], connection=connection, app=app, concurrency=slots,
                   cpu_slots=app.config["WORKER_CPU_SLOTS"]).work(
        burst=burst, with_scheduler=True, logging_level=rq_level)


@click.command("chat")
@click.option("--from", "sender", required=True, metavar="E164",
              help="The phone number you text as, in E.164 form, e.g. +15551234567.")
@click.option("--channel", type=click.Choice(["sms", "whatsapp"]), default="sms",
              show_default=True, help="The channel the messages arrive on.")
@with_appcontext
def chat(sender: str, channel: str) -> None:
    """Talk to the bot from a terminal, through the same pipeline as Twilio's webhook.

    Each line you type is one inbound message; the bot's reply is printed under it with the
    intent and the tokens it cost. Messages are stored and charged exactly as real ones.
    End with Ctrl-D (or an empty input stream).
    """
    adapter = get_adapter("console")
    assert isinstance(adapter, ConsoleAdapter)
    try:
        adapter.parse_line(sender, "", channel)
    except InvalidSender as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    settings = bot_settings()
    # The routing log lines would interleave with the conversation; warnings still show.
    logging.getLogger("bot").setLevel(logging.WARNING)
    stdin = sys.stdin
    interactive = stdin.isatty()
    click.echo(f"Texting {settings.catalog.bot_name} over {channel}. Try \"HELP\", \"meal plan\", "
               "\"BALANCE\". Ctrl-D ends.")
    while True:
        if interactive:
            click.echo("you> ", nl=False)
        line = stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        message = adapter.parse_line(sender, line, channel)
        outcome = answer_message(db.session, message, settings, transport="twiml")
        reply = adapter.render_reply(list(outcome.replies)) or "(no reply)"
        charged = outcome.tokens_charged
        cost = "free" if not charged else f"{charged} token{'s' if charged > 1 else ''}"
        label = outcome.intent or outcome.kind
        click.echo(f"bot> {reply}\n     [{label}, {cost}]")


@click.group("tokens")
def tokens_group() -> None:
    """Inspect and correct a person's tokens (ledger)."""


def _account_of(phone: str) -> tuple[int, str]:
    """(account id, masked phone) for an E.164 number, or a CLI error."""
    address = to_e164(phone.strip())
    if address is None:
        raise click.BadParameter(f"{phone!r} is not a phone number in E.164 form",
                                 param_hint="PHONE")
    contact = find_contact(db.session, address)
    if contact is None:
        raise click.ClickException(f"no contact has the number {mask_address(address)}")
    return contact.account_id, mask_address(address)


def usd(musd: int) -> str:
    """µUSD as dollars with all six decimals, e.g. 12345 -> "$0.012345" (a negative amount
    "$-0.012345")."""
    return format_usd(musd, 6, minus_after_symbol=True)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


@tokens_group.command("show")
@click.argument("phone")
@click.option("--entries", "limit", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="How many recent entries to list.")
@with_appcontext
def tokens_show(phone: str, limit: int) -> None:
    """A person's balance by bucket, the lots it is made of, pending holds, and recent entries
    with a running balance."""
    account_id, masked = _account_of(phone)
    balance = ledger.balance(db.session, account_id)
    click.echo(f"Account {account_id} ({masked})")
    click.echo(f"Posted {balance.posted} tokens, held {balance.held}, "
               f"available {balance.available}")
    buckets = ", ".join(f"{b} {n}" for b, n in balance.by_bucket.items()) or "none"
    click.echo(f"By bucket: {buckets}")
    month = costs.month(db.session, account_id)
    click.echo(f"\nThis month ({month.month}): cost {usd(month.cost_musd)} = LLM "
               f"{usd(month.cost_llm_musd)} ({month.llm_calls} calls, "
               f"{month.llm_prompt_tokens}+{month.llm_completion_tokens} LLM tokens) + messaging "
               f"{usd(month.cost_messaging_musd)} ({month.messages_in} in, "
               f"{month.messages_out} out) + platform {usd(month.cost_platform_musd)}; "
               f"{month.tokens_charged} tokens charged")

    click.echo("\nWhere the tokens come from (spent in this order):")
    lots = ledger.open_lots(db.session, account_id)
    for lot, credit in lots:
        click.echo(f"  {lot.remaining:>6} of {credit.amount:<6} {lot.bucket:<12} "
                   f"expires {_when(lot.expires_at):<16}  {credit.kind} {credit.idempotency_key}")
    if not lots:
        click.echo("  (none)")

    click.echo("\nPending holds:")
    holds = ledger.pending_holds(db.session, account_id)
    for hold in holds:
        click.echo(f"  #{hold.id} {hold.amount} tokens  {hold.memo or ''}  "
                   f"expires {_when(hold.expires_at)} UTC  {hold.idempotency_key}")
    if not holds:
        click.echo("  (none)")

    click.echo(f"\nRecent entries (last {limit}, oldest first):")
    click.echo(f"  {'id':>6}  {'time (UTC)':<16}  {'kind':<10}  {'bucket':<12}  "
               f"{'amount':>7}  {'balance':>7}  key / reason")
    for line in ledger.history(db.session, account_id, limit):
        entry = line.entry
        note = entry.memo or ""
        if entry.actor:
            note += f" (by {entry.actor})"
        click.echo(f"  {entry.id:>6}  {_when(entry.created_at):<16}  {entry.kind:<10}  "
                   f"{entry.bucket:<12}  {entry.amount:>+7}  {line.running_balance:>7}  "
                   f"{entry.idempotency_key}  {note}".rstrip())


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


@tokens_group.command("grant")
@click.argument("phone")
@click.argument("amount", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why; shown in the person's history.")
@click.option("--bucket", type=click.Choice(ledger.BUCKETS), default="bonus", show_default=True)
@click.option("--expires", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Day (UTC) the tokens lapse; default never.")
@click.option("--key", default=None, help="Idempotency key; repeating it grants nothing more.")
@click.option("--actor", default=None, help="Who grants; default cli:<login name>.")
@with_appcontext
def tokens_grant(phone: str, amount: int, reason: str, bucket: str, expires: datetime | None,
                 key: str | None, actor: str | None) -> None:
    """Grant AMOUNT tokens to the person with PHONE."""
    account_id, masked = _account_of(phone)
    expires_at = None if expires is None else expires.replace(tzinfo=UTC)
    posted = ledger.grant(db.session, account_id, amount, key=key or f"grant:cli:{uuid.uuid4()}",
                          bucket=bucket, expires_at=expires_at, memo=reason[:200],
                          actor=_actor(actor))
    db.session.commit()
    verb = "already granted" if posted.replayed else "granted"
    click.echo(f"{verb} {posted.amount} {bucket} tokens to {masked} ({posted.key}); "
               f"available now {ledger.balance(db.session, account_id).available}")


@tokens_group.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("phone")
@click.argument("amount", type=int)
@click.option("--reason", required=True, help="Why; shown in the person's history.")
@click.option("--key", default=None, help="Idempotency key; repeating it changes nothing more.")
@click.option("--actor", default=None, help="Who adjusts; default cli:<login name>.")
@with_appcontext
def tokens_adjust(phone: str, amount: int, reason: str, key: str | None,
                  actor: str | None) -> None:
    """Correct the balance of the person with PHONE by AMOUNT tokens (negative takes tokens,
    at most the available balance), e.g. `tokens adjust +15551234567 -5 --reason "..."`."""
    account_id, masked = _account_of(phone)
    try:
        posted = ledger.adjust(db.session, account_id, amount,
                               key=key or f"adjust:cli:{uuid.uuid4()}", reason=reason,
                               actor=_actor(actor))
    except (InvalidAmount, InsufficientTokens) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    db.session.commit()
    verb = "already adjusted" if posted.replayed else "adjusted"
    click.echo(f"{verb} {masked} by {amount:+} tokens ({posted.key}); "
               f"available now {ledger.balance(db.session, account_id).available}")


@tokens_group.command("purchases")
@click.argument("phone")
@with_appcontext
def tokens_purchases(phone: str) -> None:
    """A person's checkouts (packs and premium), what each credited or gave back, and their
    subscription."""
    from sqlalchemy import select

    from tokens.payments import Subscription, checkouts_of

    account_id, masked = _account_of(phone)
    click.echo(f"Purchases of account {account_id} ({masked}), newest first:")
    rows = checkouts_of(db.session, account_id)
    for checkout in rows:
        price = format_cents(checkout.amount_cents, checkout.currency, symbol=False)
        what = (f"{checkout.tokens} + {checkout.bonus_tokens} bonus tokens"
                if checkout.mode == "payment" else "premium subscription")
        refunded = (f", refunded {format_cents(checkout.refunded_cents, None)}"
                    if checkout.refunded_cents else "")
        click.echo(f"  {_when(checkout.created_at):<16}  {checkout.item_code:<10} {price:>10}  "
                   f"{checkout.status:<9}  {what}{refunded}  {checkout.provider} "
                   f"{checkout.external_id}")
    if not rows:
        click.echo("  (none)")
    subscription = db.session.scalar(
        select(Subscription).where(Subscription.account_id == account_id)
        .order_by(Subscription.updated_at.desc()).limit(1))
    if subscription is not None:
        plan = bot_settings().catalog.premium
        premium = subscription.premium(datetime.now(UTC), plan.grace_days)
        click.echo(f"Subscription {subscription.external_id}: {subscription.status}"
                   f"{', premium' if premium else ', no premium'}"
                   f"{', cancels at period end' if subscription.cancel_at_period_end else ''}")


@tokens_group.command("expire-holds")
@with_appcontext
def tokens_expire_holds() -> None:
    """Expire every pending hold past its TTL, releasing its tokens (safe to run any time,
    e.g. from cron; each person's own next request also expires their stale holds)."""
    expired = ledger.expire_holds(db.session)
    db.session.commit()
    click.echo(f"expired {expired} hold{'s' if expired != 1 else ''}")
