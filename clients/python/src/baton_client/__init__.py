"""baton-client: the Python client of ``baton serve`` (the HTTP contract is docs/http.md).

* :class:`Client` and :class:`AsyncClient`: every resource (agent types, work items, sessions,
  usage reports, events, the runtime command queue), typed errors, and an event iterator that
  resumes with ``Last-Event-ID`` after a dropped connection.
* :class:`RuntimeHandler` with :func:`serve_runtime` / :func:`serve_runtime_async`: the agent
  runtime written in Python, fed by the server's command queue.
"""

from .client import AsyncClient, AsyncEventStream, Client, EventStream
from .errors import (
    ApiError,
    BadRequest,
    BatonError,
    Conflict,
    ConnectionFailed,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from .runtime import (
    ContextOverflow,
    JsonFileSpawnKeys,
    PermanentError,
    RunnerStats,
    RuntimeHandler,
    TransientError,
    UnknownSession,
    classify_error,
    serve_runtime,
    serve_runtime_async,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncEventStream",
    "BadRequest",
    "BatonError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "ContextOverflow",
    "EventStream",
    "InternalError",
    "JsonFileSpawnKeys",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PermanentError",
    "ProtocolError",
    "RunnerStats",
    "RuntimeHandler",
    "TransientError",
    "Unauthorized",
    "UnknownSession",
    "Unavailable",
    "UnsupportedMediaType",
    "classify_error",
    "serve_runtime",
    "serve_runtime_async",
]
