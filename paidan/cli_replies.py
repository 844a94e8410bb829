"""`paidan replies add | edit | list | show | remove`: the saved replies agents send from Telegram (`!refund`).

`paidan.cli` registers the group with ``cli.add_command(replies)``. Every change runs in one
transaction through `router.replies`; mistakes (a bad name, an unknown placeholder, a name taken)
become one readable line and exit status 1.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from paidan.cli_router import _engine, _now, _router_config
from paidan.console import cli_actor, clear_errors, make_console

PLACEHOLDER_HELP = ("Placeholders: {ticket} (the ticket number), {name} (the customer's name, or 客户 / customer) "
                    "and {agent} (who sends it); {{ and }} are literal braces.")


def _categories() -> tuple[str, ...]:
    from router.actions import label_sets

    return label_sets(_router_config())["category"]


def _as_dict(reply) -> dict:
    return {"name": reply.name, "category": reply.category, "zh": reply.text_zh, "en": reply.text_en,
            "created_by": reply.created_by, "created_at": reply.created_at.isoformat(),
            "updated_by": reply.updated_by, "updated_at": reply.updated_at.isoformat()}


_actor_option = click.option("--as", "actor", envvar="PAIDAN_AGENT", metavar="WHO",
                             help="Who makes the change, as recorded (default: cli:<your login>).")


@click.group()
def replies() -> None:
    """Saved replies: answers agents send by name instead of typing them again.

    In Telegram an agent sends one with `/reply GD… !NAME [more words]`, or by answering a ticket's
    message with `!NAME`; the customer gets the Chinese or the English text, as their ticket's
    language says (both when it is not known), with the placeholders filled in.
    """


@replies.command("add", epilog=PLACEHOLDER_HELP)
@click.argument("name")
@click.option("--zh", default="", help="The Chinese text.")
@click.option("--en", default="", help="The English text (give --zh, --en or both).")
@click.option("--category", help="The category of tickets it answers: technical, service, transaction, product.")
@_actor_option
def add(name: str, zh: str, en: str, category: str | None, actor: str | None) -> None:
    """Save a reply called NAME (a short slug: refund, 退款, vip-sla; case does not matter)."""
    from paidan.db import transaction
    from router.replies import add_reply

    with clear_errors(), transaction(_engine()) as session:
        reply = add_reply(session, name, zh=zh, en=en, category=category, by=cli_actor(actor), now=_now(),
                          categories=_categories())
        languages = " and ".join(lang for lang, text in (("Chinese", reply.text_zh), ("English", reply.text_en))
                                 if text)
        click.echo(f"saved !{reply.name} ({languages}); agents send it with /reply GD… !{reply.name}")


@replies.command("edit", epilog=PLACEHOLDER_HELP)
@click.argument("name")
@click.option("--zh", help="A new Chinese text (\"\" removes it).")
@click.option("--en", help="A new English text (\"\" removes it).")
@click.option("--category", help="A new category (\"\" removes it).")
@_actor_option
def edit(name: str, zh: str | None, en: str | None, category: str | None, actor: str | None) -> None:
    """Change the saved reply NAME; what you leave out stays as it is."""
    from paidan.db import transaction
    from router.replies import update_reply

    if zh is None and en is None and category is None:
        raise click.UsageError("say what to change: --zh, --en and/or --category")
    with clear_errors(), transaction(_engine()) as session:
        reply = update_reply(session, name, zh=zh, en=en, category=category, by=cli_actor(actor), now=_now(),
                             categories=_categories())
        click.echo(f"changed !{reply.name}")


@replies.command("list")
@click.option("--category", help="Only replies for this category (and those for any).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(category: str | None, as_json: bool) -> None:
    """List the saved replies: name, category and the first line of each text."""
    from sqlalchemy.orm import Session

    from router.replies import list_replies

    with Session(_engine()) as session:
        data = [_as_dict(r) for r in list_replies(session, category=category)]
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if not data:
        click.echo("no saved replies yet: add one with `paidan replies add NAME --zh … --en …`")
        return
    table = Table("name", "category", "中文", "English", "updated")
    for r in data:
        table.add_row(f"!{r['name']}", r["category"] or "-", _first_line(r["zh"]), _first_line(r["en"]),
                      f"{r['updated_at'][:16]} {r['updated_by']}")
    make_console().print(table)


@replies.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(name: str, as_json: bool) -> None:
    """Show the saved reply NAME in full."""
    from sqlalchemy.orm import Session

    from router.replies import get_reply

    with clear_errors(), Session(_engine()) as session:
        data = _as_dict(get_reply(session, name))
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo(f"!{data['name']}  category: {data['category'] or '-'}\n"
               f"created {data['created_at'][:16]} by {data['created_by']}, "
               f"updated {data['updated_at'][:16]} by {data['updated_by']}\n"
               f"\n中文:\n{data['zh'] or '(none: Chinese-speaking customers get the English text)'}\n"
               f"\nEnglish:\n{data['en'] or '(none: English-speaking customers get the Chinese text)'}")


@replies.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove the saved reply NAME (tickets it was sent on keep their copy; its texts are printed)."""
    from paidan.db import transaction
    from router.replies import get_reply, remove_reply

    with clear_errors(), transaction(_engine()) as session:
        gone = _as_dict(get_reply(session, name))
        remove_reply(session, name)
    # Printed, so a removal by mistake can be undone by hand with `replies add`.
    click.echo(f"removed !{gone['name']}; it said:\n中文: {gone['zh'] or '-'}\nEnglish: {gone['en'] or '-'}")


def _first_line(text: str) -> str:
    line = text.splitlines()[0].strip() if text else "-"
    return line if len(line) <= 40 else line[:39].rstrip() + "…"
