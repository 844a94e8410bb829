"""Sealing a short secret (a one-time code) so it can wait in the database without being readable there.

The router seals a link code into its outbox row; the email sender opens it while building the mail.
Both hold the same key, derived from the deployment's secret (never stored in the database), so a
copy of the database alone does not give the code away. Pure and stdlib-only: an HMAC-SHA256 key
stream per random nonce, and an HMAC tag that tells a wrong key (or a damaged row) from a right one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

MAX_SEALED_BYTES = 32  # one HMAC-SHA256 block of key stream: plenty for a code


class SealError(ValueError):
    """The sealed text is damaged, or was sealed with another key."""


def seal(secret: str, key: bytes) -> str:
    """`nonce.ciphertext.tag`, hex; a new random nonce each time, so two seals of one code differ."""
    data = secret.encode()
    if not key:
        raise ValueError("sealing needs a key")
    if len(data) > MAX_SEALED_BYTES:
        raise ValueError(f"at most {MAX_SEALED_BYTES} bytes can be sealed")
    nonce = secrets.token_bytes(16)
    sealed = bytes(a ^ b for a, b in zip(data, _stream(key, nonce)))
    return f"{nonce.hex()}.{sealed.hex()}.{_tag(key, nonce, sealed).hex()}"


def unseal(text: str, key: bytes) -> str:
    """What `seal` sealed; SealError when the text is damaged or `key` is not the one it was sealed with."""
    try:
        nonce_hex, sealed_hex, tag_hex = (text or "").split(".")
        nonce, sealed, tag = bytes.fromhex(nonce_hex), bytes.fromhex(sealed_hex), bytes.fromhex(tag_hex)
    except ValueError:
        raise SealError("not a sealed value") from None
    if not key or not hmac.compare_digest(tag, _tag(key, nonce, sealed)):
        raise SealError("sealed with another key, or damaged")
    try:
        return bytes(a ^ b for a, b in zip(sealed, _stream(key, nonce))).decode()
    except UnicodeDecodeError:
        raise SealError("damaged") from None


def _stream(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"stream:" + nonce, hashlib.sha256).digest()


def _tag(key: bytes, nonce: bytes, sealed: bytes) -> bytes:
    return hmac.new(key, b"tag:" + nonce + sealed, hashlib.sha256).digest()[:16]
