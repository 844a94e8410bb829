"""Linking an email address to a Telegram chat with a one-time code (DESIGN.md: "a verified code
links an email to a Telegram chat").

A customer on Telegram asks to link an address; we mail a 6-digit code to that address, and whoever
types it back in the same chat has shown they read that mailbox. The address then becomes the
customer's, verified; if it already was another customer's, the two are merged with
`router.identity.merge_customers` (recorded, undoable with `paidan customers unmerge`).

The decisions are pure functions (`read_link_argument`, `decide_request`, `decide_confirm`) that
return an outcome with its reason; `request_code` and `confirm_code` read what they need, apply
the decision and queue the mail, in the caller's transaction (they never commit).

What is kept about a code: an HMAC-SHA256 of it under the deployment's key (`code_sha256`: a
database copy cannot be searched through the 10⁶ codes without the key), and in the outbox row, the
code sealed with that key (`models.sealing`) until the mail is built. Never the code in clear, and
no log line ever carries it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import ActionRefused, InvalidInput
from models.message import IdentityKind
from models.sealing import seal
from models.tables import Customer, Identity, LinkCode, ReviewItem
from router.identity import identities_of, merge_customers, normalise_email, root_customer
from router.outbox import enqueue

CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=30)
MAX_WRONG_TRIES = 5
CODES_PER_CUSTOMER_PER_HOUR = 3
# Also per address, whoever asks: several Telegram accounts must not make us flood one mailbox.
CODES_PER_ADDRESS_PER_HOUR = 5
RATE_WINDOW = timedelta(hours=1)
ACTOR = "telegram-link"

# Outcome statuses: what happened, for the edge to put into words.
USAGE = "usage"  # nothing after the command
MALFORMED_ADDRESS = "malformed_address"
MALFORMED_CODE = "malformed_code"
CODE_SENT = "code_sent"
ALREADY_LINKED = "already_linked"
RATE_LIMITED = "rate_limited"
NO_PENDING = "no_pending"
EXPIRED = "expired"
TOO_MANY_TRIES = "too_many_tries"
WRONG_CODE = "wrong_code"
LINKED = "linked"  # the address is this customer's now, verified (added, or by a merge: said alike)
LINKED_FOR_REVIEW = "linked_for_review"  # verified, but the merge needs a supervisor (conflicting identities)


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    """What a link request did and why. `address` is the normalised address when one was given."""

    status: str
    reason: str
    address: str | None = None
    tries_left: int | None = None
    retry_at: datetime | None = None
    merge_id: int | None = None
    review_id: int | None = None


# ---------------------------------------------------------------- reading what the customer typed (pure)


@dataclass(frozen=True, slots=True)
class AskCode:
    address: str


@dataclass(frozen=True, slots=True)
class GiveCode:
    code: str


def read_link_argument(argument: str) -> AskCode | GiveCode | LinkOutcome:
    """What follows `/link`: an address to send a code to, a code to check, or the outcome that says
    what was wrong with it. Full-width digits and letters (a Chinese keyboard's) count as ASCII."""
    text = unicodedata.normalize("NFKC", argument or "").strip().strip("<>").strip()
    if not text:
        return LinkOutcome(USAGE, "nothing after the command")
    compact = "".join(text.split())
    if compact.isascii() and compact.isdigit():
        if len(compact) != CODE_DIGITS:
            return LinkOutcome(MALFORMED_CODE, f"{len(compact)} digits, a code has {CODE_DIGITS}")
        return GiveCode(compact)
    try:
        return AskCode(normalise_link_address(text))
    except InvalidInput as exc:
        return LinkOutcome(MALFORMED_ADDRESS, exc.problem)


def normalise_link_address(value: str) -> str:
    """The address as an identity stores it; InvalidInput unless it is one plain address (no list,
    no display name, nothing a mail header could read as a second recipient)."""
    value = value.strip()
    if len(value) > 254 or any(ch.isspace() or ch in ",;<>\"()[]\\" for ch in value):
        raise InvalidInput("email", "not one plain email address")
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", str(exc)) from None
    return normalise_email(checked.normalized)


# ---------------------------------------------------------------- codes (pure)


def new_code() -> str:
    """Six random digits from `secrets` (leading zeros kept)."""
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def code_digest(key: bytes, customer_id: int, kind: str, value: str, code: str) -> str:
    """What `link_codes.code_sha256` keeps: HMAC-SHA256 of the code, bound to who asked for what."""
    message = f"paidan link code|{customer_id}|{kind}|{value}|{code}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class RequestState:
    """What `decide_request` needs to know, read by `request_code`."""

    address: str
    already_verified_here: bool  # the address is this customer's, verified
    customer_codes_in_window: tuple[datetime, ...]  # creation times, this customer's codes of the last hour
    address_codes_in_window: tuple[datetime, ...]  # the same for this address, whoever asked


def decide_request(state: RequestState, now: datetime) -> LinkOutcome:
    """Send a code, or say why not."""
    if state.already_verified_here:
        return LinkOutcome(ALREADY_LINKED, "the address is already this customer's, verified", state.address)
    for times, limit, whose in ((state.customer_codes_in_window, CODES_PER_CUSTOMER_PER_HOUR, "this customer"),
                                (state.address_codes_in_window, CODES_PER_ADDRESS_PER_HOUR, "this address")):
        if len(times) >= limit:
            retry_at = sorted(times)[len(times) - limit] + RATE_WINDOW
            return LinkOutcome(RATE_LIMITED, f"{len(times)} codes for {whose} in the last hour (at most {limit})",
                               state.address, retry_at=retry_at)
    return LinkOutcome(CODE_SENT, f"a code valid for {CODE_TTL.seconds // 60} minutes", state.address)


@dataclass(frozen=True, slots=True)
class PendingCode:
    """The latest unused code of a customer, as `decide_confirm` sees it."""

    customer_id: int
    kind: str
    value: str
    code_sha256: str
    expires_at: datetime
    attempts: int


def decide_confirm(pending: PendingCode | None, given: str, key: bytes, now: datetime) -> LinkOutcome:
    """Check `given` against the pending code, in constant time. A wrong code is one try used."""
    if pending is None:
        return LinkOutcome(NO_PENDING, "no code is waiting for this customer")
    address = pending.value
    if pending.attempts >= MAX_WRONG_TRIES:
        return LinkOutcome(TOO_MANY_TRIES, f"{pending.attempts} wrong tries; the code is spent", address, tries_left=0)
    if now >= pending.expires_at:
        return LinkOutcome(EXPIRED, f"the code expired at {pending.expires_at:%H:%M} UTC", address)
    expected = code_digest(key, pending.customer_id, pending.kind, pending.value, given)
    if not hmac.compare_digest(expected, pending.code_sha256):
        left = MAX_WRONG_TRIES - pending.attempts - 1
        return LinkOutcome(WRONG_CODE, f"wrong code, {left} tries left", address, tries_left=left)
    return LinkOutcome(LINKED, "the code matches", address)


# ---------------------------------------------------------------- applying them (take a Session, never commit)


def request_code(session: Session, *, telegram_id: int, address: str, key: bytes, now: datetime,
                 display_name: str = "", username: str | None = None, language: str | None = None) -> LinkOutcome:
    """Decide on a request to link `address` to Telegram user `telegram_id`; when the decision is to
    send a code, store it (as its digest) and queue the mail with it (sealed) to that address. A
    Telegram user we have not met yet becomes a customer here: a code must belong to someone."""
    customer = _telegram_customer(session, telegram_id, now=now, display_name=display_name, language=language)
    # One request of a customer at a time: the count below and the insert after it go together.
    session.scalar(select(Customer.id).where(Customer.id == customer.id).with_for_update())
    behind = _customers_behind(session, customer.id)
    owner = session.scalar(select(Identity).where(Identity.kind == IdentityKind.EMAIL.value, Identity.value == address))
    since = now - RATE_WINDOW
    state = RequestState(
        address=address,
        already_verified_here=(owner is not None and owner.verified
                               and root_customer(session, owner.customer_id) == customer.id),
        customer_codes_in_window=tuple(session.scalars(select(LinkCode.created_at).where(
            LinkCode.customer_id.in_(behind), LinkCode.created_at > since))),
        address_codes_in_window=tuple(session.scalars(select(LinkCode.created_at).where(
            LinkCode.kind == IdentityKind.EMAIL.value, LinkCode.value == address, LinkCode.created_at > since))),
    )
    outcome = decide_request(state, now)
    if outcome.status != CODE_SENT:
        return outcome
    code = new_code()
    row = LinkCode(customer_id=customer.id, kind=IdentityKind.EMAIL.value, value=address,
                   code_sha256=code_digest(key, customer.id, IdentityKind.EMAIL.value, address, code),
                   created_at=now, expires_at=now + CODE_TTL, attempts=0)
    session.add(row)
    session.flush()
    enqueue(session, kind="link_code", channel="email", recipient=address, now=now,
            dedupe_key=f"link_code:{row.id}:{now:%Y%m%d%H%M%S}",
            payload={"sealed_code": seal(code, key), "language": language or customer.language,
                     "telegram_name": display_name, "telegram_username": username, "telegram_id": telegram_id,
                     "expires_at": row.expires_at.isoformat(), "minutes": CODE_TTL.seconds // 60})
    return outcome


def confirm_code(session: Session, *, telegram_id: int, code: str, key: bytes, now: datetime) -> LinkOutcome:
    """Check a code Telegram user `telegram_id` typed against their latest code (asking again replaces
    the earlier one); on a match the address becomes theirs, verified (merging its customer into
    theirs, or theirs into it, the older one surviving)."""
    holder = _telegram_holder(session, telegram_id)
    row = None
    if holder is not None:
        # Locked: two tries at once must both count, and a code is used once.
        row = session.scalar(
            select(LinkCode).where(LinkCode.customer_id.in_(_customers_behind(session, holder)),
                                   LinkCode.used_at.is_(None))
            .order_by(LinkCode.id.desc()).limit(1).with_for_update().execution_options(populate_existing=True))
    pending = None if row is None else PendingCode(row.customer_id, row.kind, row.value, row.code_sha256,
                                                   row.expires_at, row.attempts)
    outcome = decide_confirm(pending, code, key, now)
    if outcome.status == WRONG_CODE:
        row.attempts += 1
    if outcome.status != LINKED:
        return outcome
    row.used_at = now
    return _link(session, holder, telegram_id, row, now)


def _link(session: Session, holder: int, telegram_id: int, code: LinkCode, now: datetime) -> LinkOutcome:
    address = code.value
    telegram = session.scalar(select(Identity).where(Identity.kind == IdentityKind.TELEGRAM.value,
                                                     Identity.value == str(telegram_id)))
    telegram.verified = True
    owned = session.scalar(select(Identity).where(Identity.kind == code.kind, Identity.value == address))
    if owned is None:
        session.add(Identity(customer_id=holder, kind=code.kind, value=address, verified=True, created_at=now))
        session.flush()
        return LinkOutcome(LINKED, f"{code.kind} added to customer #{holder}", address)
    owner = root_customer(session, owned.customer_id)
    owned.verified = True
    if owner == holder:
        return LinkOutcome(LINKED, f"customer #{holder} already had the {code.kind}; now verified", address)
    evidence = (f"verified code by Telegram: telegram:{telegram_id} typed the code mailed to "
                f"{code.kind}:{address} (link code #{code.id})")
    source, target = max(owner, holder), min(owner, holder)  # the older customer survives, as in intake
    try:
        merge = merge_customers(session, source, target, actor=ACTOR, evidence=evidence, now=now)
    except ActionRefused as refused:
        # Conflicting identities (another email, another Telegram account): a person decides.
        review = ReviewItem(kind="identity_conflict", customer_id=holder, created_at=now, detail={
            "customers": sorted((holder, owner)), "evidence": evidence, "merge_refused": str(refused),
            "identities": {str(c): [f"{k}:{v}" for k, v in held] for c, held in
                           identities_of(session, (holder, owner)).items()},
        })
        session.add(review)
        session.flush()
        return LinkOutcome(LINKED_FOR_REVIEW, f"verified, but not merged: {refused}", address, review_id=review.id)
    return LinkOutcome(LINKED, f"customer #{source} merged into #{target} (merge #{merge.id})", address,
                       merge_id=merge.id)


def _telegram_holder(session: Session, telegram_id: int) -> int | None:
    owner = session.scalar(select(Identity.customer_id).where(Identity.kind == IdentityKind.TELEGRAM.value,
                                                              Identity.value == str(telegram_id)))
    return None if owner is None else root_customer(session, owner)


def _telegram_customer(session: Session, telegram_id: int, *, now: datetime, display_name: str,
                       language: str | None) -> Customer:
    holder = _telegram_holder(session, telegram_id)
    if holder is not None:
        return session.get(Customer, holder)
    customer = Customer(display_name=(display_name or "")[:200], language=language, vip=False, created_at=now)
    session.add(customer)
    session.flush()
    session.add(Identity(customer_id=customer.id, kind=IdentityKind.TELEGRAM.value, value=str(telegram_id),
                         verified=False, created_at=now))
    session.flush()
    return customer


def _customers_behind(session: Session, customer_id: int) -> list[int]:
    """`customer_id` and every customer merged into it (and into those): whose codes are its codes."""
    found, frontier = [customer_id], [customer_id]
    while frontier:
        frontier = [c for c in session.scalars(select(Customer.id).where(Customer.merged_into_id.in_(frontier)))
                    if c not in found]
        found += frontier
    return found

