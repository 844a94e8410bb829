"""The agent console: run what an agent typed or tapped in Telegram, as that agent, and say what happened.

The Telegram bot hands each agent message to `answer_agent` (in a worker thread: it touches the
database) and sends back the answer. Actions go through `router.actions` in one transaction each,
as the CLI runs them; every refusal becomes its sentence, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from connectors.telegram.console import (
    AVAILABILITY_COMMANDS,
    ConsoleCommand,
    ConsoleHelp,
    ConsoleMistake,
    parse_console,
)
from connectors.telegram.send import Buttons
from models.errors import ActionRefused, NotFound, PaidanError
from models.message import Attachment
from models.tables import Agent, AttachmentRow, CannedReply, Customer, Message, SlaClock, Ticket
from paidan.cli_report import summary_lines
from paidan.cli_router import age_text, format_found
from paidan.db import transaction
from paidan.logs import mask
from router import actions, outreach, replies, states
from router.config import RouterConfig
from router.identity import describe_block, root_customer
from router.privacy import same_person
from router.reports import build_report, last_days
from router.queries import due_soon
from router.search import find_tickets
from router.cursors import claim_once, recall_once, remember_once

log = logging.getLogger(__name__)

LIST_LIMIT = 20  # tickets in one /queue or /mine answer: a phone screen or two
FIND_LIMIT = 8  # /find results, two lines each
HISTORY_SHOWN = 3  # the customer's other tickets /show names
SUITED_REPLIES = 5  # saved replies of the ticket's category /show suggests
SAVED_REPLIES_LISTED = 40  # names in one /replies answer; `paidan replies list` has them all
# An album's reply waits this long for the album's other files, which Telegram sends as updates of their own
# within a second or so, to go out with them as one mail or one Telegram album.
ALBUM_WAIT = timedelta(seconds=5)
FILE_CARRIERS = frozenset({"reply", "note"})  # the console actions a photo or document may come with
SAVED_REPLY_CHANGES = frozenset({"add_reply", "edit_reply", "remove_reply"})  # supervisors' /replies add|edit|remove
SHOW_MESSAGES = 5  # the latest messages /show quotes
QUOTE_CHARS = 160


@dataclass(frozen=True, slots=True)
class ConsoleAnswer:
    """What the bot sends back: plain text, and buttons as rows of (label, callback_data)."""

    text: str
    buttons: Buttons = ()


def answer_agent(engine: Engine, config: RouterConfig, telegram_id: int, text: str | None,
                 reply_to_text: str | None = None, callback_data: str | None = None, *,
                 now: datetime, once: str | None = None,
                 dashboard_link: Callable[[int], str] | None = None,
                 attachments: Sequence[Attachment] = (), album: str | None = None) -> ConsoleAnswer:
    """Parse and run one agent message; help and mistakes are answered without the database.
    `once`: a key naming this message (its Telegram update), so a redelivered one acts only once.
    `dashboard_link`: agent id → a sign-in link to the dashboard (None: /dashboard says it is not served).
    `attachments`: the message's photo or document, which a reply or a note takes along.
    `album`: Telegram's media group id, when the files were sent together: the first one's caption says
    where they go (`/reply GD… text`), the others have none and follow it."""
    parsed = parse_console(text, reply_to_text=reply_to_text, callback_data=callback_data,
                           has_files=bool(attachments))
    if isinstance(parsed, ConsoleHelp):
        return ConsoleAnswer(parsed.text)
    if isinstance(parsed, ConsoleMistake) and album and attachments and not (text or "").strip():
        parsed = _rest_of_album(engine, telegram_id, album, now) or parsed
    if isinstance(parsed, ConsoleMistake):
        return ConsoleAnswer(parsed.message)
    if album and attachments and parsed.action in FILE_CARRIERS and parsed.via != "album":
        _album_goes_with(engine, telegram_id, album, parsed, now)
        parsed = replace(parsed, album=album)
    if attachments and parsed.action not in FILE_CARRIERS:
        return ConsoleAnswer(f"files go to a customer with /reply or as a reply to the ticket's message, or on "
                             f"the ticket with /note; /{parsed.action} takes none, so nothing was done")
    if attachments:
        parsed = replace(parsed, attachments=tuple(attachments))
    return run_console(engine, config, telegram_id, parsed, now=now, once=once, dashboard_link=dashboard_link)


def _album_key(telegram_id: int, album: str) -> str:
    return f"album:{telegram_id}:{album}"


def _album_goes_with(engine: Engine, telegram_id: int, album: str, command: ConsoleCommand, now: datetime) -> None:
    """Remember where an album's first file went, for the files after it (kept as long as the console's
    once-keys: far longer than an album takes to arrive). Only the first file's command counts."""
    with transaction(engine) as session:
        if claim_once(session, _album_key(telegram_id, album), now) is None:
            remember_once(session, _album_key(telegram_id, album), {"action": command.action, "ticket": command.ticket})


def _rest_of_album(engine: Engine, telegram_id: int, album: str, now: datetime) -> ConsoleCommand | None:
    """A file of an album after its first: the same action on the same ticket, without text."""
    with Session(engine) as session:
        first = recall_once(session, _album_key(telegram_id, album))
    if not first or first.get("action") not in FILE_CARRIERS or not first.get("ticket"):
        return None
    return ConsoleCommand(first["action"], first["ticket"], via="album", album=album,
                          joins=int(first.get("message_id") or 0))


def run_console(engine: Engine, config: RouterConfig, telegram_id: int, command: ConsoleCommand, *,
                now: datetime, once: str | None = None,
                dashboard_link: Callable[[int], str] | None = None) -> ConsoleAnswer:
    """Run `command` as the agent behind `telegram_id`; the answer says what happened or why not.
    With `once`, an action whose key was already committed is not run again (listings always are)."""
    try:
        if command.action == "dashboard":
            with Session(engine) as session:
                return _dashboard(actions.agent_for_telegram(session, telegram_id), dashboard_link)
        if command.action == "report":
            with Session(engine) as session:
                return _report(session, actions.agent_for_telegram(session, telegram_id), int(command.text), config, now)
        if command.action in _READS:
            with Session(engine) as session:
                agent = actions.agent_for_telegram(session, telegram_id)
                return _READS[command.action](session, agent, command, now)
        with transaction(engine) as session:
            if once is not None and claim_once(session, once, now) is not None:
                return ConsoleAnswer(_already_done(command))
            agent = actions.agent_for_telegram(session, telegram_id)
            if command.action in SAVED_REPLY_CHANGES:
                return _change_saved_reply(session, agent, command, config, now)
            if command.action in AVAILABILITY_COMMANDS:
                # Naming someone else (supervisors): sent offline, everything they hold is handed on.
                other = command.agent or None
                return ConsoleAnswer(actions.set_availability(session, agent, command.action == "online", config, now,
                                                              agent=other, hand_on=other is not None).summary)
            outcome = _act(session, agent, command, config, now)
    except replies.UnknownReply as error:
        guess = f" (did you mean !{' or !'.join(error.close)}?)" if error.close else ""
        return ConsoleAnswer(f"no saved reply called {error.name!r}{guess}; /replies lists them (nothing was sent). "
                             f"To send text that starts with !, start it with !! instead")
    except PaidanError as error:
        return ConsoleAnswer(str(error))
    except OperationalError:
        # The database is down or locked past its timeout: the transaction rolled back.
        log.warning("agent console: the database did not answer for %s", command.action, exc_info=True)
        return ConsoleAnswer("the database is not answering right now; nothing was changed, try again in a moment")
    return _outcome_answer(outcome)


# ---------------------------------------------------------------- actions


def _act(session: Session, agent: Agent, command: ConsoleCommand, config: RouterConfig,
         now: datetime) -> actions.Outcome:
    number = command.ticket or ""
    match command.action:
        case "accept":
            return actions.accept(session, number, agent, config, now)
        case "take":
            return actions.take(session, number, agent, config, now)
        case "decline":
            return actions.decline(session, number, agent, config, now, reason=command.text)
        case "reply" | "note" if command.joins:
            # A later file of an album: it joins the reply its first file went with, while that waits.
            joined = actions.add_files(session, number, agent, command.joins, command.attachments, now)
            return joined or actions.reply(session, number, agent, "", config, now, public=command.action == "reply",
                                           attachments=command.attachments)
        case "reply" | "note":
            # An album's first file: its reply waits a moment for the rest, which Telegram sends one by one.
            hold = ALBUM_WAIT if command.album and command.via != "album" else None
            if command.saved:
                outcome = _send_saved_reply(session, agent, command, config, now, hold=hold)
            else:
                outcome = actions.reply(session, number, agent, command.text, config, now, hold=hold,
                                        public=command.action == "reply", attachments=command.attachments)
            if hold and agent.telegram_id is not None:
                remember_once(session, _album_key(agent.telegram_id, command.album),
                              {"action": command.action, "ticket": number, "message_id": outcome.data["message_id"]})
            return outcome
        case "wait":
            return actions.wait_for_customer(session, number, agent, config, now, note=command.text)
        case "resolve":
            return actions.resolve(session, number, agent, config, now, note=command.text)
        case "reopen":
            return actions.reopen(session, number, agent, config, now, reason=command.text)
        case "relabel":
            return actions.relabel(session, number, agent, command.head, command.label, config, now)
        case "assign":
            return actions.reassign(session, number, agent, config, now, to=command.agent or None)
        case "files":
            return actions.send_files(session, number, agent, config, now)
        case "merge":
            return actions.merge(session, number, agent, config, now, into=command.into, reason=command.text)
        case "spam":
            return actions.mark_spam(session, number, agent, config, now, reason=command.text)
        case "remind":
            return actions.follow_up(session, number, agent, config, now, after=command.after, note=command.text)
        case "notspam":
            return actions.not_spam(session, number, agent, config, now, reason=command.text)
        case "split":
            return actions.split(session, number, agent, config, now, last=command.last, reason=command.text)
        case "open":
            return outreach.open_ticket(session, command.to, agent, config, now, text=command.text)
    raise ActionRefused(f"the console has no action {command.action!r}; send /help for the commands")


def _send_saved_reply(session: Session, agent: Agent, command: ConsoleCommand, config: RouterConfig,
                      now: datetime, hold: timedelta | None = None) -> actions.Outcome:
    """`!name`: the saved reply, filled in for this ticket's customer, goes out as a typed reply would."""
    rendered = replies.for_ticket(session, command.saved, command.ticket or "", agent.name, extra=command.text)
    outcome = actions.reply(session, command.ticket or "", agent, rendered.text, config, now,
                            attachments=command.attachments, saved_reply=rendered.name, hold=hold)
    return replace(outcome, data={**outcome.data, "language": rendered.language})


def _already_done(command: ConsoleCommand) -> str:
    if command.ticket:
        return (f"already done: this {command.action} of {command.ticket} arrived twice and was carried out once "
                f"(/show {command.ticket})")
    hint = " (send /replies to see them)" if command.action in SAVED_REPLY_CHANGES else ""
    return f"already done: this message arrived twice and was carried out once{hint}"


def _outcome_answer(outcome: actions.Outcome) -> ConsoleAnswer:
    lines = [outcome.summary, f"state: {outcome.state}" + (f" · held by {outcome.agent}" if outcome.agent else "")]
    if outcome.data.get("saved_reply"):
        lines.append(f"sent the saved reply !{outcome.data['saved_reply']} ({outcome.data['language']})")
    if outcome.data.get("warning"):
        lines.append(f"note: {outcome.data['warning']}")
    if outcome.action == "accept":
        # The answer names the ticket, so a Telegram reply to it reaches the customer.
        lines.append("Reply to this message to write to the customer.")
    return ConsoleAnswer("\n".join(lines))


# ---------------------------------------------------------------- listings


def _queue(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    rows = actions.waiting(session, now, limit=LIST_LIMIT + 1)
    if not rows:
        return ConsoleAnswer("the queue is empty: every open ticket has an agent")
    lines = [f"waiting for an agent ({len(rows) if len(rows) <= LIST_LIMIT else f'{LIST_LIMIT}+'}):"]
    for row in rows[:LIST_LIMIT]:
        state = row["state"] + (" (triage)" if row["queue"] == "triage" else "")
        lines.append(_line(row["number"], row["priority"], state, timedelta(seconds=row["age_seconds"]),
                           row["subject"]))
    if len(rows) > LIST_LIMIT:
        lines.append("… more in `paidan queue`")
    return ConsoleAnswer("\n".join(lines))


def _mine(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    tickets = session.scalars(
        select(Ticket)
        .where(Ticket.assigned_agent_id == agent.id, Ticket.queue.is_(None), Ticket.state.in_(states.OPEN_STATES))
        .order_by(actions.URGENCY, Ticket.created_at, Ticket.id)
        .limit(LIST_LIMIT + 1)
    ).all()
    if not tickets:
        return ConsoleAnswer(f"{agent.name}, you hold no open tickets")
    lines = [f"{agent.name}'s open tickets ({len(tickets) if len(tickets) <= LIST_LIMIT else f'{LIST_LIMIT}+'}):"]
    for t in tickets[:LIST_LIMIT]:
        state = t.state + (" (to accept)" if t.state == states.ASSIGNED and t.accepted_at is None else "")
        lines.append(_line(t.number, t.priority, state, now - t.created_at, t.subject))
    if len(tickets) > LIST_LIMIT:
        lines.append("… more in `paidan tickets list`")
    return ConsoleAnswer("\n".join(lines))


def _show(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    ticket = session.scalar(select(Ticket).where(Ticket.number == (command.ticket or "").upper()))
    if ticket is None:
        raise NotFound(f"no ticket {command.ticket!r} (send /queue or /mine for yours)")
    holder = session.get(Agent, ticket.assigned_agent_id) if ticket.assigned_agent_id and not ticket.queue else None
    labels = "/".join(label for label in (ticket.type, ticket.category) if label)
    lines = [
        " · ".join(part for part in (ticket.number, ticket.priority, labels, ticket.state) if part),
        _where(ticket, holder),
        f"via {ticket.channel} · opened {_age(now - ticket.created_at)} ago"
        f" · {ticket.customer.display_name or 'customer'}",
    ]
    if ticket.subject:
        lines.append(f"subject: {_clip(ticket.subject, QUOTE_CHARS)}")
    customer = session.get(Customer, root_customer(session, ticket.customer_id))
    if customer.blocked_at is not None:
        lines.append(f"🚫 customer {describe_block(customer)} (/notspam {ticket.number} lifts it)")
    lines += _history_lines(session, ticket, customer, now)
    lines += _clock_lines(session, ticket, now)
    messages = session.scalars(
        select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id.desc()).limit(SHOW_MESSAGES)
    ).all()
    files = dict(session.execute(
        select(AttachmentRow.message_id, func.count()).where(AttachmentRow.message_id.in_([m.id for m in messages]))
        .group_by(AttachmentRow.message_id)).all())
    for m in reversed(messages):
        attached = f" 📎{files[m.id]}" if files.get(m.id) else ""
        lines.append(f"{_author(m)}, {_age(now - m.received_at)} ago{attached}: {_clip(m.text, QUOTE_CHARS)}")
    if any(files.get(m.id) and m.direction == "in" for m in messages):
        lines.append(f"📎 the customer's files: /files {ticket.number}")
    if ticket.state in states.OPEN_STATES and ticket.category:
        suited = session.scalars(select(CannedReply.name).where(CannedReply.category == ticket.category)
                                 .order_by(CannedReply.name).limit(SUITED_REPLIES + 1)).all()
        if suited:
            more = " …" if len(suited) > SUITED_REPLIES else ""
            lines.append(f"saved replies for {ticket.category}: "
                         + " ".join(f"!{name}" for name in suited[:SUITED_REPLIES]) + more
                         + f" (/reply {ticket.number} !name)")
    offered_to_you = holder is not None and holder.id == agent.id and ticket.accepted_at is None \
        and ticket.state == states.ASSIGNED
    buttons: Buttons = ((("✅ Accept", f"accept:{ticket.number}"), ("❌ Decline", f"decline:{ticket.number}")),) \
        if offered_to_you else ()
    return ConsoleAnswer("\n".join(lines), buttons)


def _where(ticket: Ticket, holder: Agent | None) -> str:
    if ticket.queue:
        return f"waiting in the {ticket.queue} queue" + (f" ({ticket.queue_reason})" if ticket.queue_reason else "")
    if holder is None:
        return "not assigned yet"
    return f"held by {holder.name}" if ticket.state in states.OPEN_STATES else f"last held by {holder.name}"


def _history_lines(session: Session, ticket: Ticket, customer: Customer, now: datetime) -> list[str]:
    """The customer's other tickets, newest first (everyone merged into them counts): "they wrote last
    week too" changes how an agent answers, and their numbers lead to /show."""
    others = session.execute(
        select(Ticket.number, Ticket.state, Ticket.updated_at, func.count().over())
        .where(Ticket.customer_id.in_(same_person(session, customer.id)), Ticket.id != ticket.id,
               Ticket.state != states.MERGED)
        .order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(HISTORY_SHOWN)
    ).all()
    if not others:
        return [f"first ticket of this customer{' (VIP)' if customer.vip else ''}"]
    shown = " · ".join(f"{n} {state} {_age(now - at)} ago" for n, state, at, _ in others)
    more = f" · and {others[0][3] - len(others)} older" if others[0][3] > len(others) else ""
    return [f"{'VIP · ' if customer.vip else ''}{others[0][3]} other ticket(s): {shown}{more}"]


def _clock_lines(session: Session, ticket: Ticket, now: datetime) -> list[str]:
    clocks = session.scalars(select(SlaClock).where(SlaClock.ticket_id == ticket.id, SlaClock.stopped_at.is_(None))
                             .order_by(SlaClock.id)).all()
    lines = []
    for clock in clocks:
        name = clock.kind.replace("_", " ")
        if clock.paused_since is not None or clock.due_at is None:
            lines.append(f"SLA {name}: paused")
        elif clock.due_at < now:
            lines.append(f"SLA {name}: overdue by {_age(now - clock.due_at)}")
        else:
            lines.append(f"SLA {name}: due in {_age(clock.due_at - now)}")
    return lines


def _author(message: Message) -> str:
    if message.direction == "in":
        return "← customer"
    name = message.sender.removeprefix("agent:") or "agent"
    return f"→ {name}" if message.public else f"🔒 note by {name}"


# ---------------------------------------------------------------- saved replies


def _saved_replies(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    """`/replies`: each saved reply's name and first line; `/replies NAME`: that one in full."""
    if command.saved:
        return _saved_reply(replies.get_reply(session, command.saved))
    rows = replies.list_replies(session)
    if not rows:
        return ConsoleAnswer("no saved replies yet; a supervisor adds one: /replies add refund 中文 || English "
                             "(or `paidan replies add`)")
    lines = [f"常用回复 · saved replies ({len(rows)}):"]
    for reply in rows[:SAVED_REPLIES_LISTED]:
        category = f" · {reply.category}" if reply.category else ""
        lines.append(f"!{reply.name}{category} · {_clip(replies.first_line(reply), 40)}")
    if len(rows) > SAVED_REPLIES_LISTED:
        lines.append("… more in `paidan replies list`")
    lines.append("send one: /reply GD… !name [your words], or answer a ticket's message with !name")
    return ConsoleAnswer("\n".join(lines))


def _saved_reply(reply: CannedReply) -> ConsoleAnswer:
    about = " · ".join(part for part in (f"!{reply.name}", reply.category, f"updated by {reply.updated_by}") if part)
    return ConsoleAnswer("\n".join([about, f"中文: {reply.text_zh or '(none: the English text is sent)'}",
                                    f"English: {reply.text_en or '(none: the Chinese text is sent)'}"]))


def _change_saved_reply(session: Session, agent: Agent, command: ConsoleCommand, config: RouterConfig,
                        now: datetime) -> ConsoleAnswer:
    """Supervisors keep the saved replies: `/replies add|edit NAME 中文 || English`, `/replies remove NAME`."""
    if not actions.is_supervisor(agent):
        # Raised, not answered: a refusal commits nothing, so a redelivery is judged afresh.
        raise ActionRefused("常用回复由主管维护 · only supervisors and admins change the saved replies; "
                            "ask one of them, or send /replies to see them")
    by, categories = f"agent:{agent.name}", actions.label_sets(config)["category"]
    if command.action == "remove_reply":
        return ConsoleAnswer(f"removed !{replies.remove_reply(session, command.saved)}")
    if command.action == "add_reply":
        reply = replies.add_reply(session, command.saved, zh=command.zh, en=command.en, by=by, now=now,
                                  categories=categories)
        done = "saved"
    else:  # edit: a text left out stays as it was
        reply = replies.update_reply(session, command.saved, zh=command.zh or None, en=command.en or None, by=by,
                                     now=now, categories=categories)
        done = "changed"
    languages = " and ".join(name for name, text in (("中文", reply.text_zh), ("English", reply.text_en)) if text)
    return ConsoleAnswer(f"{done} !{reply.name} ({languages}); send it with /reply GD… !{reply.name}")


def _find(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    found = find_tickets(session, command.text, limit=FIND_LIMIT)
    if not found:
        return ConsoleAnswer(f"no tickets match {command.text!r} (ticket numbers, customers' emails, phones, "
                             f"Telegram ids and names, subjects and messages were searched)")
    lines = [f"{len(found)} ticket(s) for {command.text!r}, open ones first:"]
    lines += [format_found(f, now, mask=mask) for f in found]
    if len(found) == FIND_LIMIT:
        lines.append(f"… there may be more: `paidan tickets find {command.text} --limit 100`")
    lines.append("/show GD… for one of them")
    return ConsoleAnswer("\n".join(lines))


def _report(session: Session, agent: Agent, days: int, config: RouterConfig, now: datetime) -> ConsoleAnswer:
    """The report's headline figures, for a supervisor on the move; the dashboard has the rest."""
    if not actions.is_supervisor(agent):
        return ConsoleAnswer("报表只对主管开放 · the report is for supervisors and admins; `paidan report` has it too")
    timezone = config.calendar.timezone  # the desk's days, as `paidan report` counts them
    since, until = last_days(days, now, timezone)
    report = build_report(session, since=since, until=until, now=now, timezone=timezone)
    period = "today" if days == 1 else f"the last {days} days"
    return ConsoleAnswer("\n".join([f"📊 {period} ({report.days[0]} – {report.days[-1]}, {timezone})",
                                    *summary_lines(report), "charts and agents: /dashboard"]))


def _due(session: Session, agent: Agent, command: ConsoleCommand, now: datetime) -> ConsoleAnswer:
    """SLA clocks running out within the time asked (overdue first): a supervisor's whole desk, an
    agent's own tickets."""
    within = command.after or timedelta(hours=2)
    everyone = actions.is_supervisor(agent)
    rows = due_soon(session, now, within, limit=LIST_LIMIT + 1, holder=None if everyone else agent.id)
    scope = "" if everyone else "your "
    if not rows:
        return ConsoleAnswer(f"no SLA clock of {scope}open tickets runs out within {_age(within)}")
    count = len(rows) if len(rows) <= LIST_LIMIT else f"{LIST_LIMIT}+"
    lines = [f"SLA clocks of {scope}open tickets running out within {_age(within)} ({count}):"]
    for r in rows[:LIST_LIMIT]:
        left = r.due_at - now
        when = f"{_age(-left)} overdue" if left < timedelta(0) else f"in {_age(left)}"
        clock = "first response" if r.kind == "first_response" else r.kind
        lines.append(f"{r.number} · {r.priority} · {clock} {when} · {r.agent or 'no agent'} · {_clip(r.subject, 30)}")
    if len(rows) > LIST_LIMIT:
        lines.append("… more in `paidan tickets due`")
    return ConsoleAnswer("\n".join(lines))


_READS: dict[str, Callable[[Session, Agent, ConsoleCommand, datetime], ConsoleAnswer]] = {
    "queue": _queue, "mine": _mine, "show": _show, "replies": _saved_replies, "find": _find, "due": _due,
}


def _dashboard(agent: Agent, link: Callable[[int], str] | None) -> ConsoleAnswer:
    if not actions.is_supervisor(agent):
        return ConsoleAnswer("看板只对主管开放 · the dashboard is for supervisors and admins; "
                             "ask one of them, or run `paidan report` for the same numbers")
    if link is None:
        return ConsoleAnswer("this paidan does not serve the dashboard; run `paidan report` for the same numbers")
    return ConsoleAnswer(f"看板登录链接，仅可使用一次，12 小时内有效，请勿转发 · your sign-in link to the dashboard: "
                         f"it works once, within 12 hours; do not pass it on:\n{link(agent.id)}")


# ---------------------------------------------------------------- formatting


def _line(number: str, priority: str | None, state: str, age: timedelta, subject: str | None) -> str:
    return f"{number} · {priority or '-'} · {state} · {_age(age)} · {_clip(subject or '(no subject)', 40)}"


def _age(delta: timedelta) -> str:
    return age_text(max(0, int(delta.total_seconds())))


def _clip(text: str, limit: int) -> str:
    text = " ".join((text or "").split())  # one line per message in a listing
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
