"""Typed errors: every error body of ``baton serve`` becomes one exception class.

The server answers every failure as ``{"error": CODE, "message": TEXT}`` (docs/http.md,
"Authentication and errors"). :func:`error_from_response` turns such a response into the class
of its status, so callers catch what they can handle (``except Conflict``) and let the rest
propagate. No exception here ever holds the bearer token: only the status, the server's code and
its message (bounded in length, control characters escaped) are kept.
"""

from __future__ import annotations

import json

import httpx

__all__ = [
    "ApiError",
    "BadRequest",
    "BatonError",
    "Conflict",
    "ConnectionFailed",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from_response",
]

# Error messages come from outside: kept short enough to log, never a whole body.
_MAX_MESSAGE = 1000


def _clean(text: str) -> str:
    """Bounds ``text`` and escapes control characters, so it is safe to print to a terminal."""
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BatonError(Exception):
    """Base class of everything this package raises."""


class ConnectionFailed(BatonError):
    """The server could not be reached, or the connection broke before an answer."""


class ProtocolError(BatonError):
    """The server answered something that is not what docs/http.md says (a body that is not
    JSON, a missing field)."""


class ApiError(BatonError):
    """An error answered by the server: ``status`` (HTTP), ``code`` (the body's ``error``) and
    ``message`` (the body's ``message``)."""

    #: The HTTP status this class stands for (0 for the generic class).
    status_code: int = 0

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = _clean(code)
        self.message = _clean(message)
        super().__init__(f"{status} {self.code}: {self.message}")


class BadRequest(ApiError):
    """400: a malformed body, a wrong type, a value out of range."""

    status_code = 400


class Unauthorized(ApiError):
    """401: no token, or a wrong one."""

    status_code = 401


class NotFound(ApiError):
    """404: an unknown id or path (for a command result: the call already ended)."""

    status_code = 404


class MethodNotAllowed(ApiError):
    """405: a known path with another method."""

    status_code = 405


class Conflict(ApiError):
    """409: the id exists with other content, the item already ended, the journal is off, or a
    command's lease went to another consumer."""

    status_code = 409


class PayloadTooLarge(ApiError):
    """413: a body over the server's ``--max-body-kib``."""

    status_code = 413


class UnsupportedMediaType(ApiError):
    """415: a body that is not ``application/json``."""

    status_code = 415


class InternalError(ApiError):
    """500: a defect of the server's (never expected)."""

    status_code = 500


class Unavailable(ApiError):
    """503: shutting down, the journal failed, or the request timed out."""

    status_code = 503


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InternalError,
        Unavailable,
    )
}


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error response (status 400 or more), read from its JSON body; a
    body that is not the documented shape still gives the class of its status."""
    code = f"http_{response.status_code}"
    message = response.reason_phrase or ""
    try:
        body = json.loads(response.content[:65536])
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            code = body["error"]
        if isinstance(body.get("message"), str):
            message = body["message"]
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(response.status_code, code, message)
