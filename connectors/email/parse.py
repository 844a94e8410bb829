"""Turn the raw bytes of one email into an InboundMessage. Pure: no I/O, and it never raises.

Real mail is often broken: mislabelled Chinese charsets, unknown charset names, invalid
transfer encodings, missing Message-IDs, HTML nested thousands deep (FAILURE_MODES.md 1-15).
Every such mail still becomes a message; what went wrong is recorded in ``flags`` so a human can
look, and ``raw`` keeps the exact bytes.

We parse with ``policy=compat32`` and decode headers and bodies ourselves. Measured on the
953-mail corpus: reading with ``policy.default`` raises on 28 mails (LookupError from
``get_content()`` for odd charset names, AttributeError on DSN address headers, OverflowError on
dates, ValueError on CR/LF in addresses and on NUL), while this module, built on compat32, raises
on none: compat32 hands us raw strings and leaves every charset decision to us.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.policy
import functools
import hashlib
import quopri
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import getaddresses
from html.parser import HTMLParser

from models.message import (
    MACHINE_FLAGS,
    Attachment,
    Channel,
    Identity,
    IdentityKind,
    InboundMessage,
    Sender,
    ThreadRefs,
)

__all__ = ["MACHINE_FLAGS", "normalise_message_id", "parse_email"]

MAX_TEXT = 100_000
MAX_SUBJECT = 500
MAX_EXTERNAL_ID = 512
MAX_REFERENCES = 50
MAX_CC = 10  # people copied on a mail that our answer copies too: a thread, not a mailing list
MAX_FILENAME = 255
MAX_MIME_DEPTH = 100  # far deeper than real mail; keeps the recursive body walk off the stack limit

# Flags come out in this order, whatever order the checks ran in.
FLAG_ORDER = ("unparseable", "no_message_id", "no_sender", "charset_fallback", "auto_reply", "bounce")


# --- charsets ---------------------------------------------------------------------------------

# Labels whose real content is routinely a superset: Outlook and Foxmail write GBK/GB18030 text
# under "gb2312" (FAILURE_MODES 1-4), Outlook writes cp949 under "ks_c_5601-1987", and so on.
# Decoding with the superset is always right for text that really is the subset.
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "iso-gb2312": "gb18030",
    "gb_2312-80": "gb18030", "gb_2312": "gb18030", "cp936": "gb18030", "ms936": "gb18030",
    "euc-cn": "gb18030", "x-euc-cn": "gb18030", "csgb2312": "gb18030", "chinese": "gb18030",
    "gb18030": "gb18030", "windows-936": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "ks_c_5601": "cp949",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "big5": "big5hkscs", "x-big5": "big5hkscs",
    # Windows mailers write cp1252 quotes and dashes under "iso-8859-1" (browsers decode it so too).
    "iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "ascii", "ascii": "ascii",
    "utf8": "utf-8", "unicodebig": "utf-16-be", "unicodelittle": "utf-16-le",
    "baltic": "iso8859-13", "x-mac-cyrillic": "mac_cyrillic",
}

_LABEL = re.compile(r"[A-Za-z0-9_.:+-]+")
_LABEL_PREFIX = re.compile(r"(?:[a-z]+[-_]?)+\d+(?:[-_]\d+)*")  # "windows-1252http-equiv…"
_NOT_TEXT = frozenset({"base64", "bz2", "hex", "quopri", "rot-13", "uu", "zlib"})  # bytes-to-bytes


def _known_codec(name: str) -> str | None:
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return None
    return None if codec in _NOT_TEXT else name


def resolve_charset(label: str | None) -> tuple[str | None, bool]:
    """(Python codec, whether the label was usable as written) for a declared charset."""
    found = _LABEL.search(label or "")
    if not found:
        return None, False
    name = found.group().lower()
    codec = _known_codec(_SUPERSETS.get(name, name))
    if codec:
        return codec, True
    if name.startswith("x-"):  # "x-gbk", "x-mac-cyrillic": a vendor prefix on a known name
        codec = _known_codec(_SUPERSETS.get(name[2:], name[2:]))
        if codec:
            return codec, True
    if name.isdigit():  # "1252" (FAILURE_MODES 8)
        return _known_codec(f"cp{name}"), True
    prefix = _LABEL_PREFIX.match(name)  # "utf-8-purple", "iso-8859-8-i": a known name and junk
    if prefix:
        return _known_codec(_SUPERSETS.get(prefix.group(), prefix.group())), False
    return None, False


def decode_bytes(data: bytes, label: str | None, hint: str | None = None) -> tuple[str, bool]:
    """Decode text whatever its label; the bool says a declared charset could not be used.

    ``hint`` is the charset the rest of the mail declares, for bytes that declare none (raw 8-bit
    headers: old Chinese and Taiwanese mailers write them in the body's charset).
    """
    codec, as_written = resolve_charset(label)
    declared = bool(label and label.strip())
    if codec:
        try:
            text = data.decode(codec)
        except UnicodeError:
            pass
        else:
            if _single_byte(codec) and not data.isascii() and (utf8 := _as_utf8(data)) is not None:
                # A single-byte charset decodes any bytes at all, so it cannot tell us it is wrong.
                # UTF-8 can: multi-byte sequences that all check out almost never happen by chance in
                # Latin or Cyrillic text, while UTF-8 sent under a stale label is common.
                return utf8, True
            return text, declared and not as_written
        if data.isascii():  # a 7-bit encoding (ISO-2022-JP, UTF-7) met a sequence it lacks
            return data.decode(codec, errors="replace"), True
    # GB18030 and the hint only when nothing usable was declared: GB18030 accepts most byte
    # pairs, so it would turn a Latin-1 text with one odd byte into Chinese.
    guesses = ["utf-8"] if codec else ["utf-8", resolve_charset(hint)[0], "gb18030"]
    for guess in filter(None, guesses):
        try:
            return data.decode(guess), declared
        except UnicodeError:
            pass
    # A stray bad byte in otherwise fine text: keep the declared reading and mark the byte.
    return data.decode(codec or "latin-1", errors="replace"), declared


@functools.cache
def _single_byte(codec: str) -> bool:
    """One byte, one character: cp1252, the ISO-8859 family, KOI8, the Mac charsets …"""
    if codecs.lookup(codec).name == "utf-8":
        return False
    return len(bytes(range(128, 256)).decode(codec, errors="replace")) == 128


def _as_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return None


def _raw_bytes(value: str) -> bytes:
    """The original bytes of a compat32 header or payload string (8-bit bytes are surrogates)."""
    try:
        return value.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


# --- headers ----------------------------------------------------------------------------------

# RFC 2047 encoded-word; the charset may carry an RFC 2231 language ("utf-8*zh").
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?]*)\?=")  # mailers put spaces inside


def _lenient_base64(data: bytes) -> bytes:
    """Decode base64 with junk characters and missing padding, as mailers write it."""
    data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    data = data[: len(data) - 1] if len(data) % 4 == 1 else data + b"=" * (-len(data) % 4)
    return binascii.a2b_base64(data)


def _word_bytes(encoding: str, payload: str) -> bytes:
    raw = _raw_bytes(payload)
    if encoding in "qQ":
        return quopri.decodestring(raw.replace(b"_", b" "), header=True)
    return _lenient_base64(raw)


def decode_header_text(value: str, hint: str | None = None) -> tuple[str, bool]:
    """Decode encoded-words and raw 8-bit bytes in a header; the bool flags a charset fallback."""
    pieces: list[tuple[bytes, str | None]] = []  # (bytes, charset label); None = raw header text
    fell_back = False
    last = 0
    for word in _ENCODED_WORD.finditer(value):
        between = value[last : word.start()]
        data = _word_bytes(word.group(2), word.group(3))
        # Whitespace between two encoded-words is folding, not text (RFC 2047 section 6.2).
        if between and (between.strip() or not pieces or pieces[-1][1] is None):
            pieces.append((_raw_bytes(between), None))
        label = word.group(1).lower()
        # Join adjacent words in one charset before decoding: mailers split a multi-byte
        # character across two words.
        if pieces and pieces[-1][1] == label:
            pieces[-1] = (pieces[-1][0] + data, label)
        else:
            pieces.append((data, label))
        last = word.end()
    pieces.append((_raw_bytes(value[last:]), None))
    out = []
    for data, label in pieces:
        text, fallback = decode_bytes(data, label, hint)
        fell_back |= fallback
        out.append(text)
    return "".join(out), fell_back


def _header(msg: Message, name: str) -> str | None:
    """First raw value of a header, unfolded; None when absent."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip("\r\n")
    return None


def _one_line(text: str, limit: int) -> str:
    return clean_text(" ".join(text.split()))[:limit]


# --- message ids and thread references --------------------------------------------------------

_ANGLED = re.compile(r"<([^<>]*)>")


def normalise_message_id(value: str | None) -> str | None:
    """`<local@domain>`: whitespace removed, case kept; None for an empty or garbage id.

    The same form is used for our outbound ids, In-Reply-To and References, so they compare equal.
    """
    if not value:
        return None
    found = _ANGLED.search(value)
    inner = found.group(1) if found else value
    inner = re.sub(r"\s+", "", inner)
    # Printable ASCII only: anything else is damage, and would not match a stored id anyway.
    if not inner or not re.fullmatch(r"[!-~]+", inner) or "<" in inner or ">" in inner:
        return None
    return f"<{inner}>"


def _message_ids(value: str | None) -> list[str]:
    """Every msg-id in an In-Reply-To or References header, in order."""
    if not value:
        return []
    angled = _ANGLED.findall(value)
    found = angled if angled else value.split()
    return [mid for mid in (normalise_message_id(f"<{v}>") for v in found) if mid]


# "[GD20261123001]"; a customer retyping it in a Chinese IME may produce "【GD20261123001】".
_TICKET_TAG = re.compile(r"[\[【]\s*(GD\d{11,})\s*[\]】]", re.IGNORECASE)


def ticket_number(subject: str) -> str | None:
    found = _TICKET_TAG.search(subject)
    return found.group(1).upper() if found else None


# --- sender -----------------------------------------------------------------------------------

_ADDRESS = re.compile(r'(?:"[^"]*"|[^@\s<>"]+)@[^@\s<>"]+')  # a quoted local part may hold spaces


def _first_address(value: str | None) -> tuple[str, str] | None:
    """(display name, address) of the first usable address in an address header."""
    if not value:
        return None
    try:
        pairs = getaddresses([value])
    except Exception:  # noqa: BLE001 — a header the stdlib cannot split: try a plain search below
        pairs = []
    for name, address in pairs:
        address = address.strip()
        if _ADDRESS.fullmatch(address) and len(address) <= 254:
            return name, address
    loose = _ADDRESS.search(value)  # e.g. "postmaster@ <x postmaster@host>" that getaddresses mangles
    return ("", loose.group().strip("\"'()[],;:")) if loose else None


def _copied(msg: Message, sender: Sender, ours: Iterable[str] = ()) -> tuple[str, ...]:
    """Everyone else the customer wrote to, To then Cc, each once (case aside): the people "reply all"
    would reach. Not the sender, not the addresses it reached us at (`ours`), not a mailing list's own
    address (List-Post: answering a customer must not post to a public list), at most MAX_CC. Aliases of
    ours may still be among them; the relay also leaves out every address at our domains."""
    try:
        pairs = getaddresses([str(value) for name in ("To", "Cc") for value in msg.get_all(name) or []])
    except Exception:  # noqa: BLE001 — a header the stdlib cannot split is one we do not answer
        return ()
    seen = {sender.identities[0].value.lower(), *_list_addresses(msg), *(a.strip().lower() for a in ours)}
    found = []
    for _, address in pairs:
        address = address.strip()
        if _ADDRESS.fullmatch(address) and len(address) <= 254 and address.isascii() and address.lower() not in seen:
            seen.add(address.lower())
            found.append(address)
    return tuple(found[:MAX_CC])


_MAILTO = re.compile(r"<mailto:([^>?\s]+)", re.IGNORECASE)


def _list_addresses(msg: Message) -> set[str]:
    """The posting address a mailing list names in List-Post (RFC 2369), lower-cased."""
    return {found.lower() for found in _MAILTO.findall(_header(msg, "List-Post") or "")}


# From addresses that nobody reads, and the display names mailing lists give when they rewrite From
# for DMARC ("Gao Xiang via Linux-erofs <list@…>"): the person is then in Reply-To.
_NO_REPLY = re.compile(r"(?:no|do[-_.]?not)[-_.]?reply\b", re.IGNORECASE)
_VIA_LIST = re.compile(r"\s+via\s+\S.*$", re.IGNORECASE)


def _sender(msg: Message, envelope_sender: str | None, digest: str, hint: str | None) -> tuple[Sender, bool]:
    """The sender and whether it is a placeholder (no usable address anywhere).

    From, else Reply-To, else Sender; but Reply-To before From when From is a no-reply address (a shop's
    contact form mailing on a customer's behalf) or a list's rewrite: the customer is whom we answer,
    and taking the form's address would make every customer of that form one."""
    found = None
    for name in ("From", "Reply-To", "Sender"):
        found = _first_address(_header(msg, name))
        if found:
            break
    reply_to = _first_address(_header(msg, "Reply-To")) if found else None
    if reply_to and reply_to[1].lower() != found[1].lower():
        shown = decode_header_text(found[0], hint)[0]
        if _VIA_LIST.search(shown):  # the list's rewrite keeps the author's name before "via"
            found = (reply_to[0] or _VIA_LIST.sub("", shown), reply_to[1])
        elif _NO_REPLY.search(found[1].partition("@")[0]):  # the name is the form's, not the customer's
            found = reply_to
    if not found:
        found = _first_address(envelope_sender)
    if not found:
        return Sender((Identity(IdentityKind.EMAIL, f"unknown+{digest[:12]}@invalid"),)), True
    name, address = found
    address = _one_line(decode_header_text(address, hint)[0], 254)
    display = _one_line(decode_header_text(name, hint)[0], 200).strip("\"' ")
    return Sender((Identity(IdentityKind.EMAIL, address),), display), False


# --- text -------------------------------------------------------------------------------------

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Storable text: \\n newlines, no NUL or other C0 controls but \\t, no lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub(lambda m: "" if m.group() < "\ud800" else "\ufffd", text)


_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt footer form h1 h2 h3 h4 h5 h6 header hr "
    "li main nav ol p pre section table tbody thead tfoot tr ul".split()
)
_SKIP_TAGS = frozenset({"script", "style"})
# What may stand in a <head>. Anything else, or text, ends an unclosed head, as browsers read it
# (HTML5 "in head"): "<head><meta …>words" with no <body> shows the words, so we keep them.
_HEAD_TAGS = frozenset({"base", "link", "meta", "noscript", "script", "style", "template", "title"})


class _HtmlText(HTMLParser):
    """HTML to plain text; blockquoted lines get a "> " prefix so quote stripping sees them.

    html.parser is a flat tokenizer, and every handler here is O(1): nesting depth costs nothing
    (FAILURE_MODES 9).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.line: list[str] = []
        self.line_quoted = False
        self.skip = 0
        self.head = False
        self.head_title = False  # inside a <title> of the head: skipped
        self.quote = 0
        self.pre = 0

    def _newline(self) -> None:
        text = "".join(self.line).strip(" ")
        self.lines.append(f"> {text}" if self.line_quoted and text else text)
        self.line, self.line_quoted = [], False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.head and tag not in _HEAD_TAGS:
            self.head = False
        if tag in _SKIP_TAGS or (tag == "title" and self.head and not self.head_title):
            self.skip += 1
            self.head_title |= tag == "title"
        elif tag == "head":
            self.head = True
        elif tag == "body":
            self.skip = 0  # an unclosed <style> or <title> must not swallow the body
        if tag in _BLOCK_TAGS:
            self._newline()
        if tag == "blockquote":
            self.quote += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in ("td", "th"):
            self.line.append(" ")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK_TAGS:
            self._newline()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS or (tag == "title" and self.head_title):
            self.skip = max(0, self.skip - 1)
            self.head_title &= tag != "title"
        elif tag == "head":
            self.head = False
        if tag in _BLOCK_TAGS:
            self._newline()
        if tag == "blockquote":
            self.quote = max(0, self.quote - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.head:
            if not data.strip():
                return
            self.head = False  # text in an unclosed <head> is the body's (see _HEAD_TAGS)
        if self.pre:
            first, *rest = data.split("\n")
            self.line.append(first)
            for more in rest:
                self.line_quoted |= self.quote > 0
                self._newline()
                self.line.append(more)
        else:
            self.line.append(re.sub(r"\s+", " ", data))
        self.line_quoted |= self.quote > 0 and bool(data.strip())

    def text(self) -> str:
        self.close()
        self._newline()
        return re.sub(r"\n{3,}", "\n\n", "\n".join(self.lines)).strip()


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    return parser.text()


# Lines that open the quoted earlier mail in a reply; everything from there on is history.
_REPLY_HEADERS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        # The digit (a date) keeps "On Monday I paid. He wrote:" from counting.
        r"^On\b(?=.*\d).{0,300}\bwrote:$",  # Gmail, Apple Mail, Thunderbird
        r"^Am\b(?=.*\d).{0,300}\bschrieb\b.{0,300}:$",
        r"^Le\b(?=.*\d).{0,300}\ba écrit\s?:$",
        r"^在(?=.*\d).{0,300}写道[:：]$",  # Apple Mail / Thunderbird in Chinese
        r"^.{0,300}于\s?\d{4}\s?年.{0,200}写道[:：]$",  # Gmail in Chinese
        r"^-{2,}\s*Original Message\s*-{2,}$",
        r"^[-—]{2,}\s*(原始邮件|邮件原件|原始郵件|原始信件)\s*[-—]{2,}$",  # Outlook CN, QQ, Foxmail
    )
]
# Outlook's header block: "From: …" then "Sent: …" (or 发件人 / 发送时间) within a few lines.
_OUTLOOK_FROM = re.compile(r"^\**(From|发件人|寄件者)\**\s*[:：]", re.IGNORECASE)
_OUTLOOK_SENT = re.compile(r"^\**(Sent|Date|发送时间|寄件日期|时间|日期)\**\s*[:：]", re.IGNORECASE)
_SEPARATOR = re.compile(r"^[\s_\-—=*]*$")


def _reply_header_lines(lines: list[str], i: int) -> int:
    """How many lines the reply header starting at line i spans: 0 when there is none."""
    line = lines[i].strip()
    if any(p.match(line) for p in _REPLY_HEADERS):
        return 1
    if i + 1 < len(lines):  # Gmail wraps a long "On … <address> wrote:" over two lines
        joined = f"{line} {lines[i + 1].strip()}"
        if any(p.match(joined) for p in _REPLY_HEADERS):
            return 2
    if _OUTLOOK_FROM.match(line):
        # "From:" and "Date:" also open a forwarded mail's header, which is the customer's content.
        before = lines[i - 1].strip().lower() if i else ""
        if "forward" not in before and "转发" not in before:
            return int(any(_OUTLOOK_SENT.match(later.strip()) for later in lines[i + 1 : i + 4]))
    return 0


def strip_quoted(text: str) -> str:
    """The customer's new words: drop `>` lines and everything from a reply header on.

    A reply header at the very top (inline or bottom-posted reply) is dropped alone. When that
    leaves nothing (a reply that is only a quote) the full text is kept.
    """
    lines = text.split("\n")
    kept: list[str] = []
    i = 0
    while i < len(lines):
        header = _reply_header_lines(lines, i)
        if header and any(k.strip() for k in kept):
            break  # top-posted: the customer wrote above the quote
        if not header and not lines[i].lstrip().startswith(">"):
            kept.append(lines[i])
        i += header or 1  # a header above inline or bottom-posted answers is dropped alone
    while kept and _SEPARATOR.match(kept[-1]):  # blank lines, "______" above an Outlook block
        kept.pop()
    new = "\n".join(kept).strip()
    return new if new else text.strip()


# --- MIME parts -------------------------------------------------------------------------------


def _param(part: Message, name: str, header: str = "content-type", hint: str | None = None) -> tuple[str | None, bool]:
    """A decoded header parameter (RFC 2231 and RFC 2047 forms both occur in the wild)."""
    try:
        value = part.get_param(name, header=header)
    except Exception:  # noqa: BLE001 — a malformed parameter list: treat as absent
        return None, False
    if value is None:
        return None, False
    if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded value as latin-1)
        charset, _, text = value
        return decode_bytes(_raw_bytes(text), charset or "utf-8")
    return decode_header_text(str(value), hint)


def _transfer_decoded(part: Message) -> bytes:
    """The part's bytes after its Content-Transfer-Encoding.

    compat32 decodes base64 (leniently), quoted-printable and uuencode, and returns any other
    payload as its raw bytes: exactly "treat an unknown encoding such as utf-8 or 8bits as 8bit"
    (FAILURE_MODES 7). We only add tolerance for stray whitespace and quotes around the name.
    """
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    declared = str(part.get("Content-Transfer-Encoding", "")).lower()
    cte = declared.strip(" \t\"'")
    if cte != declared and cte == "base64":
        return _lenient_base64(data)
    if cte != declared and cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _charset_label(part: Message) -> str | None:
    try:
        value = part.get_param("charset")
    except Exception:  # noqa: BLE001 — a malformed parameter list: no declared charset
        return None
    if isinstance(value, tuple):  # RFC 2231 form
        value = value[2]
    return str(value) if value else None


def _is_attachment(part: Message) -> bool:
    disposition = (_header(part, "Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition == "attachment" or part.get_content_type() == "message/rfc822":
        return True
    return _param(part, "filename", "content-disposition")[0] is not None or _param(part, "name")[0] is not None


def _leaves(msg: Message) -> Iterator[tuple[Message, int]]:
    """(part, depth) for every non-multipart part, in order; message/* parts are leaves too.

    Iterative, unlike Message.walk(), so MIME depth costs no stack.
    """
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if part.is_multipart() and part.get_content_maintype() != "message":
            stack.extend((c, depth + 1) for c in reversed(part.get_payload()) if isinstance(c, Message))
        else:
            yield part, depth


def _charset_hint(msg: Message) -> str | None:
    """The first charset any text part declares."""
    return next((cs for part, _ in _leaves(msg) if (cs := _charset_label(part))), None)


_BODY_TYPES = ("text/plain", "text/html")


def _body(part: Message, depth: int = 0) -> tuple[str, bool, bool]:
    """(text, whether it came from text/plain, charset fallback) for the readable body of a part."""
    if depth > MAX_MIME_DEPTH:
        raise ValueError("MIME nesting too deep to read")  # parse_email falls back to headers only
    ctype = part.get_content_type()
    if depth and _is_attachment(part):
        return "", False, False
    if part.get_content_maintype() == "message":  # reached only for a mail that is just a wrapper
        inner = part.get_payload() if ctype == "message/rfc822" else None
        return _body(inner[0], depth + 1) if isinstance(inner, list) and inner else ("", False, False)
    if part.is_multipart():
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if ctype in ("multipart/report", "multipart/signed", "multipart/encrypted"):
            children = children[:1]  # the human-readable part; the rest is machine data or crypto
        bodies = [b for b in (_body(c, depth + 1) for c in children) if b[0].strip()]
        if ctype == "multipart/alternative":
            return next((b for b in bodies if b[1]), bodies[0] if bodies else ("", False, False))
        # mixed, related, …: Apple Mail splits the text around pasted images, so join them all.
        return "\n\n".join(b[0] for b in bodies), any(b[1] for b in bodies), any(b[2] for b in bodies)
    if ctype not in _BODY_TYPES:
        return "", False, False
    text, fell_back = decode_bytes(_transfer_decoded(part), _charset_label(part))
    if ctype == "text/html":
        return html_to_text(text), False, fell_back
    return text, True, fell_back


_EXTENSIONS = {
    "message/rfc822": ".eml", "message/global": ".eml", "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt", "text/rfc822-headers": ".txt", "text/plain": ".txt",
    "text/html": ".html", "text/calendar": ".ics", "image/jpeg": ".jpg", "image/png": ".png",
    "image/gif": ".gif", "application/pdf": ".pdf",
}


def safe_filename(name: str | None, content_type: str, index: int) -> str:
    """A filename without directories or controls, at most 255 characters; invented if missing."""
    name = _one_line(name or "", 10 * MAX_FILENAME)
    name = re.split(r"[/\\]", name)[-1].strip(" .")
    if not name:
        return f"attachment-{index}{_EXTENSIONS.get(content_type, '.bin')}"
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 16 else ""
        name = (stem if ext else name)[: MAX_FILENAME - len(ext) - 1] + (f".{ext}" if ext else "")
    return name[:MAX_FILENAME]


def _attachments(msg: Message, linesep: str, hint: str | None) -> tuple[list[Attachment], bool]:
    """Every part that is not body text, attached mails as whole .eml files.

    Nameless non-text parts (a pasted screenshot, a DSN's delivery-status) are kept too: losing
    them silently would be worse than an odd name.
    """
    found: list[Attachment] = []
    fell_back = False
    for part, depth in _leaves(msg):
        ctype = part.get_content_type()
        if not _is_attachment(part) and ctype in _BODY_TYPES:
            continue
        if depth == 0 and part.get_content_maintype() == "text":
            continue  # a single-part mail is its own body
        if part.get_content_maintype() == "message":
            data = _embedded_message_bytes(part, linesep)
        else:
            data = _transfer_decoded(part)
        name, bad = _param(part, "filename", "content-disposition", hint)
        if name is None:
            name, bad = _param(part, "name", hint=hint)
        fell_back |= bad
        found.append(Attachment(safe_filename(name, ctype, len(found) + 1), ctype, data))
    return found, fell_back


def _embedded_message_bytes(part: Message, linesep: str) -> bytes:
    """The bytes of an attached mail or a DSN's status blocks, which compat32 has parsed into
    sub-messages: write them back."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _transfer_decoded(part)
    policy = email.policy.compat32.clone(linesep=linesep)
    return b"".join(inner.as_bytes(policy=policy) for inner in payload if isinstance(inner, Message))


# --- machine mail -----------------------------------------------------------------------------

_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response)|auto:|"
    r"autosvar|abwesenheitsnotiz|réponse automatique|respuesta automática|自动回复|自動回覆|自動回复|"
    r"自动答复|休假)",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery status notification|returned mail|mail delivery|"
    r"delivery (failure|failed|problem|notification)|non-?delivery|failure notice|"
    r"could not be delivered|mail not delivered|mail system error|failed mail|"
    r"退信|投递失败|无法投递|发送失败|传输失败|未送达|無法傳遞",
    re.IGNORECASE,
)


def _auto_submitted(msg: Message) -> bool:
    """RFC 3834: any Auto-Submitted value but "no" (auto-replied, auto-generated, auto-notified)."""
    value = (_header(msg, "Auto-Submitted") or "").strip().lower()
    return bool(value) and re.split(r"[\s;(]", value)[0] != "no"


def _is_auto_reply(msg: Message, subject: str, auto_submitted: bool) -> bool:
    if auto_submitted:
        return True
    precedence = (_header(msg, "Precedence") or "").strip().lower()
    if re.split(r"[\s;(]", precedence)[0] in ("bulk", "junk", "list", "auto_reply"):
        return True
    # Gmail and Exchange set Auto-Submitted, but QQ Mail sets only its own header (FAILURE_MODES 21).
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Reply", "X-QQ-AUTO-REPLY"):
        value = _header(msg, name)
        if value is not None and value.strip().lower() not in ("no", "false", "0", "off"):
            return True
    return bool(_AUTO_SUBJECT.match(subject))


def _is_bounce(msg: Message, subject: str, envelope_sender: str | None, auto_submitted: bool) -> bool:
    """A delivery failure report, structured (DSN) or free text from a mail server."""
    if msg.get_content_type() in ("multipart/report", "message/delivery-status"):
        return True  # DSN; MDN and ARF reports are machine reports too and must not open tickets
    from_header = _header(msg, "From") or ""
    if re.search(r"mailer-daemon", from_header, re.IGNORECASE):
        return True  # never a person
    if not _BOUNCE_SUBJECT.search(subject):
        return False
    # A bounce-like subject alone is not enough: "Delivery failure" may be a customer's parcel.
    if envelope_sender is None:  # read from a mailbox: the MDA wrote the envelope sender here
        envelope_sender = _header(msg, "Return-Path")
    null_sender = envelope_sender is not None and envelope_sender.strip() in ("", "<>")
    # "postmaster" is also a person's role address, so it counts only with a bounce subject.
    server_from = bool(re.search(r"mailer-daemon|mdaemon|postmaster|mail delivery", from_header, re.IGNORECASE))
    return null_sender or server_from or auto_submitted


class _Compat32Unfolded(Compat32):
    """compat32, but header values read unfolded (RFC 5322 2.2.3).

    compat32 keeps the CRLF inside a folded value, so a folded ``boundary="simple<CRLF> boundary"``
    is never found and the multipart collapses into one blob (5 corpus files).
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return super().header_fetch_parse(name, re.sub(r"\r?\n(?=[ \t])", "", value))


_COMPAT32_UNFOLDED = _Compat32Unfolded()

_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")


def _repaired_header_block(raw: bytes) -> bytes | None:
    """Fold stray lines inside a header block into the header above them, or None if unsure.

    A broken continuation line (lost indent, a literal "\\t") or a line of junk before the first
    header ends the header block for the stdlib, and every header after it (Message-ID, From,
    MIME) falls into the body. We repair only when header fields follow the stray lines.
    """
    parts = re.split(rb"(\r?\n\r?\n)", raw, maxsplit=1)
    if len(parts) < 3:
        return None
    head, sep, body = parts
    lines = head.split(b"\n")
    stray = [
        i for i, line in enumerate(lines)
        if not (_FIELD.match(line) or line[:1] in (b" ", b"\t") or (i == 0 and line.startswith(b"From ")))
    ]
    if not stray or not any(_FIELD.match(line) for line in lines[stray[-1] + 1 :]):
        return None
    if any(lines[i].startswith(b"--") and i > 0 for i in stray):
        return None  # a MIME boundary: the header block really ended, only the blank line is missing
    for i in stray:
        lines[i] = b" " + lines[i]
    return b"\n".join(lines) + sep + body


# --- the parser -------------------------------------------------------------------------------


def parse_email(raw: bytes, *, received_at: datetime, envelope_sender: str | None = None,
                ours: Iterable[str] = ()) -> InboundMessage:
    """Parse one email. Never raises: what cannot be read is flagged "unparseable"; raw is kept.
    `ours`: the addresses it reached us at (the SMTP envelope's recipients, the polled mailbox), never
    among those our answer copies."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return _parse(raw, digest, received_at, envelope_sender, ours=ours)
    except Exception:  # noqa: BLE001 — one bad mail must never stop intake (FAILURE_MODES 7, 14)
        pass
    try:
        # MIME nested past the stack limit still has readable headers, and reading headers does
        # not recurse: keep the Message-ID (deduplication), the sender and the subject.
        return _parse(raw, digest, received_at, envelope_sender, headers_only=True, ours=ours)
    except Exception:  # noqa: BLE001 — the same reason; nothing is left to try but the bytes
        return _unparseable(raw, digest, received_at)


def _read(raw: bytes, headers_only: bool) -> Message:
    parser = BytesParser(policy=_COMPAT32_UNFOLDED)
    msg = parser.parsebytes(raw, headersonly=headers_only)
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects):
        repaired = _repaired_header_block(raw)
        if repaired:
            msg = parser.parsebytes(repaired, headersonly=headers_only)
    return msg


def _parse(
    raw: bytes, digest: str, received_at: datetime, envelope_sender: str | None, *, headers_only: bool = False,
    ours: Iterable[str] = (),
) -> InboundMessage:
    msg = _read(raw, headers_only)
    hint = _charset_hint(msg)
    flags: set[str] = set()

    message_id = normalise_message_id(_header(msg, "Message-ID"))
    if not message_id:
        flags.add("no_message_id")

    sender, placeholder = _sender(msg, envelope_sender, digest, hint)
    if placeholder:
        flags.add("no_sender")

    subject, bad_subject = decode_header_text(_header(msg, "Subject") or "", hint)
    subject = _one_line(subject, MAX_SUBJECT)

    if headers_only or _structure_broken(msg):
        flags.add("unparseable")
        text, bad_body = decode_bytes(_transfer_decoded(msg), None, hint)
        attachments, bad_names = [], False
    else:
        text, _, bad_body = _body(msg)
        attachments, bad_names = _attachments(msg, "\r\n" if b"\r\n" in raw[:4096] else "\n", hint)
    if bad_subject or bad_body or bad_names:
        flags.add("charset_fallback")
    text = strip_quoted(clean_text(text))[:MAX_TEXT]

    auto_submitted = _auto_submitted(msg)
    if _is_auto_reply(msg, subject, auto_submitted):
        flags.add("auto_reply")
    if _is_bounce(msg, subject, envelope_sender, auto_submitted):
        flags.add("bounce")

    references = _message_ids(_header(msg, "References"))[-MAX_REFERENCES:]
    in_reply_to = next(iter(_message_ids(_header(msg, "In-Reply-To"))), None)
    return InboundMessage(
        channel=Channel.EMAIL,
        external_id=_external_id(message_id, digest),
        sender=sender,
        text=text,
        received_at=received_at,
        raw=raw,
        subject=subject,
        attachments=tuple(attachments),
        thread_refs=ThreadRefs(ticket_number(subject), in_reply_to, tuple(references)),
        message_id=message_id if message_id and len(message_id) <= MAX_EXTERNAL_ID else None,
        language=_content_language(msg),
        flags=tuple(f for f in FLAG_ORDER if f in flags),
        cc=_copied(msg, sender, ours),
    )


def _content_language(msg: Message) -> str | None:
    """Content-Language (RFC 3282), when the mailer says "zh-CN" or "en"; otherwise intake reads the
    language off the text's script."""
    tag = str(msg.get("Content-Language") or "").split(",")[0].strip().lower()
    primary = tag.split("-")[0]
    return primary if primary in ("zh", "en") else None


def _external_id(message_id: str | None, digest: str) -> str:
    if not message_id:
        return f"sha256:{digest}"  # same bytes, same id: a redelivery is still a duplicate
    if len(message_id) > MAX_EXTERNAL_ID:
        return "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()
    return message_id


def _structure_broken(msg: Message) -> bool:
    """A multipart whose boundary never occurs: the stdlib leaves its body one undivided blob."""
    return msg.get_content_maintype() == "multipart" and not msg.is_multipart()


def _unparseable(raw: bytes, digest: str, received_at: datetime) -> InboundMessage:
    return InboundMessage(
        channel=Channel.EMAIL,
        external_id=f"sha256:{digest}",
        sender=Sender((Identity(IdentityKind.EMAIL, f"unknown+{digest[:12]}@invalid"),)),
        text=clean_text(decode_bytes(raw[: 4 * MAX_TEXT], None)[0])[:MAX_TEXT],
        received_at=received_at,
        raw=raw,
        flags=("unparseable", "no_message_id", "no_sender"),
    )
