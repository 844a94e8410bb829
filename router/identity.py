"""Who a customer is across channels: identity normalisation, merges on evidence, and their undo.

An identity is `(kind, value)`, unique, pointing at one customer. Customers merge only on
evidence (one message carrying identities of both); a merge records exactly which identities and
tickets moved, so `unmerge` puts them back. Two customers who each hold a *different* identity of
the same kind (two emails, two phones, two Telegram accounts) are conflicting evidence: never
merged silently, only by a person who says so (`force=True`), and that is recorded too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import ActionRefused, InvalidInput, NotFound
from models.message import ERASED, Identity, IdentityKind
from models.tables import Customer, CustomerMerge, Identity as IdentityRow, Ticket, TicketEvent
from router import blocking, states

DEFAULT_REGION = "CN"
# A person has one of each of these, as far as we can tell; two different ones mean two people
# (or a shared phone), which a human must judge. Web sessions are not: one person, many browsers.
EXCLUSIVE_KINDS = frozenset({IdentityKind.EMAIL.value, IdentityKind.PHONE.value, IdentityKind.TELEGRAM.value})


# ---------------------------------------------------------------- normalisation (pure)


def normalise_email(value: str) -> str:
    """Trimmed and lower-cased, as models.Identity stores it; InvalidInput when it is no address."""
    value = (value or "").strip().lower()
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or len(value) > 320 or any(c.isspace() for c in value):
        raise InvalidInput("email", f"{value!r} is not an email address")
    return value


def normalise_phone(value: str, default_region: str = DEFAULT_REGION) -> str:
    """E.164 (`+8613800138000`); a number without a country code is read as `default_region`'s."""
    raw = (value or "").strip()
    if not raw or len(raw) > 40:
        raise InvalidInput("phone", "not a phone number")
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput("phone", f"{raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput("phone", f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_telegram_id(value: int | str) -> str:
    """A Telegram user id as a decimal string (`"123456789"`); InvalidInput for anything else."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or int(text) <= 0 or len(text) > 20:
        raise InvalidInput("telegram", f"{value!r} is not a Telegram user id")
    return str(int(text))


def make_identity(kind: IdentityKind | str, value: str | int, *, default_region: str = DEFAULT_REGION) -> Identity:
    """The normalised identity for what a channel (or a person at the CLI) gave."""
    kind = IdentityKind(kind)
    if kind == IdentityKind.EMAIL:
        return Identity(kind, normalise_email(str(value)))
    if kind == IdentityKind.PHONE:
        return Identity(kind, normalise_phone(str(value), default_region))
    if kind == IdentityKind.TELEGRAM:
        return Identity(kind, normalise_telegram_id(value))
    text = str(value).strip()
    if not text or len(text) > 320:
        raise InvalidInput(kind.value, "must be 1 to 320 characters")
    return Identity(kind, text)


def parse_identity(text: str, *, default_region: str = DEFAULT_REGION) -> Identity:
    """`email:a@b.cn`, `phone:+86…`, `telegram:123`, `web_session:…`, or a bare address or phone."""
    text = text.strip()
    kind, sep, value = text.partition(":")
    if sep and kind in {k.value for k in IdentityKind}:
        return make_identity(kind, value, default_region=default_region)
    if "@" in text:
        return make_identity(IdentityKind.EMAIL, text)
    return make_identity(IdentityKind.PHONE, text, default_region=default_region)


def conflicts(a: Iterable[tuple[str, str]], b: Iterable[tuple[str, str]]) -> dict[str, tuple[list[str], list[str]]]:
    """The exclusive kinds both sides hold a different value of: {kind: (a's values, b's values)}."""
    by_kind_a: dict[str, set[str]] = {}
    by_kind_b: dict[str, set[str]] = {}
    for kind, value in a:
        by_kind_a.setdefault(kind, set()).add(value)
    for kind, value in b:
        by_kind_b.setdefault(kind, set()).add(value)
    return {
        kind: (sorted(by_kind_a[kind]), sorted(by_kind_b[kind]))
        for kind in sorted(EXCLUSIVE_KINDS & by_kind_a.keys() & by_kind_b.keys())
        if by_kind_a[kind] != by_kind_b[kind]
    }


def describe_conflicts(found: dict[str, tuple[list[str], list[str]]], a_id: int, b_id: int) -> str:
    return "; ".join(
        f"#{a_id} has {kind} {', '.join(va)} and #{b_id} has {kind} {', '.join(vb)}" for kind, (va, vb) in found.items()
    )


# ---------------------------------------------------------------- merges


def root_customer(session: Session, customer_id: int) -> int:
    """The customer `customer_id` ended up as, following merges (cycle-safe)."""
    seen = set()
    while customer_id not in seen:
        seen.add(customer_id)
        merged = session.scalar(select(Customer.merged_into_id).where(Customer.id == customer_id))
        if merged is None:
            break
        customer_id = merged
    return customer_id


def identities_of(session: Session, customer_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
    """Every identity each customer holds now, in one query."""
    ids = set(customer_ids)
    found: dict[int, list[tuple[str, str]]] = {cid: [] for cid in ids}
    if ids:
        rows = session.execute(
            select(IdentityRow.customer_id, IdentityRow.kind, IdentityRow.value)
            .where(IdentityRow.customer_id.in_(ids)).order_by(IdentityRow.id)
        ).all()
        for r in rows:
            found[r.customer_id].append((r.kind, r.value))
    return found


def merge_customers(
    session: Session, source_id: int, target_id: int, *, actor: str, evidence: str, now: datetime,
    force: bool = False,
) -> CustomerMerge:
    """Merge customer `source_id` into `target_id`: its identities and tickets move to the target.

    Refused (InvalidInput / ActionRefused, with the reason) for a customer into itself, from or into
    a customer already merged, and for conflicting identities unless `force`. Never commits.
    """
    if source_id == target_id:
        raise InvalidInput("target", f"customer #{source_id} cannot be merged into itself")
    if not evidence or not evidence.strip():
        raise InvalidInput("evidence", "say what shows these are one person (a merge is judged by it later)")
    # Row locks, in id order, so two processes merging the same customers take turns, and the second
    # sees what the first did (populate_existing re-reads rows this session already holds).
    locked = {c.id: c for c in session.scalars(
        select(Customer).where(Customer.id.in_((source_id, target_id))).order_by(Customer.id)
        .with_for_update().execution_options(populate_existing=True))}
    source, target = locked.get(source_id), locked.get(target_id)
    for cid, row in ((source_id, source), (target_id, target)):
        if row is None:
            raise NotFound(f"no customer #{cid}")
    if source.merged_into_id is not None:
        raise ActionRefused(f"customer #{source_id} is already merged into #{source.merged_into_id}")
    if target.merged_into_id is not None:
        raise ActionRefused(f"customer #{target_id} was merged into #{target.merged_into_id}; "
                            f"merge into #{root_customer(session, target_id)} instead")
    held = identities_of(session, (source_id, target_id))
    clash = conflicts(held[target_id], held[source_id])
    if clash and not force:
        raise ActionRefused(f"customers #{source_id} and #{target_id} have conflicting identities "
                            f"({describe_conflicts(clash, target_id, source_id)}); a supervisor may force it")

    identities = session.scalars(select(IdentityRow).where(IdentityRow.customer_id == source_id)
                                 .order_by(IdentityRow.id)).all()
    tickets = session.scalars(select(Ticket).where(Ticket.customer_id == source_id).order_by(Ticket.id)).all()
    for identity in identities:
        identity.customer_id = target_id
    for ticket in tickets:
        _move_ticket(ticket, target_id)
    source.merged_into_id = target_id
    if source.blocked_at is not None and target.blocked_at is None:
        # The block belongs to the person (router/blocking.py): writing from a new address that also
        # names a blocked one does not shed it. Unmerging lifts it again (unless it was set anew).
        blocking.copy_block(source, target, source_id)
    merge = CustomerMerge(
        source_id=source_id, target_id=target_id, identity_ids=[i.id for i in identities],
        ticket_ids=[t.id for t in tickets], evidence=evidence.strip(), actor=actor, at=now,
    )
    session.add(merge)
    session.flush()
    reason = f"customer #{source_id} merged into #{target_id}: {merge.evidence}"
    if clash:
        reason += f" (forced over conflicting identities: {describe_conflicts(clash, target_id, source_id)})"
    for ticket in tickets:
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=actor, kind="customer_merged", reason=reason,
            data={"merge_id": merge.id, "source_id": source_id, "target_id": target_id, "forced": bool(clash),
                  "conflicts": clash, "identities": [f"{i.kind}:{i.value}" for i in identities]},
        ))
    session.flush()
    return merge


def _move_ticket(ticket: Ticket, customer_id: int) -> None:
    """Give the ticket another owner without touching `updated_at`: its `onupdate` would stamp the
    wall clock (wrong under a simulated clock) and would make an old ticket look recently active."""
    ticket.customer_id = customer_id
    states.touch(ticket, ticket.updated_at)


def unmerge(session: Session, merge_id: int, *, actor: str, now: datetime) -> CustomerMerge:
    """Undo merge `merge_id`: what moved goes back to the source, which stands alone again.

    Identities and tickets that reached the target *after* the merge stay with it. A merge whose
    target was itself merged on later is refused until that later merge is undone.
    """
    merge = session.get(CustomerMerge, merge_id, with_for_update=True, populate_existing=True)  # one undo at a time
    if merge is None:
        raise NotFound(f"no customer merge #{merge_id}")
    if merge.undone_at is not None:
        raise ActionRefused(f"merge #{merge_id} was already undone by {merge.undone_by} at {merge.undone_at:%Y-%m-%d %H:%M} UTC")
    target = session.get(Customer, merge.target_id)
    if target.merged_into_id is not None:
        later = session.scalar(select(CustomerMerge.id).where(
            CustomerMerge.source_id == merge.target_id, CustomerMerge.undone_at.is_(None)))
        raise ActionRefused(f"customer #{merge.target_id} was merged into #{target.merged_into_id} afterwards; "
                            f"undo merge #{later} first")
    if target.display_name == ERASED:
        raise ActionRefused(f"customer #{merge.target_id}'s personal data was erased (`paidan customers forget`): "
                            f"nothing is left to tell the two apart, so merge #{merge_id} stays")
    identities = session.scalars(select(IdentityRow).where(IdentityRow.id.in_(merge.identity_ids))).all()
    tickets = session.scalars(select(Ticket).where(Ticket.id.in_(merge.ticket_ids)).order_by(Ticket.id)).all()
    for identity in identities:
        identity.customer_id = merge.source_id
    for ticket in tickets:
        _move_ticket(ticket, merge.source_id)
    session.get(Customer, merge.source_id).merged_into_id = None
    merge.undone_at, merge.undone_by = now, actor
    reason = f"merge #{merge.id} of customer #{merge.source_id} into #{merge.target_id} undone"
    if blocking.came_with_merge(target, merge.source_id):
        # Not one person after all: the target was blocked only as the source. What it sent meanwhile
        # goes to the router like any unblock's.
        blocking.unblock(session, target)
        blocking.release_kept(session, target, actor=actor, now=now, reason=f"{reason}; the block came with it")
    for ticket in tickets:
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=actor, kind="customer_unmerged", reason=reason,
            data={"merge_id": merge.id, "source_id": merge.source_id, "target_id": merge.target_id},
        ))
    session.flush()
    return merge


# ---------------------------------------------------------------- looking customers up


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A customer as `paidan customers show` prints it."""

    id: int
    display_name: str
    language: str | None
    vip: bool
    merged_into_id: int | None
    created_at: datetime
    identities: tuple[tuple[str, str], ...]
    tickets: tuple[tuple[str, str, str], ...]  # number, state, subject
    merges: tuple[dict, ...]  # merges this customer took part in, oldest first
    blocked: str | None = None  # who blocked them as a spammer, when and why (router/blocking.py)


def find_customer(session: Session, ref: str, *, default_region: str = DEFAULT_REGION) -> Customer:
    """A customer by id (`12`, `#12`) or by any identity (`a@b.cn`, `+86…`, `telegram:123`)."""
    ref = ref.strip()
    if ref.lstrip("#").isdigit() and (ref.startswith("#") or len(ref.lstrip("#")) < 7):
        customer = session.get(Customer, int(ref.lstrip("#")))
        if customer is None:
            raise NotFound(f"no customer #{ref.lstrip('#')}")
        return customer
    try:
        identity = parse_identity(ref, default_region=default_region)
    except InvalidInput as exc:
        raise InvalidInput("customer", f"{ref!r} is neither a customer id nor an identity ({exc.problem})") from None
    owner = session.scalar(select(IdentityRow.customer_id).where(
        IdentityRow.kind == identity.kind.value, IdentityRow.value == identity.value))
    if owner is None:
        raise NotFound(f"no customer is known by {identity}")
    return session.get(Customer, root_customer(session, owner))


def describe_block(customer: Customer) -> str:
    """One line: who blocked the customer as a spammer, when and why."""
    why = f": {customer.blocked_reason}" if customer.blocked_reason else ""
    return f"blocked by {customer.blocked_by} at {customer.blocked_at:%Y-%m-%d %H:%M} UTC{why}"


def customer_view(session: Session, customer_id: int) -> CustomerView:
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise NotFound(f"no customer #{customer_id}")
    tickets = session.execute(
        select(Ticket.number, Ticket.state, Ticket.subject).where(Ticket.customer_id == customer_id).order_by(Ticket.id)
    ).all()
    merges = session.scalars(
        select(CustomerMerge).where((CustomerMerge.source_id == customer_id) | (CustomerMerge.target_id == customer_id))
        .order_by(CustomerMerge.id)
    ).all()
    return CustomerView(
        id=customer.id, display_name=customer.display_name, language=customer.language, vip=customer.vip,
        merged_into_id=customer.merged_into_id, created_at=customer.created_at,
        identities=tuple(identities_of(session, [customer_id])[customer_id]),
        tickets=tuple((t.number, t.state, t.subject) for t in tickets),
        merges=tuple(
            {"id": m.id, "source_id": m.source_id, "target_id": m.target_id, "evidence": m.evidence,
             "actor": m.actor, "at": m.at.isoformat(), "identities": len(m.identity_ids), "tickets": len(m.ticket_ids),
             "undone_at": m.undone_at.isoformat() if m.undone_at else None, "undone_by": m.undone_by}
            for m in merges
        ),
        blocked=describe_block(customer) if customer.blocked_at else None,
    )
