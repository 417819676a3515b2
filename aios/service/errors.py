"""The service's refusals: a request turned down before (or instead of) becoming a syscall.

Its own module so the routes (``app``, ``openai_api``) raise the same error without importing each
other.
"""

from __future__ import annotations

from pydantic import ValidationError


class ServiceError(Exception):
    """A request refused before (or instead of) becoming a syscall: an HTTP status and a type."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param


def invalid(exc: ValidationError) -> ServiceError:
    """422 naming the first bad field (all of them in the message)."""
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"])
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
    return ServiceError(422, "InvalidRequest", problems, param=where or None)
