"""The small exception hierarchy every layer shares; each edge maps these to its own protocol's answer
(SMTP reply code, HTTP status with a JSON body, a Telegram message)."""


class PaidanError(Exception):
    """Base of every error paidan raises on purpose."""


class StorageUnavailable(PaidanError):
    """The database could not commit; nothing was written. Edges answer 'try again later' (451, 503)."""


class NotFound(PaidanError):
    """A ticket, agent or customer that does not exist."""


class IllegalTransition(PaidanError):
    """A ticket state change the state machine does not allow."""

    def __init__(self, ticket_number: str, from_state: str, to_state: str, allowed: frozenset[str]):
        self.ticket_number, self.from_state, self.to_state = ticket_number, from_state, to_state
        self.allowed = allowed
        choices = ", ".join(sorted(allowed)) or "nothing (terminal state)"
        super().__init__(
            f"ticket {ticket_number} cannot go from {from_state!r} to {to_state!r}; "
            f"from {from_state!r} it can go to: {choices}"
        )


class InvalidInput(PaidanError):
    """Input we refuse; ``field`` names what was wrong so each edge can point at it."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


class InvalidMessage(InvalidInput):
    """Input that cannot become a message."""


class ActionRefused(PaidanError):
    """An agent action the rules do not allow (not their ticket, not an agent, wrong state)."""


class SurveyClosed(ActionRefused):
    """An answer to a satisfaction survey that came after its answer window closed."""
