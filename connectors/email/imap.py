"""Poll an IMAP folder and hand each new mail to intake; acknowledge only what intake committed.

One `ImapPoller.poll()` is one round: connect, SELECT, read every UID after the stored cursor in
UID order, and for each: parse, `deliver` (returns after the database commit), save the cursor,
then flag it `\\Seen` or move it to the processed folder. Nothing is ever deleted. The cursor
(uidvalidity and last UID), not the `\\Seen` flag, says what is done: a human reading a mail in
their mail client does not hide it from us, and a flag that fails to stick does not re-import it.

imapclient is synchronous: the wiring runs `poll` with `asyncio.to_thread`.
The decisions (which UIDs, which fetch groups, where to resume) are the pure functions below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from connectors.email.parse import parse_email
from models.errors import PaidanError
from models.message import InboundMessage, Receipt

log = logging.getLogger(__name__)

SEEN = b"\\Seen"
MB = 1024 * 1024


class ImapUnavailable(PaidanError):
    """The IMAP server could not be reached, refused the login, or dropped the connection.
    Nothing unacknowledged was lost: the next poll resumes from the stored cursor."""


@dataclass(frozen=True, slots=True)
class ImapConfig:
    host: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"
    ssl: bool = True
    batch: int = 20  # messages per FETCH
    name: str = ""  # the cursor's name; default: one per account and folder
    processed_folder: str | None = None  # move committed mail there instead of flagging it \Seen
    max_bytes: int = 25 * MB  # bigger mails are logged (and fetched alone), still delivered whole
    timeout: float = 60.0  # seconds per socket operation

    def __repr__(self) -> str:  # never print the password
        return f"ImapConfig({self.host}:{self.port}, {mask_address(self.username)}, folder={self.folder!r})"

    @property
    def cursor_name(self) -> str:
        # UIDs are only meaningful per server, account and folder, so the cursor is too.
        return self.name or f"imap:{self.username}@{self.host}:{self.port}/{self.folder}"


@dataclass(frozen=True, slots=True)
class PollReport:
    fetched: int = 0  # mails whose bytes were read
    delivered: int = 0  # of those, committed by intake (duplicates included)
    duplicates: int = 0  # of those, already stored before (same Message-ID or bytes)
    stopped_because: str | None = None  # None: every mail after the cursor was taken


@dataclass(frozen=True, slots=True)
class Cursor:
    uidvalidity: int | None = None
    last_uid: int = 0

    @classmethod
    def from_dict(cls, value: Mapping) -> Cursor:
        uidvalidity = value.get("uidvalidity")
        return cls(int(uidvalidity) if uidvalidity is not None else None, int(value.get("last_uid", 0)))

    def to_dict(self) -> dict:
        return {"uidvalidity": self.uidvalidity, "last_uid": self.last_uid}


# ---- decisions: pure functions ------------------------------------------------------------------


def resume_after(cursor: Cursor, uidvalidity: int) -> int:
    """The last UID already done in this folder. A changed uidvalidity means the server renumbered
    the folder (recreated, restored, migrated): our last UID means nothing there, so start over.
    Re-reading is safe because intake is idempotent on the Message-ID (or the bytes' hash)."""
    return cursor.last_uid if cursor.uidvalidity == uidvalidity else 0


def uids_to_fetch(found: Iterable[int], after: int) -> list[int]:
    """The UIDs still to do, in order. `UID SEARCH UID n:*` always answers the highest UID in the
    folder, even when it is below n (RFC 3501: `*` is the largest UID in use), so filter."""
    return sorted(uid for uid in set(found) if uid > after)


def fetch_groups(uids: list[int], sizes: Mapping[int, int], *, max_count: int, max_bytes: int) -> list[list[int]]:
    """Split UIDs (in order) into FETCHes of at most `max_count` mails and `max_bytes` bytes; a mail
    over `max_bytes` goes alone, so one huge mail never drags a batch into a timeout (a mail
    with 70 attachments stopped Zammad's fetching). A size the server did not give counts as 0."""
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if group and (len(group) >= max_count or total + size > max_bytes):
            groups.append(group)
            group, total = [], 0
        group.append(uid)
        total += size
    if group:
        groups.append(group)
    return groups


def body_of(item: Mapping | None) -> bytes | None:
    """The mail's bytes from one FETCH answer, or None when the server sent none (Exchange announces
    UIDs before their body can be read; Dovecot answers NIL for a mail expunged meanwhile)."""
    if not item:
        return None
    body = item.get(b"BODY[]")
    return bytes(body) if body else None


def received_at_of(item: Mapping, now: datetime) -> datetime:
    """When the server received the mail (INTERNALDATE), in UTC; `now` if it did not say."""
    internal = item.get(b"INTERNALDATE")
    if isinstance(internal, datetime) and internal.tzinfo is not None and internal.year > 1970:
        return internal.astimezone(UTC)
    return now


def mask_address(address: str) -> str:
    """`alice@example.com` -> `a***@example.com`: enough to tell mails apart in a log, not to harvest."""
    local, at, domain = (address or "").rpartition("@")
    if not at:
        return f"{address[:1]}***" if address else ""
    return f"{local[:1]}***@{domain}"


# ---- the round: thin I/O around the decisions ---------------------------------------------------


class ImapPoller:
    """`poll()` takes every mail after the stored cursor; construct once per folder, poll often."""

    def __init__(
        self,
        config: ImapConfig,
        *,
        deliver: Callable[[InboundMessage], Receipt],
        load_cursor: Callable[[str], dict],
        save_cursor: Callable[[str, dict], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.config = config
        self.deliver = deliver
        self.load_cursor = load_cursor
        self.save_cursor = save_cursor
        self.clock = clock
        self.label = f"imap {mask_address(config.username)} on {config.host}/{config.folder}"

    def poll(self) -> PollReport:
        """One round. Raises ImapUnavailable when the server cannot be used; everything committed
        before that has its cursor saved, so nothing is lost or imported twice. (An error of
        `load_cursor` itself, the database being down, propagates as it is.)"""
        client = round_ = None
        try:
            client = self._connect()
            round_ = _Round(self, client)
            return round_.run()
        except (IMAPClientError, OSError) as exc:  # includes a connection dropped mid-batch
            done = f" after {round_.delivered} stored" if round_ else ""
            raise ImapUnavailable(f"{self.label}: {type(exc).__name__}{done}: {exc}") from exc
        finally:
            if client is not None:
                _logout_quietly(client)

    def _connect(self) -> IMAPClient:
        c = self.config
        client = IMAPClient(c.host, port=c.port, ssl=c.ssl, timeout=c.timeout)
        client.normalise_times = False  # INTERNALDATE as an aware datetime, not naive local time
        try:
            client.login(c.username, c.password)
            if c.processed_folder and not client.folder_exists(c.processed_folder):
                client.create_folder(c.processed_folder)
        except (IMAPClientError, OSError):
            _logout_quietly(client)
            raise
        return client


class _Round:
    """The state of one poll: the connection, the folder's uidvalidity and the running tally."""

    def __init__(self, poller: ImapPoller, client: IMAPClient):
        self.poller, self.config, self.client = poller, poller.config, client
        self.label = poller.label
        self.fetched = self.delivered = self.duplicates = 0
        self.can_move = bool(self.config.processed_folder) and client.has_capability("MOVE")
        if self.config.processed_folder and not self.can_move:
            log.warning("%s: the server cannot MOVE; committed mail is flagged \\Seen instead", self.label)

    def report(self, stopped_because: str | None = None) -> PollReport:
        return PollReport(self.fetched, self.delivered, self.duplicates, stopped_because)

    def run(self) -> PollReport:
        self.uidvalidity = int(self.client.select_folder(self.config.folder)[b"UIDVALIDITY"])
        cursor = Cursor.from_dict(self.poller.load_cursor(self.config.cursor_name))
        after = resume_after(cursor, self.uidvalidity)
        if cursor.uidvalidity is not None and cursor.uidvalidity != self.uidvalidity:
            log.warning("%s: uidvalidity changed from %s to %s; reading the folder again from UID 1 "
                        "(already stored mail is recognised and not stored twice)",
                        self.label, cursor.uidvalidity, self.uidvalidity)
        uids = uids_to_fetch(self.client.search(["UID", f"{after + 1}:*"]), after)
        for start in range(0, len(uids), self.config.batch):
            chunk = uids[start:start + self.config.batch]
            sizes = {uid: int(item.get(b"RFC822.SIZE", 0))
                     for uid, item in self.client.fetch(chunk, ["RFC822.SIZE"]).items()}
            for group in fetch_groups(chunk, sizes, max_count=self.config.batch, max_bytes=self.config.max_bytes):
                # BODY.PEEK: reading must not set \Seen; only a commit may acknowledge a mail.
                items = self.client.fetch(group, ["BODY.PEEK[]", "INTERNALDATE"])
                for uid in group:
                    stopped_because = self.take(uid, items.get(uid), sizes.get(uid))
                    if stopped_because:
                        return self.report(stopped_because)
        return self.report()

    def take(self, uid: int, item: Mapping | None, size: int | None) -> str | None:
        """Deliver one mail, then move the cursor past it and acknowledge it. Returns why the round
        must stop here (the cursor stays before this UID), or None to go on."""
        raw = body_of(item)
        if raw is None:
            if self.client.search(["UID", str(uid)]):
                # Announced but not readable yet: wait, never skip (OTRS lost mail this way).
                log.info("%s: UID %d has no body yet; retrying next poll", self.label, uid)
                return f"UID {uid} has no body yet"
            # Expunged between SEARCH and FETCH (by a person or another client): nothing to import.
            log.info("%s: UID %d vanished before it was read; skipping it", self.label, uid)
            return self.advance(uid)
        self.fetched += 1
        if size is not None and size > self.config.max_bytes:
            log.warning("%s: UID %d is %.1f MB, over the %.1f MB limit; delivered whole",
                        self.label, uid, size / MB, self.config.max_bytes / MB)
        # The mailbox's own address (its login, when that is one) is never copied on our answer.
        mailbox = (self.config.username,) if "@" in self.config.username else ()
        msg = parse_email(raw, received_at=received_at_of(item, self.poller.clock()), ours=mailbox)
        try:
            receipt = self.poller.deliver(msg)
        except Exception as exc:  # whatever failed, the mail stays on the server for the next poll
            log.error("%s: UID %d not stored (%s); stopping this round, it will be retried",
                      self.label, uid, type(exc).__name__)
            return f"UID {uid} not stored: {type(exc).__name__}"
        self.delivered += 1
        self.duplicates += int(receipt.duplicate)
        log.info("%s: UID %d (%d bytes, from %s) -> %s%s", self.label, uid, len(raw),
                 mask_address(msg.sender.identities[0].value), receipt.ticket_number,
                 " (already stored)" if receipt.duplicate else "")
        if stopped_because := self.advance(uid):
            return stopped_because
        self.acknowledge(uid)
        return None

    def advance(self, uid: int) -> str | None:
        """Save the cursor at `uid`: first, so a flag that fails afterwards cannot re-import it."""
        try:
            self.poller.save_cursor(self.config.cursor_name, Cursor(self.uidvalidity, uid).to_dict())
        except Exception as exc:  # stored but not remembered: re-read next poll, recognised as a duplicate
            log.error("%s: cursor not saved at UID %d (%s); stopping this round", self.label, uid, type(exc).__name__)
            return f"cursor not saved at UID {uid}: {type(exc).__name__}"
        return None

    def acknowledge(self, uid: int) -> None:
        """Tell the mailbox's humans the mail is taken. Failing here loses nothing: it is stored and
        the cursor is past it (Office 365 answers "no longer exists" for mail moved meanwhile)."""
        try:
            if self.can_move:
                self.client.move([uid], self.config.processed_folder)
            else:
                self.client.add_flags([uid], [SEEN], silent=True)
        except IMAPClientAbortError:
            raise  # the connection is gone: the round ends, the cursor already covers this mail
        except IMAPClientError as exc:
            log.warning("%s: UID %d stored but not flagged or moved: %s", self.label, uid, exc)


def _logout_quietly(client: IMAPClient) -> None:
    try:
        client.logout()
    except (IMAPClientError, OSError):
        pass  # the connection is already gone; there is nothing left to close cleanly
