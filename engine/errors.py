"""Request-level errors raised by the engine: a small tree the server maps to status codes in one place.

A command that raises one of these has changed nothing. A broken invariant is not one of these: it is an
AssertionError (a programmer error) that stops the writer before anything is committed.
"""

from __future__ import annotations


class EngineError(Exception):
    """A client's mistake or a refused command; `message` is for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(EngineError):
    """A field is missing or malformed: `violations` lists (field path, why).

    The status sent holds the first violations only when they are many (server/errors.py bounds its size);
    `listed_by` then names where a client reads them all (e.g. "ValidateVersion"), when somewhere does.
    """

    def __init__(self, violations: list[tuple[str, str]], *, listed_by: str = "") -> None:
        assert violations, "InvalidArgument needs at least one violation"
        super().__init__("; ".join(f"{field}: {why}" for field, why in violations))
        self.violations = violations
        self.listed_by = listed_by

    @classmethod
    def field(cls, field: str, why: str) -> InvalidArgument:
        return cls([(field, why)])


class NotFound(EngineError):
    pass


class AlreadyExists(EngineError):
    pass


# Said after "<thing> already exists" when a keyed create met its key made by another request: a client that resent
# what it meant as a retry learns why it is not one (README: the same fields as sent, decimals as written).
MADE_BY_ANOTHER_REQUEST = ", made by another request (a retry sends the same fields as sent first, decimals as written)"


class FailedPrecondition(EngineError):
    """The request is well formed but the state does not allow it (e.g. overlapping contracts)."""


class LimitReached(EngineError):
    """The state holds as much of something as it may (a contract's overrides): RESOURCE_EXHAUSTED, nothing changed."""


class Unimplemented(EngineError):
    """A well-formed request whose behaviour is not built yet; it changed nothing."""


class Repeated(Exception):
    """A command the state already reflects (a retry): `result` is the answer the first call got, rebuilt from
    the state. Nothing changed, so the command is not journaled; it is not an EngineError because the caller
    is answered with success."""

    def __init__(self, result: object) -> None:
        super().__init__("already applied")
        self.result = result
