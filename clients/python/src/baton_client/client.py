"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), one method per
operation of docs/http.md, the same names and arguments in both.

Every failure is an exception of :mod:`baton_client.errors`: the typed class of the server's
error body (``NotFound``, ``Conflict``, ...), or ``ConnectionFailed`` when the server could not be
reached. With ``retry_connect=SECONDS`` a request whose connection is refused is tried again
(with backoff) for that long: such a request never reached the server, so trying again is safe
for every operation, and an orchestrator rides out a restart of ``baton serve``.

The token comes from ``token=`` or the environment's ``BATON_TOKEN``; it is sent with every
request and shown nowhere (``repr`` of a client names its URL only).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, AsyncIterator, Iterator, Sequence, cast

import httpx

from . import _requests as R
from ._sse import SseDecoder
from .errors import ApiError, Unavailable, error_from_response
from .models import (
    AgentType,
    BatchResult,
    Command,
    Event,
    EventPage,
    NewWorkItem,
    Policy,
    Reading,
    Session,
    UsageReport,
    UsageResult,
    WorkItem,
)

__all__ = ["AsyncClient", "AsyncEventStream", "Client", "EventStream"]


class _Settings:
    """What both clients keep: the URL, the timeouts and the retry window (never the token)."""

    def __init__(self, base_url: str, timeout: float, retry_connect: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_connect = retry_connect

    def timeout_for(self, req: R.Req) -> httpx.Timeout:
        read = req.read_timeout if req.read_timeout is not None else self.timeout
        return httpx.Timeout(self.timeout, read=read)

    def stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=R.STREAM_IDLE_TIMEOUT)


def _limits() -> httpx.Limits:
    """Connection pool limits: idle connections are dropped after 2 s, well before the server
    closes them (actix-web's keep-alive is 5 s), so a request never goes out on a connection
    the server is closing at that moment (which would fail it without an answer)."""
    return httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0)


def _stream_headers(last_id: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    return headers


def _retryable_stream_error(e: ApiError) -> bool:
    """A stream refused with 503 (shutting down, timed out) is worth reconnecting to."""
    return isinstance(e, Unavailable)


class Client:
    """The blocking client. Use it as a context manager, or call :meth:`close`.

    >>> with Client("http://127.0.0.1:7070") as baton:      # doctest: +SKIP
    ...     baton.submit_work_item(1, "coder", "fix the bug")
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = R.DEFAULT_TIMEOUT,
        retry_connect: float = 0.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(base_url, timeout, retry_connect)
        self._http = httpx.Client(
            base_url=self._settings.base_url,
            headers=R.headers_for(R.token_from(token)),
            timeout=timeout,
            transport=transport,
            limits=_limits(),
        )

    @property
    def base_url(self) -> str:
        """The server's URL."""
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    # Plumbing.

    def _send(self, req: R.Req) -> Any:
        deadline = time.monotonic() + self._settings.retry_connect
        backoff = R.BACKOFF_START
        while True:
            try:
                response = self._http.request(
                    req.method,
                    req.path,
                    params=req.params,
                    json=req.body if req.has_body else None,
                    timeout=self._settings.timeout_for(req),
                )
                return R.decode(response)
            except httpx.ConnectError as e:
                if time.monotonic() + backoff > deadline:
                    raise R.transport_error(e) from None
            except httpx.TransportError as e:
                raise R.transport_error(e) from None
            time.sleep(backoff)
            backoff = min(backoff * 2, R.BACKOFF_MAX)

    def request(self, method: str, path: str, *, json: Any = None, **params: Any) -> Any:
        """Any request (for what the methods below do not cover); errors as for the others."""
        return self._send(R.Req(method, path, R._q(**params), json, has_body=json is not None))

    # Agent types.

    def list_agent_types(self) -> list[AgentType]:
        """Every agent type."""
        return cast(list[AgentType], R.field_of(self._send(R.list_agent_types()), "agent_types"))

    def get_agent_type(self, name: str) -> AgentType:
        """One agent type (``NotFound`` if unknown)."""
        return cast(AgentType, self._send(R.get_agent_type(name)))

    def put_agent_type(
        self,
        name: str,
        *,
        window: int,
        model: str = "",
        system_prompt: str = "",
        policy: Policy | None = None,
    ) -> AgentType:
        """Creates an agent type, or updates its policy (another window, model or prompt is
        ``Conflict``); the policy applies to every reading from then on."""
        req = R.put_agent_type(name, window, model, system_prompt, policy)
        return cast(AgentType, self._send(req))

    # Work items.

    def submit_work_item(self, id: int, agent_type: str, text: str) -> WorkItem:
        """Submits a work item; the same id and content again is a harmless retry, the same id
        with other content is ``Conflict``."""
        return cast(WorkItem, self._send(R.submit_work_item(id, agent_type, text)))

    def submit_work_items(self, items: Sequence[NewWorkItem]) -> list[BatchResult]:
        """Submits up to 1,000 work items; one result per item, in order."""
        return cast(list[BatchResult], R.field_of(self._send(R.submit_work_items(items)), "results"))

    def list_work_items(
        self, *, place: str | None = None, agent_type: str | None = None, limit: int | None = None
    ) -> list[WorkItem]:
        """Work items in id order, filtered."""
        answer = self._send(R.list_work_items(place, agent_type, limit))
        return cast(list[WorkItem], R.field_of(answer, "work_items"))

    def get_work_item(self, id: int) -> WorkItem:
        """One work item."""
        return cast(WorkItem, self._send(R.get_work_item(id)))

    def cancel_work_item(self, id: int) -> WorkItem:
        """Cancels a work item (it ends ``dead``, reason ``cancelled``); ``Conflict`` when it
        already ended."""
        return cast(WorkItem, self._send(R.cancel_work_item(id)))

    # Sessions.

    def list_sessions(
        self,
        *,
        agent_type: str | None = None,
        phase: str | None = None,
        min_ratio: float | None = None,
    ) -> list[Session]:
        """Sessions in id order, filtered."""
        answer = self._send(R.list_sessions(agent_type, phase, min_ratio))
        return cast(list[Session], R.field_of(answer, "sessions"))

    def get_session(self, id: int) -> Session:
        """One session, with its recent readings."""
        return cast(Session, self._send(R.get_session(id)))

    def close_session(self, id: int) -> Session:
        """Closes a session: its work item is done."""
        return cast(Session, self._send(R.close_session(id)))

    def rotate_session(self, id: int) -> Session:
        """Rotates a session now (reason ``manual``)."""
        return cast(Session, self._send(R.rotate_session(id)))

    # Usage.

    def report_usage(
        self, session: int, used: int, *, window: int | None = None, source: str | None = None
    ) -> Reading:
        """Reports one session's tokens in use; the answer says what it does now."""
        return cast(Reading, self._send(R.report_usage(session, used, window, source)))

    def report_usages(self, reports: Sequence[UsageReport]) -> list[UsageResult]:
        """Reports for many sessions in one request (up to 10,000); one result each, in order;
        an unknown session's result has ``error`` and does not fail the others."""
        return cast(list[UsageResult], R.field_of(self._send(R.report_usages(reports)), "results"))

    # Events.

    def list_events(
        self,
        *,
        after: int | None = None,
        session: int | None = None,
        work_item: int | None = None,
        agent_type: str | None = None,
        reason: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> EventPage:
        """One page of the journal's event log (``Conflict`` without a journal)."""
        req = R.list_events(after, session, work_item, agent_type, reason, since, until, limit)
        return cast(EventPage, self._send(req))

    def journal_events(self, *, after: int = 0, **filters: Any) -> Iterator[Event]:
        """Every event of the journal log after ``after``, page by page, up to now."""
        while True:
            page = self.list_events(after=after, limit=1000, **filters)
            yield from page["events"]
            if not page["events"] or page["next_after"] <= after:
                return
            after = page["next_after"]

    def stream_events(self, *, after: int | None = None, reconnect: bool = True) -> EventStream:
        """The live event stream: every event after sequence number ``after`` (None: from now
        on), then each one as it becomes durable. A dropped connection is resumed with
        ``Last-Event-ID`` (no gap, no duplicate) until the stream is closed, unless
        ``reconnect`` is False."""
        return EventStream(self, after, reconnect)

    # The runtime command queue.

    def poll_commands(
        self, *, max: int = 16, wait_ms: int = 20_000, lease_ms: int = 30_000
    ) -> list[Command]:
        """Takes up to ``max`` commands, waiting up to ``wait_ms`` for the first; each is leased
        for ``lease_ms``."""
        answer = self._send(R.poll_commands(max, wait_ms, lease_ms))
        return cast(list[Command], R.field_of(answer, "commands"))

    def stream_commands(
        self, *, lease_ms: int | None = None, max_outstanding: int | None = None
    ) -> Iterator[Command]:
        """Commands as they come, over server-sent events, each leased to this stream for
        ``lease_ms``; the server sends at most ``max_outstanding`` unanswered ones. A dropped
        stream reconnects and gets the commands still pending. Close the iterator (``close()``)
        to stop."""
        params = R._q(lease_ms=lease_ms, max_outstanding=max_outstanding)
        for _, data in self._sse("/v1/runtime/commands/stream", params, None, True, False):
            yield cast(Command, R.event_from(data))

    def send_result(self, command: int, ok: Any, *, lease: int | None = None) -> None:
        """Answers a command with its result (``NotFound``: unknown, already answered, or its
        call ended; ``Conflict``: ``lease`` was given and the command is now leased to another
        consumer; ``BadRequest``: ``ok`` has the wrong shape for the command's op)."""
        self._send(R.command_result(command, ok, lease))

    def send_error(
        self, command: int, kind: str, message: str, *, lease: int | None = None
    ) -> None:
        """Answers a command with an error: ``transient`` (retried within the call's
        deadline), ``permanent``, ``unknown_session`` or ``context_overflow``."""
        self._send(R.command_error(command, kind, message, lease))

    # Other paths.

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3 document."""
        return cast(dict[str, Any], self._send(R.Req("GET", "/openapi.json")))

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        try:
            response = self._http.get("/metrics")
        except httpx.TransportError as e:
            raise R.transport_error(e) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.text

    # Server-sent events with reconnection.

    def _sse(
        self,
        path: str,
        params: dict[str, str],
        last_id: int | None,
        reconnect: bool,
        resume: bool = True,
    ) -> Iterator[tuple[int | None, str]]:
        """Messages of a stream as (id, data); reconnects when the connection drops, with
        ``Last-Event-ID`` = the last id seen (or the given one) when ``resume``."""
        backoff = R.BACKOFF_START
        while True:
            try:
                with self._http.stream(
                    "GET",
                    path,
                    params=params,
                    headers=_stream_headers(last_id),
                    timeout=self._settings.stream_timeout(),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = error_from_response(response)
                        if not (reconnect and _retryable_stream_error(error)):
                            raise error
                    else:
                        decoder = SseDecoder()
                        for line in response.iter_lines():
                            message = decoder.feed(line)
                            if message is None:
                                continue
                            if resume and message.id is not None and message.id.isdigit():
                                last_id = int(message.id)
                            backoff = R.BACKOFF_START
                            yield last_id, message.data
            except httpx.TransportError as e:
                if not reconnect:
                    raise R.transport_error(e) from None
            if not reconnect:
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, R.BACKOFF_MAX)


class EventStream:
    """An iterator of :class:`Event` over the server's stream, resuming after drops.
    ``last_seq`` is the sequence number of the last event yielded: pass it as ``after=`` to a
    later stream (another process, after a restart) to go on where this one stopped."""

    def __init__(self, client: Client, after: int | None, reconnect: bool) -> None:
        self.last_seq = after
        self._messages = client._sse("/v1/events/stream", {}, after, reconnect)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while True:
            _, data = next(self._messages)
            event = cast(Event, R.event_from(data))
            seq = event.get("seq")
            if isinstance(seq, int) and self.last_seq is not None and seq <= self.last_seq:
                continue  # already yielded: never a duplicate
            if isinstance(seq, int):
                self.last_seq = seq
            return event

    def close(self) -> None:
        """Closes the connection."""
        cast(Any, self._messages).close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio client: the same methods as :class:`Client`, as coroutines. Use it as an
    async context manager, or await :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = R.DEFAULT_TIMEOUT,
        retry_connect: float = 0.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(base_url, timeout, retry_connect)
        self._http = httpx.AsyncClient(
            base_url=self._settings.base_url,
            headers=R.headers_for(R.token_from(token)),
            timeout=timeout,
            transport=transport,
            limits=_limits(),
        )

    @property
    def base_url(self) -> str:
        """The server's URL."""
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def _send(self, req: R.Req) -> Any:
        deadline = time.monotonic() + self._settings.retry_connect
        backoff = R.BACKOFF_START
        while True:
            try:
                response = await self._http.request(
                    req.method,
                    req.path,
                    params=req.params,
                    json=req.body if req.has_body else None,
                    timeout=self._settings.timeout_for(req),
                )
                return R.decode(response)
            except httpx.ConnectError as e:
                if time.monotonic() + backoff > deadline:
                    raise R.transport_error(e) from None
            except httpx.TransportError as e:
                raise R.transport_error(e) from None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, R.BACKOFF_MAX)

    async def request(self, method: str, path: str, *, json: Any = None, **params: Any) -> Any:
        """Any request (for what the methods below do not cover); errors as for the others."""
        req = R.Req(method, path, R._q(**params), json, has_body=json is not None)
        return await self._send(req)

    async def list_agent_types(self) -> list[AgentType]:
        """Every agent type."""
        answer = await self._send(R.list_agent_types())
        return cast(list[AgentType], R.field_of(answer, "agent_types"))

    async def get_agent_type(self, name: str) -> AgentType:
        """One agent type."""
        return cast(AgentType, await self._send(R.get_agent_type(name)))

    async def put_agent_type(
        self,
        name: str,
        *,
        window: int,
        model: str = "",
        system_prompt: str = "",
        policy: Policy | None = None,
    ) -> AgentType:
        """Creates an agent type, or updates its policy."""
        req = R.put_agent_type(name, window, model, system_prompt, policy)
        return cast(AgentType, await self._send(req))

    async def submit_work_item(self, id: int, agent_type: str, text: str) -> WorkItem:
        """Submits a work item (idempotent by id and content)."""
        return cast(WorkItem, await self._send(R.submit_work_item(id, agent_type, text)))

    async def submit_work_items(self, items: Sequence[NewWorkItem]) -> list[BatchResult]:
        """Submits up to 1,000 work items; one result per item, in order."""
        answer = await self._send(R.submit_work_items(items))
        return cast(list[BatchResult], R.field_of(answer, "results"))

    async def list_work_items(
        self, *, place: str | None = None, agent_type: str | None = None, limit: int | None = None
    ) -> list[WorkItem]:
        """Work items in id order, filtered."""
        answer = await self._send(R.list_work_items(place, agent_type, limit))
        return cast(list[WorkItem], R.field_of(answer, "work_items"))

    async def get_work_item(self, id: int) -> WorkItem:
        """One work item."""
        return cast(WorkItem, await self._send(R.get_work_item(id)))

    async def cancel_work_item(self, id: int) -> WorkItem:
        """Cancels a work item."""
        return cast(WorkItem, await self._send(R.cancel_work_item(id)))

    async def list_sessions(
        self,
        *,
        agent_type: str | None = None,
        phase: str | None = None,
        min_ratio: float | None = None,
    ) -> list[Session]:
        """Sessions in id order, filtered."""
        answer = await self._send(R.list_sessions(agent_type, phase, min_ratio))
        return cast(list[Session], R.field_of(answer, "sessions"))

    async def get_session(self, id: int) -> Session:
        """One session, with its recent readings."""
        return cast(Session, await self._send(R.get_session(id)))

    async def close_session(self, id: int) -> Session:
        """Closes a session: its work item is done."""
        return cast(Session, await self._send(R.close_session(id)))

    async def rotate_session(self, id: int) -> Session:
        """Rotates a session now (reason ``manual``)."""
        return cast(Session, await self._send(R.rotate_session(id)))

    async def report_usage(
        self, session: int, used: int, *, window: int | None = None, source: str | None = None
    ) -> Reading:
        """Reports one session's tokens in use."""
        return cast(Reading, await self._send(R.report_usage(session, used, window, source)))

    async def report_usages(self, reports: Sequence[UsageReport]) -> list[UsageResult]:
        """Reports for many sessions in one request."""
        answer = await self._send(R.report_usages(reports))
        return cast(list[UsageResult], R.field_of(answer, "results"))

    async def list_events(
        self,
        *,
        after: int | None = None,
        session: int | None = None,
        work_item: int | None = None,
        agent_type: str | None = None,
        reason: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> EventPage:
        """One page of the journal's event log."""
        req = R.list_events(after, session, work_item, agent_type, reason, since, until, limit)
        return cast(EventPage, await self._send(req))

    async def journal_events(self, *, after: int = 0, **filters: Any) -> AsyncIterator[Event]:
        """Every event of the journal log after ``after``, page by page, up to now."""
        while True:
            page = await self.list_events(after=after, limit=1000, **filters)
            for event in page["events"]:
                yield event
            if not page["events"] or page["next_after"] <= after:
                return
            after = page["next_after"]

    def stream_events(
        self, *, after: int | None = None, reconnect: bool = True
    ) -> AsyncEventStream:
        """The live event stream, resumed with ``Last-Event-ID`` after drops (see
        :meth:`Client.stream_events`)."""
        return AsyncEventStream(self, after, reconnect)

    async def poll_commands(
        self, *, max: int = 16, wait_ms: int = 20_000, lease_ms: int = 30_000
    ) -> list[Command]:
        """Takes up to ``max`` commands, waiting up to ``wait_ms`` for the first."""
        answer = await self._send(R.poll_commands(max, wait_ms, lease_ms))
        return cast(list[Command], R.field_of(answer, "commands"))

    async def stream_commands(
        self, *, lease_ms: int | None = None, max_outstanding: int | None = None
    ) -> AsyncIterator[Command]:
        """Commands as they come, over server-sent events (see :meth:`Client.stream_commands`)."""
        params = R._q(lease_ms=lease_ms, max_outstanding=max_outstanding)
        async for _, data in self._sse("/v1/runtime/commands/stream", params, None, True, False):
            yield cast(Command, R.event_from(data))

    async def send_result(self, command: int, ok: Any, *, lease: int | None = None) -> None:
        """Answers a command with its result (see :meth:`Client.send_result`)."""
        await self._send(R.command_result(command, ok, lease))

    async def send_error(
        self, command: int, kind: str, message: str, *, lease: int | None = None
    ) -> None:
        """Answers a command with an error (see :meth:`Client.send_error`)."""
        await self._send(R.command_error(command, kind, message, lease))

    async def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3 document."""
        return cast(dict[str, Any], await self._send(R.Req("GET", "/openapi.json")))

    async def metrics(self) -> str:
        """The Prometheus text exposition."""
        try:
            response = await self._http.get("/metrics")
        except httpx.TransportError as e:
            raise R.transport_error(e) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.text

    async def _sse(
        self,
        path: str,
        params: dict[str, str],
        last_id: int | None,
        reconnect: bool,
        resume: bool = True,
    ) -> AsyncIterator[tuple[int | None, str]]:
        backoff = R.BACKOFF_START
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    path,
                    params=params,
                    headers=_stream_headers(last_id),
                    timeout=self._settings.stream_timeout(),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = error_from_response(response)
                        if not (reconnect and _retryable_stream_error(error)):
                            raise error
                    else:
                        decoder = SseDecoder()
                        async for line in response.aiter_lines():
                            message = decoder.feed(line)
                            if message is None:
                                continue
                            if resume and message.id is not None and message.id.isdigit():
                                last_id = int(message.id)
                            backoff = R.BACKOFF_START
                            yield last_id, message.data
            except httpx.TransportError as e:
                if not reconnect:
                    raise R.transport_error(e) from None
            if not reconnect:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, R.BACKOFF_MAX)


class AsyncEventStream:
    """The async iterator of :class:`Event` (see :class:`EventStream`)."""

    def __init__(self, client: AsyncClient, after: int | None, reconnect: bool) -> None:
        self.last_seq = after
        self._messages = client._sse("/v1/events/stream", {}, after, reconnect)

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            _, data = await self._messages.__anext__()
            event = cast(Event, R.event_from(data))
            seq = event.get("seq")
            if isinstance(seq, int) and self.last_seq is not None and seq <= self.last_seq:
                continue
            if isinstance(seq, int):
                self.last_seq = seq
            return event

    async def aclose(self) -> None:
        """Closes the connection."""
        await cast(Any, self._messages).aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

