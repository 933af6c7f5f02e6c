"""Flask CLI commands (`flask --app wsgi ...`)."""

from __future__ import annotations

import logging
import sys

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.extensions import db
from bot.channels import get_adapter
from bot.channels.console import ConsoleAdapter
from bot.errors import InvalidSender
from bot.router import BotSettings, handle_inbound


def register_cli(app: Flask) -> None:
    """Add this project's commands to `app.cli`."""
    app.cli.add_command(chat)


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
    settings: BotSettings = current_app.extensions["bot_settings"]
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
        outcome = handle_inbound(db.session, message, settings)
        db.session.commit()
        reply = adapter.render_reply(list(outcome.replies)) or "(no reply)"
        charged = outcome.tokens_charged
        cost = "free" if not charged else f"{charged} token{'s' if charged > 1 else ''}"
        label = outcome.intent or outcome.kind
        click.echo(f"bot> {reply}\n     [{label}, {cost}]")
