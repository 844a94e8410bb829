"""Our own SMTP server (aiosmtpd): mail handed to it becomes an InboundMessage, and the sender hears
250 only once intake has committed it.

The replies follow RFC 5321's meaning, because the sending server acts on the first digit:
- 250 after the commit (and for a duplicate delivery, which is already stored);
- 451 when the database cannot take the message (the sender keeps it and retries later: nothing lost);
- 550 for a recipient we do not serve (so we are nobody's relay and spam to random names bounces at once);
- 552 for mail over the size limit (aiosmtpd answers it; a sender then tells its user the mail was too big).
Anything unexpected is a 451 too: a 5xx would make the sender give up on mail we never stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiosmtpd.smtp import SMTP, Envelope, Session

from connectors.email.parse import parse_email
from models.errors import StorageUnavailable
from models.message import InboundMessage, Receipt

log = logging.getLogger(__name__)

Deliver = Callable[[InboundMessage], Awaitable[Receipt]]
# Mail up to this size is parsed on the event loop (typically well under a millisecond): a hop to a
# worker thread costs more than that, and the parse holds the GIL either way.
PARSE_INLINE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    # Recipient domains we take mail for (e.g. ("support.example.com",)); empty: any recipient, as
    # on a developer's machine or behind an MX that already filters.
    domains: tuple[str, ...] = ()
    max_bytes: int = 25 * 1024 * 1024  # the common limit of mail providers; bigger mail is refused with 552
    hostname: str = "paidan"  # how we introduce ourselves in the greeting and EHLO reply


def recipient_refusal(address: str, domains: Iterable[str]) -> str | None:
    """Why RCPT TO `address` is refused, as an SMTP reply; None when we take mail for it."""
    wanted = {d.lower().strip().lstrip("@") for d in domains}
    if not wanted:
        return None
    domain = address.rpartition("@")[2].lower().rstrip(">").strip()
    if domain in wanted:
        return None
    return f"550 5.1.1 <{address}>: this server takes mail only for {', '.join(sorted(wanted))}"


def accepted_reply(receipt: Receipt) -> str:
    how = "already stored as" if receipt.duplicate else "stored as"
    return f"250 2.0.0 OK: {how} {receipt.ticket_number}"


class IntakeHandler:
    """aiosmtpd handler: parse the DATA, hand it to intake, answer after the commit."""

    def __init__(self, deliver: Deliver, config: SmtpConfig, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.deliver = deliver
        self.config = config
        self.clock = clock

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = recipient_refusal(address, self.config.domains)
        if refusal:
            log.info("smtp: refused a recipient outside %s", ", ".join(self.config.domains))
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):  # only with decode_data=True, which we never set; keep bytes regardless
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            if len(raw) <= PARSE_INLINE_BYTES:
                message = parse_email(raw, received_at=self.clock(), envelope_sender=envelope.mail_from,
                                      ours=envelope.rcpt_tos)
            else:  # a big mail parses in a thread, while the event loop serves every other connection
                message = await asyncio.to_thread(
                    parse_email, raw, received_at=self.clock(), envelope_sender=envelope.mail_from,
                    ours=envelope.rcpt_tos)
            receipt = await self.deliver(message)
        except StorageUnavailable as exc:
            log.warning("smtp: not stored, asked the sender to retry: %s", exc)
            return "451 4.3.0 Temporary failure storing the message; please try again later"
        except Exception:  # noqa: BLE001 — a 5xx here would make the sender drop mail we never stored
            log.exception("smtp: unexpected error storing a message of %d bytes; asked the sender to retry", len(raw))
            return "451 4.3.0 Temporary failure storing the message; please try again later"
        log.info("smtp: %s %d bytes from %s as %s%s", "duplicate of" if receipt.duplicate else "stored",
                 len(raw), session.peer[0] if session.peer else "?", receipt.ticket_number,
                 f" ({', '.join(message.flags)})" if message.flags else "")
        return accepted_reply(receipt)


# A plain `<local@domain>` path, as nearly every MAIL FROM and RCPT TO is written.
_SIMPLE_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>")


class PaidanSMTP(SMTP):
    """aiosmtpd's protocol with two changes.

    Long lines: aiosmtpd refuses a line over RFC 5321's 1,000 octets with a permanent 500, so a
    customer's mail from a sloppy client (HTML on one line) would bounce. Postfix takes such lines,
    and so do we: the size limit still bounds the whole mail.

    Addresses: aiosmtpd reads every MAIL and RCPT path with the email package's full header parser
    (and defines a class on each call): ~12 % of the server's time per mail (bench/email_intake.py). A plain
    `<local@domain>` path is read with one regex, with the same result; anything else (quoted local
    parts, comments, UTF-8 addresses) still goes to aiosmtpd's parser.
    """

    line_length_limit = 1024 * 1024

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        simple = _SIMPLE_PATH.match(arg) if arg else None
        if simple is None:
            return super()._getaddr(arg)
        address = simple.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[simple.end():].lstrip()  # as the email package leaves it


async def start_smtp_server(deliver: Deliver, config: SmtpConfig, *, sock: socket.socket | None = None,
                            clock: Callable[[], datetime] | None = None) -> asyncio.AbstractServer:
    """Serve SMTP on the running loop (on `sock` when given, so port 0 works); close() to stop."""
    handler = IntakeHandler(deliver, config, **({"clock": clock} if clock else {}))

    def protocol() -> SMTP:
        return PaidanSMTP(handler, data_size_limit=config.max_bytes, enable_SMTPUTF8=True, decode_data=False,
                    hostname=config.hostname, ident="paidan ESMTP", timeout=300)

    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(protocol, sock=sock)
    return await loop.create_server(protocol, host=config.host, port=config.port)
