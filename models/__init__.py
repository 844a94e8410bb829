"""Plain types and storage shared by every part of paidan. Imports nothing else of ours."""

from models.message import (
    Attachment,
    Channel,
    Identity,
    IdentityKind,
    InboundMessage,
    PublicMessage,
    Receipt,
    Sender,
    ThreadRefs,
    TicketView,
)

__all__ = [
    "Attachment",
    "Channel",
    "Identity",
    "IdentityKind",
    "InboundMessage",
    "PublicMessage",
    "Receipt",
    "Sender",
    "ThreadRefs",
    "TicketView",
]
