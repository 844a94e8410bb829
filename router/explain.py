"""Why a ticket went where it went, read back from what the router stored.

`explain` gathers the customer and their merges, how each message found this ticket, the labels
and the rules behind them, every offer with its candidates, the queue, the SLA clocks and the
audit trail into one JSON-ready dict; `format_explanation` turns it into text for a person.
Nothing here decides anything: it only reads the reasons the deciding code wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.errors import NotFound
from models.tables import (
    Agent,
    Assignment,
    Customer,
    CustomerMerge,
    Identity,
    LabelCorrection,
    Message,
    OutboxItem,
    ReviewItem,
    SlaClock,
    Ticket,
    TicketEvent,
)
from router.config import RouterConfig

# Event kinds (or parts of them) that belong to each part of the story; the rest is in the trail.
_THREAD_WORDS = ("created", "message", "thread", "topic", "merge")
_LABEL_WORDS = ("classif", "priority", "relabel", "triage")
_ASSIGN_WORDS = ("assign", "queue", "offer", "accept", "declin", "release", "expire", "drain")
_SLA_WORDS = ("sla", "warn", "breach", "escalat", "clock", "on_call")


def explain(session: Session, ticket_number: str, *, now: datetime | None = None,
            config: RouterConfig | None = None) -> dict:
    """Everything that explains one ticket's routing, as plain JSON-ready data.

    With `now` the SLA clocks say how long is left; with `config` too, how much calendar time
    each has used and its target in words.
    """
    number = (ticket_number or "").strip().upper()
    ticket = session.scalar(select(Ticket).where(Ticket.number == number))
    if ticket is None:
        raise NotFound(f"no ticket {ticket_number!r} (see `paidan tickets list`)")
    events = session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                             .order_by(TicketEvent.at, TicketEvent.id)).all()
    messages = session.scalars(select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)).all()
    names = _agent_names(session)
    return {
        "ticket": _ticket(session, ticket, names),
        "customer": _customer(session, ticket),
        "merges": _merges(session, ticket),
        "thread": _thread(session, ticket, messages, events),
        "labels": _labels(session, ticket, messages, events, names),
        "assignment": _assignment(session, ticket, events, names),
        "sla": _sla(session, ticket, events, now, config),
        "review": [
            {"kind": r.kind, "created_at": _iso(r.created_at), "resolved_at": _iso(r.resolved_at),
             "resolved_by": r.resolved_by, "detail": r.detail}
            for r in session.scalars(select(ReviewItem).where(ReviewItem.ticket_id == ticket.id).order_by(ReviewItem.id))
        ],
        "notifications": [
            {"kind": o.kind, "channel": o.channel, "recipient": o.recipient, "status": o.status,
             "created_at": _iso(o.created_at), "sent_at": _iso(o.sent_at)}
            for o in session.scalars(select(OutboxItem).where(OutboxItem.ticket_id == ticket.id).order_by(OutboxItem.id))
        ],
        "audit": [_event(e, names) for e in events],
    }


def _agent_names(session: Session) -> dict[int, str]:
    return {row.id: row.name for row in session.execute(select(Agent.id, Agent.name))}


def _actor_name(actor: str, names: dict[int, str]) -> str:
    """'agent:7' → 'agent:7 (Ann)', so the trail reads as people."""
    kind, _, ident = actor.partition(":")
    if kind == "agent" and ident.isdigit() and int(ident) in names:
        return f"{actor} ({names[int(ident)]})"
    return actor


def _ticket(session: Session, ticket: Ticket, names: dict[int, str]) -> dict:
    merged_into = session.get(Ticket, ticket.merged_into_id) if ticket.merged_into_id else None
    return {
        "number": ticket.number, "state": ticket.state, "channel": ticket.channel, "subject": ticket.subject,
        "language": ticket.language, "flags": list(ticket.flags or []),
        "agent": names.get(ticket.assigned_agent_id) if ticket.assigned_agent_id else None,
        "agent_id": ticket.assigned_agent_id,
        "queue": ticket.queue, "queue_reason": ticket.queue_reason,
        "merged_into": merged_into.number if merged_into else None,
        "created_at": _iso(ticket.created_at), "routed_at": _iso(ticket.routed_at),
        "assigned_at": _iso(ticket.assigned_at), "accepted_at": _iso(ticket.accepted_at),
        "first_response_at": _iso(ticket.first_response_at), "resolved_at": _iso(ticket.resolved_at),
        "closed_at": _iso(ticket.closed_at),
    }


def _customer(session: Session, ticket: Ticket) -> dict:
    customer = session.get(Customer, ticket.customer_id)
    chain = [customer.id]
    root = customer
    while root.merged_into_id is not None and root.merged_into_id not in chain:
        root = session.get(Customer, root.merged_into_id)
        chain.append(root.id)
    identities = session.scalars(select(Identity).where(Identity.customer_id.in_(chain))
                                 .order_by(Identity.id)).all()
    return {
        "id": customer.id, "name": customer.display_name, "vip": customer.vip, "language": customer.language,
        "merged_into": root.id if root.id != customer.id else None,
        "identities": [{"kind": i.kind, "value": i.value, "verified": i.verified, "customer_id": i.customer_id,
                        "since": _iso(i.created_at)} for i in identities],
    }


def _merges(session: Session, ticket: Ticket) -> list[dict]:
    """Every merge touching this customer (as source or target), undone ones included."""
    ids = {ticket.customer_id}
    customer = session.get(Customer, ticket.customer_id)
    if customer.merged_into_id:
        ids.add(customer.merged_into_id)
    rows = session.scalars(select(CustomerMerge)
                           .where(or_(CustomerMerge.source_id.in_(ids), CustomerMerge.target_id.in_(ids)))
                           .order_by(CustomerMerge.at, CustomerMerge.id)).all()
    return [
        {"id": m.id, "source": m.source_id, "target": m.target_id, "evidence": m.evidence, "actor": m.actor,
         "at": _iso(m.at), "identities_moved": len(m.identity_ids or []), "tickets_moved": len(m.ticket_ids or []),
         "moved_this_ticket": ticket.id in (m.ticket_ids or []),
         "undone_at": _iso(m.undone_at), "undone_by": m.undone_by}
        for m in rows
    ]


def _thread(session: Session, ticket: Ticket, messages: list[Message], events: list[TicketEvent]) -> dict:
    """How each message came to be on this ticket: it opened it, or which evidence joined it."""
    email_ids = {m.email_message_id for m in messages if m.email_message_id}
    by_external = {}
    for e in events:
        ext = (e.data or {}).get("external_id")
        if ext:
            by_external.setdefault(ext, e)
    first_in = next((m for m in messages if m.direction == "in"), None)
    out = []
    for m in messages:
        item = {"id": m.id, "direction": m.direction, "channel": m.channel, "sender": m.sender,
                "at": _iso(m.received_at), "public": m.public, "flags": list(m.flags or []),
                "author": m.author_agent_id}
        if m.direction == "in":
            item["how"] = _how_joined(m, m is first_in, email_ids, ticket, by_external.get(m.external_id))
        out.append(item)
    created = next((e for e in events if e.kind == "created"), None)
    return {
        "created": {"reason": created.reason, "flags": (created.data or {}).get("flags", []),
                    "at": _iso(created.at)} if created else None,
        "messages": out,
        "events": [_event(e, {}) for e in events if _about(e, _THREAD_WORDS) and e.kind != "created"],
    }


def _how_joined(m: Message, first: bool, email_ids: set[str], ticket: Ticket, event: TicketEvent | None) -> str:
    """The words intake recorded for this message ("In-Reply-To <…>", "same topic as GD… (similarity
    0.52 >= 0.35) within 72 h"); for rows stored before intake recorded them, what the message shows."""
    flags = [f for f in (m.flags or []) if f in ("ticket_ref_rejected", "ticket_ref_unknown", "identity_conflict")]
    note = f" (flags: {', '.join(flags)})" if flags else ""
    opened = "opened the ticket" if first else "joined"
    if event is not None and (event.data or {}).get("thread") is not None:
        # "message on email; In-Reply-To <a@x>": the part after the channel is the evidence
        evidence = event.reason.split("; ", 1)[1] if "; " in event.reason else event.reason
        return f"{opened}: {evidence}{note}"
    if first:
        return f"opened the ticket on {m.channel}{note}"
    if m.in_reply_to and m.in_reply_to in email_ids:
        return f"joined: In-Reply-To {m.in_reply_to}{note}"
    if any(r in email_ids for r in (m.references or [])):
        return f"joined: References{note}"
    if ticket.number in (m.subject or "").upper():
        return f"joined: ticket number in the subject{note}"
    return f"joined: evidence not recorded{note}"


def _labels(session: Session, ticket: Ticket, messages: list[Message], events: list[TicketEvent],
            names: dict[int, str]) -> dict:
    classified = [e for e in events if e.kind == "classified"]
    first = (classified[0].data or {}) if classified else {}
    prediction = first.get("prediction") or {}
    message_ids = [m.id for m in messages]
    corrections = session.scalars(select(LabelCorrection).where(LabelCorrection.message_id.in_(message_ids))
                                  .order_by(LabelCorrection.corrected_at, LabelCorrection.id)).all() if message_ids else []
    return {
        "type": ticket.type, "category": ticket.category, "priority": ticket.priority,
        "confidence": ticket.confidence, "model_version": ticket.model_version,
        "prediction": prediction or None,
        "rules": list(prediction.get("rules") or []),
        "priority_bumps": [b for e in classified for b in (e.data or {}).get("priority_bumps", [])]
        + [e.reason for e in events if e.kind == "priority_raised"],
        "per_message": [{"id": m.id, "type": m.type, "category": m.category, "priority": m.priority,
                         "confidence": m.confidence, "model_version": m.model_version}
                        for m in messages if m.direction == "in"],
        "corrections": [{"head": c.head, "from": c.old_label, "to": c.new_label, "by": _actor_name(c.corrected_by, names),
                         "at": _iso(c.corrected_at)} for c in corrections],
        "events": [_event(e, {}) for e in events if _about(e, _LABEL_WORDS)],
    }


def _assignment(session: Session, ticket: Ticket, events: list[TicketEvent], names: dict[int, str]) -> dict:
    offers = session.scalars(select(Assignment).where(Assignment.ticket_id == ticket.id).order_by(Assignment.id)).all()
    return {
        "holder": names.get(ticket.assigned_agent_id) if ticket.assigned_agent_id else None,
        "queue": ticket.queue, "queue_reason": ticket.queue_reason,
        "offers": [
            {"agent": names.get(a.agent_id, f"agent {a.agent_id}"), "agent_id": a.agent_id,
             "offered_at": _iso(a.offered_at), "expires_at": _iso(a.expires_at), "accepted_at": _iso(a.accepted_at),
             "ended_at": _iso(a.ended_at), "end_reason": a.end_reason, "reason": a.reason,
             "candidates": (a.data or {}).get("candidates", []), "data": a.data or {}}
            for a in offers
        ],
        "events": [_event(e, names) for e in events if _about(e, _ASSIGN_WORDS)],
    }


def _sla(session: Session, ticket: Ticket, events: list[TicketEvent], now: datetime | None,
         config: RouterConfig | None) -> dict:
    clocks = session.scalars(select(SlaClock).where(SlaClock.ticket_id == ticket.id).order_by(SlaClock.id)).all()
    out = []
    for c in clocks:
        item = {"kind": c.kind, "priority": c.priority, "calendar": c.calendar, "target_seconds": c.target_seconds,
                "status": _clock_status(c), "started_at": _iso(c.started_at), "consumed_seconds": c.consumed_seconds,
                "paused_since": _iso(c.paused_since), "warn_at": _iso(c.warn_at), "due_at": _iso(c.due_at),
                "warned_at": _iso(c.warned_at), "breached_at": _iso(c.breached_at), "stopped_at": _iso(c.stopped_at)}
        if now is not None and c.due_at is not None and c.stopped_at is None and c.paused_since is None:
            item["seconds_left"] = int((c.due_at - now).total_seconds())
        if now is not None and config is not None:
            from router.sla import clock_summary

            summary = clock_summary(c, config, now)
            item |= {"used_seconds": summary["used_seconds"], "target": summary["target"]}
        out.append(item)
    return {"clocks": out, "events": [_event(e, {}) for e in events if _about(e, _SLA_WORDS)]}


def _clock_status(c: SlaClock) -> str:
    if c.stopped_at is not None:
        return "stopped after a breach" if c.breached_at else "met"
    if c.breached_at is not None:
        return "breached"
    if c.paused_since is not None:
        return "paused (waiting for the customer)"
    return "running, warned" if c.warned_at else "running"


def _about(event: TicketEvent, words: tuple[str, ...]) -> bool:
    if event.kind == "transition":
        return False
    return any(w in event.kind for w in words)


def _event(e: TicketEvent, names: dict[int, str]) -> dict:
    return {"at": _iso(e.at), "actor": _actor_name(e.actor, names), "kind": e.kind, "from": e.from_state,
            "to": e.to_state, "reason": e.reason, "data": e.data or {}}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ---------------------------------------------------------------- text


def format_explanation(data: dict, *, mask: Callable[[str], str] = lambda s: s) -> str:
    """The explanation as text for a supervisor; `mask` hides contact details (emails, phones)."""
    t, c, labels, a, sla = data["ticket"], data["customer"], data["labels"], data["assignment"], data["sla"]
    lines = [f"{t['number']}  {t['state']}  via {t['channel']}  created {_short(t['created_at'])}",
             f"subject: {t['subject']}"]
    if t["merged_into"]:
        lines.append(f"merged into {t['merged_into']}")

    lines += ["", "WHO: customer and identities",
              f"  customer #{c['id']} {c['name'] or '(no name)'}" + ("  VIP" if c["vip"] else "")
              + (f"  (merged into #{c['merged_into']})" if c["merged_into"] else "")]
    for i in c["identities"]:
        lines.append(f"  - {i['kind']}: {mask(i['value'])}" + (" (verified)" if i["verified"] else ""))
    for m in data["merges"]:
        undone = f"; undone {_short(m['undone_at'])} by {m['undone_by']}" if m["undone_at"] else ""
        lines.append(f"  merge #{m['id']}: customer #{m['source']} → #{m['target']} by {m['actor']} "
                     f"{_short(m['at'])}: {m['evidence'] or 'no evidence recorded'}{undone}")
    if not data["merges"]:
        lines.append("  no merges")

    lines += ["", "THREAD: how each message reached this ticket"]
    if data["thread"]["created"]:
        created = data["thread"]["created"]
        flags = f" flags: {', '.join(created['flags'])}" if created["flags"] else ""
        lines.append(f"  created: {created['reason']}{flags}")
    for m in data["thread"]["messages"]:
        if m["direction"] == "in":
            lines.append(f"  #{m['id']} in  {m['channel']:<8} {_short(m['at'])} {mask(m['sender'])}: {m['how']}")
        else:
            kind = "reply" if m["public"] else "note"
            lines.append(f"  #{m['id']} out {m['channel']:<8} {_short(m['at'])} {kind} by {m['sender']}")

    lines += ["", "LABELS: classification and rules",
              f"  type={labels['type'] or '-'} category={labels['category'] or '-'} priority={labels['priority'] or '-'}"
              f"  confidence={_num(labels['confidence'])}  model={labels['model_version'] or '-'}"]
    p = labels["prediction"]
    if p:
        lines.append("  predicted: " + ", ".join(
            f"{h}={p[h]['label']} ({_num(p[h]['confidence'])})" for h in ("type", "category", "priority") if h in p))
    lines.append(f"  rules fired: {', '.join(labels['rules']) or 'none'}")
    cues = labels.get("cues")  # added by the CLI, which can load the model (the router does not)
    if isinstance(cues, dict):
        for head, why in cues.items():
            words = "  ".join(f"“{c['term']}” {c['weight']:+.2f}" for c in why["cues"]) or "-"
            lines.append(f"  why {head}={why['label']} over {why['runner_up']}: {words}")
    elif cues:
        lines.append(f"  no cues: {cues}")
    for bump in labels["priority_bumps"]:
        lines.append(f"  priority rule: {bump}")
    for corr in labels["corrections"]:
        lines.append(f"  corrected {corr['head']}: {corr['from'] or '-'} → {corr['to']} by {corr['by']} {_short(corr['at'])}")

    lines += ["", "ASSIGNMENT: candidates and the choice"]
    holder = a["holder"] or "nobody"
    queue = f"; waiting in the {a['queue']} queue: {a['queue_reason']}" if a["queue"] else ""
    lines.append(f"  held by {holder}{queue}")
    for o in a["offers"]:
        end = (f"accepted {_short(o['accepted_at'])}" if o["accepted_at"] else "not accepted")
        if o["ended_at"]:
            end += f", ended {_short(o['ended_at'])} ({o['end_reason'] or '-'})"
        lines.append(f"  offer to {o['agent']} {_short(o['offered_at'])}: {o['reason'] or 'no reason recorded'} — {end}")
        facts = o["data"]
        if "considered" in facts:
            ruled = ", ".join(f"{n} {why}" for why, n in (facts.get("ruled_out") or {}).items()) or "nobody"
            lines.append(f"      needs {'+'.join(facts.get('required_skills') or []) or 'no skill'}; "
                         f"{facts['considered']} considered, {facts.get('eligible', '?')} eligible; ruled out: {ruled}")
        for cand in o["candidates"][:10]:
            lines.append(f"      candidate {_candidate(cand)}")
    for e in a["events"]:
        lines.append(f"  {_short(e['at'])} {e['kind']}: {e['reason']}")

    lines += ["", "SLA: targets and state"]
    for clock in sla["clocks"]:
        left = ""
        if "seconds_left" in clock:
            s = clock["seconds_left"]
            left = f", {_duration(s)} left" if s >= 0 else f", overdue by {_duration(-s)}"
        target = clock.get("target") or f"{_duration(clock['target_seconds'])} ({clock['calendar']})"
        used = f", {_duration(clock['used_seconds'])} used" if "used_seconds" in clock else ""
        lines.append(f"  {clock['kind']:<15} {clock['priority']} target {target} "
                     f"due {_short(clock['due_at'])}: {clock['status']}{used}{left}")
    if not sla["clocks"]:
        lines.append("  no clocks (not routed yet)")
    for e in sla["events"]:
        lines.append(f"  {_short(e['at'])} {e['kind']}: {e['reason']}")

    if data["review"]:
        lines += ["", "REVIEW: for a supervisor"]
        for r in data["review"]:
            state = f"resolved by {r['resolved_by']}" if r["resolved_at"] else "open"
            lines.append(f"  {r['kind']} ({state}): {r['detail'].get('reason', '') if isinstance(r['detail'], dict) else ''}")

    lines += ["", "AUDIT TRAIL"]
    for e in data["audit"]:
        move = f" {e['from'] or ''}→{e['to']}" if e["to"] else ""
        lines.append(f"  {_short(e['at'])} {e['actor']:<18} {e['kind']}{move}: {e['reason']}")
    return "\n".join(lines)


def _candidate(c) -> str:
    if not isinstance(c, dict):
        return str(c)
    name = c.get("name") or c.get("agent") or c.get("id")
    parts = []
    if "load" in c and "capacity" in c:
        parts.append(f"load {c['load']}/{c['capacity']}")
    if "seniority" in c:
        parts.append(f"seniority {c['seniority']}")
    if c.get("previous"):
        parts.append("previous agent of this customer")
    if "last_assigned_at" in c:
        parts.append(f"last assigned {_short(c['last_assigned_at'])}")
    known = {"name", "agent", "id", "load", "capacity", "seniority", "senior", "previous", "last_assigned_at"}
    parts += [f"{k}={v}" for k, v in c.items() if k not in known]
    return f"{name}: {', '.join(parts)}" if parts else str(name)


def _short(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def _num(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    minutes = rest // 60
    if hours >= 24 and hours % 24 == 0 and not minutes:
        return f"{hours // 24}d"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
