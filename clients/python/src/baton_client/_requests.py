"""What the sync and async clients share: each operation as a request description, the
handling of answers, and the client's settings. Neither does any I/O here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import httpx

from .errors import ConnectionFailed, ProtocolError, error_from_response
from .models import NewWorkItem, Policy, UsageReport

#: Seconds a request may take by default (the server's own default deadline is 30 s).
DEFAULT_TIMEOUT = 35.0
#: Seconds without a byte on an event stream before it counts as dropped (the server sends a
#: comment every 15 s).
STREAM_IDLE_TIMEOUT = 45.0
#: The first and the longest pause between reconnection attempts.
BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class Req:
    """One request: method, path under the base URL, query, JSON body, and its read timeout
    when it differs from the client's (long polls)."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    body: Any = None
    read_timeout: float | None = None
    has_body: bool = field(default=False)


def _q(**kwargs: object) -> dict[str, str]:
    """A query string of the arguments that are not None (booleans and numbers as text)."""
    return {k: str(v) for k, v in kwargs.items() if v is not None}


def _seg(value: str | int) -> str:
    """A path segment, escaped."""
    return quote(str(value), safe="")


def token_from(token: str | None) -> str:
    """The bearer token: the argument, or the environment's ``BATON_TOKEN``."""
    token = token if token is not None else os.environ.get("BATON_TOKEN")
    if not token:
        raise ValueError("no token: pass token= or set BATON_TOKEN")
    return token


def headers_for(token: str) -> dict[str, str]:
    """Headers of every request (httpx hides ``authorization`` in its reprs)."""
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def decode(response: httpx.Response) -> Any:
    """The JSON of a successful answer (None for 204); raises the typed error otherwise."""
    if response.status_code >= 400:
        raise error_from_response(response)
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as e:
        raise ProtocolError(f"{response.request.url.path}: the answer is not JSON") from e


def field_of(value: Any, key: str) -> Any:
    """``value[key]`` of an answer, or a :class:`ProtocolError` when it is missing."""
    if not isinstance(value, dict) or key not in value:
        raise ProtocolError(f"the answer has no field {key!r}")
    return value[key]


def transport_error(e: httpx.TransportError) -> ConnectionFailed:
    """A connection failure, named without the request's headers."""
    return ConnectionFailed(f"{type(e).__name__}: {e}")


def event_from(data: str) -> dict[str, Any]:
    """One stream message's JSON object."""
    try:
        value = json.loads(data)
    except ValueError as e:
        raise ProtocolError("an event stream message is not JSON") from e
    if not isinstance(value, dict):
        raise ProtocolError("an event stream message is not a JSON object")
    return value


# Every operation of docs/http.md, in its order.


def list_agent_types() -> Req:
    return Req("GET", "/v1/agent-types")


def get_agent_type(name: str) -> Req:
    return Req("GET", f"/v1/agent-types/{_seg(name)}")


def put_agent_type(
    name: str, window: int, model: str, system_prompt: str, policy: Policy | None
) -> Req:
    body = {"window": window, "model": model, "system_prompt": system_prompt, "policy": policy or {}}
    return Req("PUT", f"/v1/agent-types/{_seg(name)}", body=body, has_body=True)


def submit_work_item(id: int, agent_type: str, text: str) -> Req:
    body = {"id": id, "agent_type": agent_type, "text": text}
    return Req("POST", "/v1/work-items", body=body, has_body=True)


def submit_work_items(items: Sequence[NewWorkItem]) -> Req:
    return Req("POST", "/v1/work-items/batch", body={"items": list(items)}, has_body=True)


def list_work_items(place: str | None, agent_type: str | None, limit: int | None) -> Req:
    return Req("GET", "/v1/work-items", params=_q(place=place, agent_type=agent_type, limit=limit))


def get_work_item(id: int) -> Req:
    return Req("GET", f"/v1/work-items/{_seg(id)}")


def cancel_work_item(id: int) -> Req:
    return Req("POST", f"/v1/work-items/{_seg(id)}/cancel")


def list_sessions(agent_type: str | None, phase: str | None, min_ratio: float | None) -> Req:
    params = _q(agent_type=agent_type, phase=phase, min_ratio=min_ratio)
    return Req("GET", "/v1/sessions", params=params)


def get_session(id: int) -> Req:
    return Req("GET", f"/v1/sessions/{_seg(id)}")


def close_session(id: int) -> Req:
    return Req("POST", f"/v1/sessions/{_seg(id)}/close")


def rotate_session(id: int) -> Req:
    return Req("POST", f"/v1/sessions/{_seg(id)}/rotate")


def report_usage(session: int, used: int, window: int | None, source: str | None) -> Req:
    body: dict[str, Any] = {"used": used}
    if window is not None:
        body["window"] = window
    if source is not None:
        body["source"] = source
    return Req("POST", f"/v1/sessions/{_seg(session)}/usage", body=body, has_body=True)


def report_usages(reports: Sequence[UsageReport]) -> Req:
    return Req("POST", "/v1/usage", body={"reports": list(reports)}, has_body=True)


def list_events(
    after: int | None,
    session: int | None,
    work_item: int | None,
    agent_type: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
) -> Req:
    params = _q(
        after=after,
        session=session,
        work_item=work_item,
        agent_type=agent_type,
        reason=reason,
        since=since,
        until=until,
        limit=limit,
    )
    return Req("GET", "/v1/events", params=params)


def poll_commands(max: int, wait_ms: int, lease_ms: int) -> Req:
    body = {"max": max, "wait_ms": wait_ms, "lease_ms": lease_ms}
    # The server holds the request up to wait_ms: the read timeout allows for it.
    return Req(
        "POST",
        "/v1/runtime/commands/poll",
        body=body,
        has_body=True,
        read_timeout=wait_ms / 1000 + DEFAULT_TIMEOUT,
    )


#: The error kinds a command's answer may carry.
ERROR_KINDS = ("transient", "permanent", "unknown_session", "context_overflow")


def command_result(id: int, ok: Any, lease: int | None) -> Req:
    body: dict[str, Any] = {"ok": ok}
    if lease is not None:
        body["lease"] = lease
    return Req("POST", f"/v1/runtime/commands/{_seg(id)}/result", body=body, has_body=True)


def command_error(id: int, kind: str, message: str, lease: int | None) -> Req:
    if kind not in ERROR_KINDS:
        raise ValueError(f"kind must be one of {ERROR_KINDS}")
    body: dict[str, Any] = {"error": {"kind": kind, "message": message}}
    if lease is not None:
        body["lease"] = lease
    return Req("POST", f"/v1/runtime/commands/{_seg(id)}/result", body=body, has_body=True)
