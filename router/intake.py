"""Durable, idempotent intake: every channel hands its InboundMessage to `Intake.accept`.

The message, its customer and its ticket are written in one transaction; only after the commit
does `accept` return the Receipt the channel acknowledges with. Concurrent accepts are
group-committed by one writer thread: SQLite allows one writer anyway, and one fsync for a
batch of messages is what lets a single machine take thousands of messages a second.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from models.errors import PaidanError, StorageUnavailable
from models.message import InboundMessage, Receipt
from models.tables import (
    AttachmentRow,
    Customer,
    Identity,
    Message,
    Ticket,
    TicketCounter,
    TicketEvent,
)
from router import states

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def store_batch(
    session: Session, messages: list[InboundMessage], *, tz: ZoneInfo, first_response: timedelta, now: datetime
) -> list[Receipt]:
    """Write messages (and new tickets for those that start a conversation). Never commits.

    Set-based on purpose: a handful of multi-row statements for the whole batch instead of a
    dozen per message, which is most of intake's cost. A batch of one is the careful path.
    """
    receipts: dict[int, Receipt] = {}
    already = _existing_messages(session, messages)
    fresh: list[tuple[int, InboundMessage]] = []
    seen_keys: dict[tuple[str, str], int] = {}
    for pos, msg in enumerate(messages):
        key = (msg.channel.value, msg.external_id)
        if key in already:
            receipts[pos] = already[key]
        elif key in seen_keys:
            fresh.append((pos, msg))  # the same message twice in one batch: settled below
        else:
            seen_keys[key] = pos
            fresh.append((pos, msg))

    originals = [(pos, msg) for pos, msg in fresh if seen_keys[(msg.channel.value, msg.external_id)] == pos]
    customers, customer_flags = _customers_for(session, [msg for _, msg in originals], now)

    threads: dict[int, tuple[int | None, list[str]]] = {}
    for (pos, msg), customer_id in zip(originals, customers):
        threads[pos] = _find_thread(session, customer_id, msg)

    new_ticket_positions = [pos for pos, _ in originals if threads[pos][0] is None]
    numbers = _next_ticket_numbers(session, now.astimezone(tz).strftime("%Y%m%d"), len(new_ticket_positions))
    by_pos = dict(originals)
    customer_of = {pos: cid for (pos, _), cid in zip(originals, customers)}
    flags_of = {pos: [*flags, *threads[pos][1]] for (pos, _), flags in zip(originals, customer_flags)}

    ticket_ids: dict[int, int] = {}
    if new_ticket_positions:
        rows = session.execute(
            insert(Ticket.__table__).returning(Ticket.__table__.c.id, sort_by_parameter_order=True),
            [
                {
                    "number": number,
                    "customer_id": customer_of[pos],
                    "channel": by_pos[pos].channel.value,
                    "subject": _subject(by_pos[pos]),
                    "state": states.NEW,
                    "language": by_pos[pos].language,
                    "created_at": now,
                    "updated_at": now,
                }
                for pos, number in zip(new_ticket_positions, numbers)
            ],
        ).scalars().all()
        ticket_ids.update(zip(new_ticket_positions, rows))
        session.execute(insert(TicketEvent.__table__), [
            {
                "ticket_id": ticket_ids[pos], "at": now, "actor": "customer", "kind": "created",
                "to_state": states.NEW, "reason": f"first message on {by_pos[pos].channel.value}",
                "data": {"external_id": by_pos[pos].external_id, "flags": flags_of[pos]},
            }
            for pos in new_ticket_positions
        ])
    number_of = dict(zip(new_ticket_positions, numbers))
    for pos, msg in originals:
        ticket_id = threads[pos][0]
        if ticket_id is not None:
            ticket = session.get(Ticket, ticket_id)
            _customer_wrote_again(session, ticket, msg, now)
            ticket_ids[pos] = ticket_id
            number_of[pos] = ticket.number
    session.flush()

    message_ids = session.execute(
        insert(Message.__table__).returning(Message.__table__.c.id, sort_by_parameter_order=True),
        [
            {
                "ticket_id": ticket_ids[pos],
                "customer_id": customer_of[pos],
                "direction": "in",
                "channel": msg.channel.value,
                "external_id": msg.external_id,
                "sender": _no_nul(str(msg.sender.identities[0]))[:400],
                "subject": _no_nul(msg.subject)[:500],
                "text": _no_nul(msg.text),
                "raw": msg.raw,
                "email_message_id": msg.message_id,
                "in_reply_to": msg.thread_refs.in_reply_to,
                "references": list(msg.thread_refs.references),
                "public": True,
                "flags": [*msg.flags, *flags_of[pos]],
                "received_at": msg.received_at,
                "created_at": now,
            }
            for pos, msg in originals
        ],
    ).scalars().all() if originals else []
    attachments = [
        {
            "message_id": message_id, "filename": a.filename[:255], "content_type": a.content_type[:127],
            "size": a.size, "sha256": a.sha256, "data": a.data,
        }
        for (pos, msg), message_id in zip(originals, message_ids)
        for a in msg.attachments
    ]
    if attachments:
        session.execute(insert(AttachmentRow.__table__), attachments)

    for (pos, msg), message_id in zip(originals, message_ids):
        new = pos in set(new_ticket_positions)
        receipts[pos] = Receipt(number_of[pos], ticket_ids[pos], message_id, duplicate=False, new_ticket=new,
                                first_response_due=first_response if new else None)
    for pos, msg in fresh:
        first = seen_keys[(msg.channel.value, msg.external_id)]
        if first != pos:
            r = receipts[first]
            receipts[pos] = Receipt(r.ticket_number, r.ticket_id, r.message_id, duplicate=True, new_ticket=False)
    return [receipts[pos] for pos in range(len(messages))]


def _subject(msg: InboundMessage) -> str:
    return _no_nul(msg.subject.strip() or msg.text.strip().split("\n", 1)[0])[:500]


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL; the exact bytes stay in `raw` (bytea)."""
    return text.replace("\x00", "")


def _existing_messages(session: Session, messages: list[InboundMessage]) -> dict[tuple[str, str], Receipt]:
    by_channel: dict[str, set[str]] = {}
    for msg in messages:
        by_channel.setdefault(msg.channel.value, set()).add(msg.external_id)
    found = {}
    for channel, ids in by_channel.items():
        rows = session.execute(
            select(Message.channel, Message.external_id, Message.id, Message.ticket_id, Ticket.number)
            .join(Ticket, Ticket.id == Message.ticket_id)
            .where(Message.channel == channel, Message.external_id.in_(ids))
        ).all()
        for r in rows:
            found[(r.channel, r.external_id)] = Receipt(r.number, r.ticket_id, r.id, duplicate=True, new_ticket=False)
    return found


def _customers_for(
    session: Session, messages: list[InboundMessage], now: datetime
) -> tuple[list[int], list[list[str]]]:
    """The customer id each sender is, creating customers on first contact.

    Identities not yet known are attached to the sender's customer. Identities that already belong
    to *different* customers are never merged here: the message is flagged for a supervisor.
    """
    wanted = {(i.kind.value, i.value) for msg in messages for i in msg.sender.identities}
    owner: dict[tuple[str, str], int] = {}
    if wanted:
        rows = session.execute(
            select(Identity.kind, Identity.value, Identity.customer_id, Customer.merged_into_id)
            .join(Customer, Customer.id == Identity.customer_id)
            # both columns, so the (kind, value) unique index answers it
            .where(Identity.kind.in_({k for k, _ in wanted}), Identity.value.in_({v for _, v in wanted}))
        ).all()
        for r in rows:
            if (r.kind, r.value) in wanted:
                owner[(r.kind, r.value)] = _root_customer(session, r.customer_id) if r.merged_into_id else r.customer_id
    known = set(owner)  # identities already stored

    # Senders we have never seen: one customer each (two messages of one new sender in this
    # batch share theirs), created with one multi-row insert.
    newcomers: dict[tuple[str, str], InboundMessage] = {}
    for msg in messages:
        keys = [(i.kind.value, i.value) for i in msg.sender.identities]
        if not any(k in owner for k in keys) and not any(k in newcomers for k in keys):
            newcomers[keys[0]] = msg
    if newcomers:
        ids = session.execute(
            insert(Customer.__table__).returning(Customer.__table__.c.id, sort_by_parameter_order=True),
            [{"display_name": _no_nul(m.sender.display_name)[:200], "language": m.language, "vip": False,
              "created_at": now} for m in newcomers.values()],
        ).scalars().all()
        owner.update(zip(newcomers, ids))

    customer_ids: list[int] = []
    flags: list[list[str]] = []
    new_identities: list[dict] = []
    for msg in messages:
        keys = [(i.kind.value, i.value) for i in msg.sender.identities]
        owners = sorted({owner[k] for k in keys if k in owner})
        msg_flags = ["identity_conflict"] if len(owners) > 1 else []
        customer_id = owners[0]  # deterministic: the oldest; the rest is evidence a human judges
        for k in keys:
            if k not in known:
                known.add(k)
                owner.setdefault(k, customer_id)  # later messages of this batch from the same sender find it
                new_identities.append(
                    {"customer_id": customer_id, "kind": k[0], "value": k[1], "verified": False, "created_at": now}
                )
        customer_ids.append(customer_id)
        flags.append(msg_flags)
    if new_identities:
        session.execute(insert(Identity.__table__), new_identities)
    return customer_ids, flags


def _root_customer(session: Session, customer_id: int) -> int:
    seen = set()
    while customer_id not in seen:
        seen.add(customer_id)
        merged = session.scalar(select(Customer.merged_into_id).where(Customer.id == customer_id))
        if merged is None:
            break
        customer_id = merged
    return customer_id


def _find_thread(session: Session, customer_id: int, msg: InboundMessage) -> tuple[int | None, list[str]]:
    """The existing ticket this message continues, by explicit evidence only (DESIGN.md order):
    the ticket number when the sender is that ticket's customer, then In-Reply-To, then References."""
    refs = msg.thread_refs
    flags = []
    if refs.ticket_number:
        row = session.execute(
            select(Ticket.id, Ticket.customer_id, Ticket.state).where(Ticket.number == refs.ticket_number.strip().upper())
        ).first()
        if row is not None and row.state != states.MERGED and _root_customer(session, row.customer_id) == customer_id:
            return row.id, flags
        flags.append("ticket_ref_rejected")
    for ref in [refs.in_reply_to, *reversed(refs.references)]:
        if not ref:
            continue
        row = session.execute(
            select(Ticket.id, Ticket.customer_id)
            .join(Message, Message.ticket_id == Ticket.id)
            .where(Message.email_message_id == ref, Ticket.state != states.MERGED)
            .limit(1)
        ).first()
        if row is not None and _root_customer(session, row.customer_id) == customer_id:
            return row.id, flags
    return None, flags


def _next_ticket_numbers(session: Session, day: str, count: int) -> list[str]:
    """`count` ticket numbers, `GD` + day + a per-day sequence of at least three digits.

    One atomic upsert reserves the whole range and holds the counter row's lock until commit,
    so concurrent writers (threads or processes, SQLite or PostgreSQL) never share a number.
    """
    if count == 0:
        return []
    upsert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        upsert(TicketCounter)
        .values(day=day, last_seq=count)
        .on_conflict_do_update(
            index_elements=[TicketCounter.day], set_={"last_seq": TicketCounter.last_seq + count}
        )
        .returning(TicketCounter.last_seq)
    )
    last = session.execute(stmt).scalar_one()
    return [f"GD{day}{seq:03d}" for seq in range(last - count + 1, last + 1)]


def _customer_wrote_again(session: Session, ticket: Ticket, msg: InboundMessage, now: datetime) -> None:
    """A customer message on an existing ticket restarts work on it where the state calls for it,
    and hands the ticket back to the router (classify the new message, second-contact rule, tell the agent)."""
    ticket.routed_at = None
    if ticket.state == states.AWAITING_CUSTOMER:
        states.transition(session, ticket, states.IN_PROGRESS, actor="customer",
                          reason=f"customer replied on {msg.channel.value}", at=now)
    elif ticket.state in (states.RESOLVED, states.CLOSED):
        states.transition(session, ticket, states.REOPENED, actor="customer",
                          reason=f"customer wrote again on {msg.channel.value} after {ticket.state}", at=now)
    else:
        ticket.updated_at = now
    session.add(TicketEvent(ticket=ticket, at=now, actor="customer", kind="message",
                            reason=f"message on {msg.channel.value}", data={"external_id": msg.external_id}))


class Intake:
    """The sink every connector is given. `await accept(msg)` returns only after the commit."""

    def __init__(
        self,
        engine: Engine,
        *,
        timezone: str = "Asia/Shanghai",
        first_response: timedelta = timedelta(hours=4),
        max_batch: int = 256,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.engine = engine
        self.tz = ZoneInfo(timezone)
        self.first_response = first_response
        self.max_batch = max_batch
        self.clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def accept_now(self, msg: InboundMessage) -> Receipt:
        """Store one message in its own transaction, in the calling thread (CLI, importers, tests)."""
        [result] = self._commit_batch([msg])
        if isinstance(result, Exception):
            raise result
        return result

    async def accept(self, msg: InboundMessage) -> Receipt:
        if self._closed:
            raise StorageUnavailable("intake is shutting down")
        self._ensure_writer()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((msg, loop, future))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        self._closed = True
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _ensure_writer(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._writer, name="paidan-intake", daemon=True)
                    self._thread.start()

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            results = self._commit_batch([m for m, _, _ in batch])
            for (_, loop, future), result in zip(batch, results):
                loop.call_soon_threadsafe(_settle, future, result)
            if stop:
                return

    def _commit_batch(self, messages: list[InboundMessage]) -> list[Receipt | Exception]:
        """One transaction for the whole batch; if the data fails it, each message alone, so one
        bad message (or a race with another process) fails only itself."""
        now = self.clock()
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                return self._store(session, messages, now)
        except (OperationalError, InterfaceError) as exc:
            # The database itself is unreachable, locked or full: every message would fail alike.
            log.error("intake could not commit %d message(s): %s", len(messages), type(exc).__name__)
            return [StorageUnavailable("the database could not store the message; try again later")] * len(messages)
        except (SQLAlchemyError, PaidanError) as exc:
            if len(messages) == 1:
                return [self._retry_alone(messages[0], now, exc)]
        return [result for msg in messages for result in self._commit_batch([msg])]

    def _retry_alone(self, msg: InboundMessage, now: datetime, first_error: Exception) -> Receipt | Exception:
        if isinstance(first_error, PaidanError):
            return first_error
        if isinstance(first_error, IntegrityError):
            # Another process stored the same message or identity between our look-up and insert:
            # once more, and the look-up now finds it.
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    return self._store(session, [msg], now)[0]
            except PaidanError as exc:
                return exc
            except SQLAlchemyError as exc:
                first_error = exc
        log.error("intake: a %s message could not be stored: %s", msg.channel, type(first_error).__name__)
        return StorageUnavailable("the database could not store the message; try again later")

    def _store(self, session: Session, messages: list[InboundMessage], now: datetime) -> list[Receipt]:
        return store_batch(session, messages, tz=self.tz, first_response=self.first_response, now=now)


def _settle(future: asyncio.Future, result: Receipt | Exception) -> None:
    if future.done():  # the caller went away (client disconnected); the message is stored anyway
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
