"""The outbox queues each logical send once, however often (and however concurrently) it is asked to."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import func, select

from factories import make_message
from models.tables import OutboxItem
from paidan.db import transaction
from router.intake import Intake
from router.outbox import enqueue, enqueue_many, item

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


def _ticket_id(engine) -> int:
    from models.tables import Ticket

    Intake(engine, clock=lambda: NOW).accept_now(make_message(received_at=NOW))
    with transaction(engine) as session:
        return session.scalar(select(Ticket.id))


def _queue(session, ticket_id, key, text="hello"):
    return enqueue(session, kind="reply", channel="email", recipient="kehu@example.com", ticket_id=ticket_id,
                   payload={"text": text}, dedupe_key=key, now=NOW)


def _rows(engine, key) -> list[OutboxItem]:
    with transaction(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.dedupe_key == key)).all()


def test_a_key_already_queued_adds_nothing_in_the_same_or_a_later_transaction(engine):
    ticket_id = _ticket_id(engine)
    with transaction(engine) as session:
        first = _queue(session, ticket_id, "reply:1")
        again = _queue(session, ticket_id, "reply:1", text="changed")
    with transaction(engine) as session:
        later = _queue(session, ticket_id, "reply:1")
    assert first is not None and first.id and first.recipient == "kehu@example.com"
    assert again is None and later is None
    [row] = _rows(engine, "reply:1")
    assert row.id == first.id and row.payload == {"text": "hello"} and row.status == "pending"


def test_items_without_a_key_are_all_kept(engine):
    ticket_id = _ticket_id(engine)
    with transaction(engine) as session:
        ids = [_queue(session, ticket_id, None).id for _ in range(3)]
    assert len(set(ids)) == 3
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.id.in_(ids))) == 3


def test_a_batch_of_items_is_queued_once_per_key_too(engine):
    ticket_id = _ticket_id(engine)
    with transaction(engine) as session:
        _queue(session, ticket_id, "ack:1")
    batch = [item(kind="ack", channel="email", recipient="kehu@example.com", ticket_id=ticket_id,
                  payload={"n": n}, dedupe_key=key, now=NOW)
             for n, key in enumerate(["ack:1", "ack:2", "ack:2", None, None])]
    with transaction(engine) as session:
        enqueue_many(session, batch)
        enqueue_many(session, [])  # nothing to write: no statement, no error
    assert [r.payload for r in _rows(engine, "ack:1")] == [{"text": "hello"}]  # queued before: kept as it was
    assert [r.payload for r in _rows(engine, "ack:2")] == [{"n": 1}]  # twice in one batch: once
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.dedupe_key.is_(None))) == 2


def test_concurrent_transactions_queue_one_key_once_without_an_error(engine):
    """Two routers deciding the same notice at once: one row, and the loser's transaction commits too."""
    ticket_id = _ticket_id(engine)
    barrier, results, errors = threading.Barrier(4), [], []

    def worker():
        try:
            with transaction(engine) as session:
                barrier.wait(timeout=10)
                results.append(_queue(session, ticket_id, "sla:7:warn"))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sum(r is not None for r in results) == 1
    assert len(_rows(engine, "sla:7:warn")) == 1
