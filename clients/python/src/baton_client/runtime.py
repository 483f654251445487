"""The agent runtime written in Python: baton asks, the orchestrator's handler does.

``baton serve`` turns each ``AgentRuntime`` call (summarise, replace a history, spawn, assign,
close) into a command on a queue. A :class:`RuntimeHandler` subclass carries them out, and
:func:`serve_runtime` (blocking) or :func:`serve_runtime_async` (asyncio) runs it: it long-polls
the queue, calls the handler, and posts each result back. The orchestrator runs no server.

Semantics are the library's ``AgentRuntime``'s (docs/http.md, "The agent runtime over HTTP"):

* **Errors.** An exception from the handler becomes an error result: :class:`TransientError`,
  ``TimeoutError``, ``ConnectionError`` and a lost connection of httpx are ``transient`` (baton
  tries again within the call's deadline); :class:`UnknownSession` and
  :class:`ContextOverflow` are sent as such (the session is gone; the session must rotate);
  :class:`PermanentError` and every other exception are ``permanent`` (a bug does not pass by
  trying again). ``classify=`` changes the mapping.
* **Spawn keys.** A spawn whose key was seen before returns the session it made without calling
  the handler again, so a spawn repeated after a crash of baton, a lost answer or an expired
  lease never starts a second agent. The keys live in the ``spawn_keys`` mapping: by default a
  dict in memory, which is enough while the orchestrator process lives (baton's restarts
  included). An orchestrator that must survive its own restarts passes a persistent mapping,
  such as :class:`JsonFileSpawnKeys`, and keeps its agents' state likewise.
* **Fresh session ids.** A spawn gets the id baton proposes, unless this runtime already made a
  session under that id (a spawn cut short by a crash of baton, whose id baton never
  recorded, then proposed again for another key): the handler is then offered an id above
  every session the runtime made (as recorded in ``spawn_keys``), which baton accepts.
* **Leases.** A command is leased for ``lease_ms``; a handler slower than that may see it offered
  again: the runner runs each command id once at a time and answers once, with its ``lease``.
  An answer the server no longer wants (404: the call ended; 409: the lease went to another
  consumer) is dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Literal, MutableMapping, cast

import httpx

from . import _requests as R
from .client import AsyncClient, Client
from .errors import ConnectionFailed, Conflict, NotFound, Unavailable
from .models import AgentType, Command, Handoff, NewWorkItem, Summary

__all__ = [
    "ContextOverflow",
    "ErrorKind",
    "JsonFileSpawnKeys",
    "PermanentError",
    "RunnerStats",
    "RuntimeHandler",
    "TransientError",
    "UnknownSession",
    "classify_error",
    "serve_runtime",
    "serve_runtime_async",
]

log = logging.getLogger("baton_client.runtime")

ErrorKind = Literal["transient", "permanent", "unknown_session", "context_overflow"]
# An error message sent to baton is bounded (a handler may raise with a huge text).
_MAX_ERROR_MESSAGE = 1000


class TransientError(Exception):
    """Raise from a handler method for a failure that may pass if tried again (a rate limit, a
    dropped connection)."""


class PermanentError(Exception):
    """Raise from a handler method for a failure that trying again cannot fix."""


class UnknownSession(PermanentError):
    """Raise when the runtime does not know the session (closed, or never spawned)."""


class ContextOverflow(PermanentError):
    """Raise when a request did not fit the model's context window: the session rotates."""


def classify_error(error: BaseException) -> ErrorKind:
    """The default mapping of a handler's exception to the error kind baton is told."""
    if isinstance(error, UnknownSession):
        return "unknown_session"
    if isinstance(error, ContextOverflow):
        return "context_overflow"
    if isinstance(error, PermanentError):
        return "permanent"
    transient = (TransientError, TimeoutError, ConnectionError, httpx.TransportError, ConnectionFailed)
    return "transient" if isinstance(error, transient) else "permanent"


class RuntimeHandler:
    """The agent runtime: subclass it and override the operations your agents support.

    Each method may be a plain ``def`` or an ``async def`` (the latter with
    :func:`serve_runtime_async` only; there, plain methods run on the event loop, so keep them
    quick). Methods of different sessions may run concurrently.
    """

    def summarise(
        self, session: int, purpose: Literal["compaction", "handoff"]
    ) -> Summary | Awaitable[Summary]:
        """A summary of the session's work so far: ``{"text": ..., "tokens": N}``. For
        ``purpose == "handoff"`` the successor starts from it. Not supported by default (baton
        then fails the compaction, or builds the handoff itself)."""
        raise PermanentError("summarise is not supported by this runtime")

    def replace_history(self, session: int, summary: Summary) -> int | Awaitable[int]:
        """Replaces the session's history with ``summary``; returns the tokens in use after."""
        raise PermanentError("replace_history is not supported by this runtime")

    def spawn(self, agent_type: AgentType, key: int, proposed: int) -> int | Awaitable[int]:
        """Starts a fresh session of ``agent_type``; returns its id, new across restarts of
        baton (``proposed``, the id baton offers, is by default). The runner has already
        checked ``key``: this is called once per key."""
        return proposed

    def assign(
        self, session: int, work_item: NewWorkItem, handoff: Handoff | None
    ) -> None | Awaitable[None]:
        """Gives ``work_item`` to ``session``, which continues from ``handoff`` if given."""
        return None

    def close(self, session: int) -> None | Awaitable[None]:
        """Ends the session. Closing a session the runtime no longer knows is not an error."""
        return None


@dataclass
class RunnerStats:
    """What a runner did: commands answered by op, errors sent, answers dropped."""

    answered: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    spawns_reused: int = 0

    def _count(self, table: dict[str, int], op: str) -> None:
        table[op] = table.get(op, 0) + 1


class JsonFileSpawnKeys(MutableMapping[int, int]):
    """Spawn keys kept in a JSON file, rewritten atomically on every change: pass it as
    ``spawn_keys=`` so that an orchestrator restarted with the same file still returns, for a
    key seen before, the session it made."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            with open(self._path, encoding="utf-8") as f:
                raw = json.load(f)
            self._keys = {int(k): int(v) for k, v in raw.items()}
        except FileNotFoundError:
            self._keys = {}

    def _save(self) -> None:
        directory = os.path.dirname(os.path.abspath(self._path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".spawn-keys-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in self._keys.items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def __getitem__(self, key: int) -> int:
        return self._keys[key]

    def __setitem__(self, key: int, value: int) -> None:
        with self._lock:
            self._keys[key] = value
            self._save()

    def __delitem__(self, key: int) -> None:
        with self._lock:
            del self._keys[key]
            self._save()

    def __iter__(self) -> Iterator[int]:
        return iter(dict(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


def _call(handler: RuntimeHandler, command: Command) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The handler method a command calls, and its arguments."""
    c = cast(dict[str, Any], command)
    op = c.get("op")
    if op == "summarise":
        return handler.summarise, (c["session"], c["purpose"])
    if op == "replace_history":
        return handler.replace_history, (c["session"], c["summary"])
    if op == "spawn":
        return handler.spawn, (c["agent_type"], c["key"], c["session"])
    if op == "assign":
        return handler.assign, (c["session"], c["work_item"], c.get("handoff"))
    if op == "close":
        return handler.close, (c["session"],)
    raise PermanentError(f"unknown command op {op!r}")


def _result(op: str, value: Any) -> Any:
    """The ``ok`` body of a command's answer, from what the handler returned."""
    if op == "summarise":
        summary = cast(dict[str, Any], value)
        return {"text": str(summary["text"]), "tokens": int(summary["tokens"])}
    if op == "replace_history":
        return {"tokens": int(value)}
    if op == "spawn":
        return {"session": int(value)}
    return {}


class _Sessions:
    """The session ids this runtime made (the values of its spawn keys). baton proposes an id
    above every id its journal holds, but a spawn cut short by a crash of baton may have made
    a session under an id the journal never recorded, which baton may then propose again for
    another key: such a proposal is replaced by one above every id made here."""

    def __init__(self, made: Iterable[int]) -> None:
        self._made = set(made)
        self._highest = max(self._made, default=0)

    def made(self, session: int) -> None:
        self._made.add(session)
        self._highest = max(self._highest, session)

    def fresh(self, command: Command) -> Command:
        proposed = cast(dict[str, Any], command)["session"]
        if proposed not in self._made:
            return command
        log.info("baton proposed session %s, which this runtime already made", proposed)
        return cast(Command, {**command, "session": self._highest + 1})


def _message(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text[:_MAX_ERROR_MESSAGE]


class _Answer:
    """A command's outcome: ``ok`` or an error of ``kind`` with ``message``."""

    def __init__(self, ok: Any = None, kind: ErrorKind | None = None, message: str = "") -> None:
        self.ok, self.kind, self.message = ok, kind, message


def serve_runtime(
    client: Client,
    handler: RuntimeHandler,
    *,
    stop: threading.Event | None = None,
    spawn_keys: MutableMapping[int, int] | None = None,
    max_commands: int = 16,
    wait_ms: int = 5_000,
    lease_ms: int = 30_000,
    workers: int = 8,
    classify: Callable[[BaseException], ErrorKind] = classify_error,
) -> RunnerStats:
    """Runs ``handler`` as baton's agent runtime until ``stop`` is set (checked between polls,
    so within ``wait_ms``). Commands run on a pool of ``workers`` threads. While the server
    cannot be reached, the runner waits and tries again. Returns what it did."""
    stop = stop or threading.Event()
    keys: MutableMapping[int, int] = spawn_keys if spawn_keys is not None else {}
    stats = RunnerStats()
    sessions = _Sessions(keys.values())
    key_locks: dict[int, threading.Lock] = {}
    guard = threading.Lock()
    in_flight: set[int] = set()

    def run(command: Command) -> _Answer:
        op = cast(str, command.get("op"))
        try:
            if op == "spawn":
                key = cast(int, cast(dict[str, Any], command)["key"])
                with guard:
                    lock = key_locks.setdefault(key, threading.Lock())
                with lock:
                    if key in keys:
                        stats.spawns_reused += 1
                        return _Answer(ok={"session": keys[key]})
                    with guard:
                        command = sessions.fresh(command)
                    session = int(_run_sync(handler, command))
                    with guard:
                        keys[key] = session
                        sessions.made(session)
                    return _Answer(ok={"session": session})
            return _Answer(ok=_result(op, _run_sync(handler, command)))
        except Exception as e:  # the handler's failure becomes baton's error result
            log.warning("runtime command %s failed: %s", op, _message(e))
            return _Answer(kind=classify(e), message=_message(e))

    def answer(command: Command) -> None:
        op = cast(str, command.get("op"))
        try:
            outcome = run(command)
            if _post_sync(client, command, outcome, stop, lease_ms):
                stats._count(stats.answered if outcome.kind is None else stats.errors, op)
            else:
                stats.dropped += 1
        finally:
            with guard:
                in_flight.discard(command["id"])

    backoff = R.BACKOFF_START
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="baton-runtime") as pool:
        while not stop.is_set():
            try:
                commands = client.poll_commands(max=max_commands, wait_ms=wait_ms, lease_ms=lease_ms)
                backoff = R.BACKOFF_START
            except (ConnectionFailed, Unavailable) as e:
                log.info("command poll failed (%s); trying again", e)
                stop.wait(backoff)
                backoff = min(backoff * 2, R.BACKOFF_MAX)
                continue
            for command in commands:
                with guard:
                    if command["id"] in in_flight:
                        continue
                    in_flight.add(command["id"])
                pool.submit(answer, command)
    return stats


def _run_sync(handler: RuntimeHandler, command: Command) -> Any:
    method, args = _call(handler, command)
    value = method(*args)
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise PermanentError("an async handler method needs serve_runtime_async")
    return value


def _post_sync(
    client: Client, command: Command, outcome: _Answer, stop: threading.Event, lease_ms: int
) -> bool:
    """Posts an answer; True when the server took it. Tries again while the server cannot be
    reached, within the lease (after that the command is offered again anyway)."""
    command_id, lease = command["id"], command.get("lease")
    deadline = time.monotonic() + lease_ms / 1000
    backoff = R.BACKOFF_START
    while True:
        try:
            if outcome.kind is None:
                client.send_result(command_id, outcome.ok, lease=lease)
            else:
                client.send_error(command_id, outcome.kind, outcome.message, lease=lease)
            return True
        except (NotFound, Conflict) as e:
            log.info("answer to command %s dropped: %s", command_id, e)
            return False
        except (ConnectionFailed, Unavailable):
            if time.monotonic() > deadline or stop.wait(backoff):
                return False
            backoff = min(backoff * 2, R.BACKOFF_MAX)


async def serve_runtime_async(
    client: AsyncClient,
    handler: RuntimeHandler,
    *,
    stop: asyncio.Event | None = None,
    spawn_keys: MutableMapping[int, int] | None = None,
    max_commands: int = 16,
    wait_ms: int = 20_000,
    lease_ms: int = 30_000,
    concurrency: int = 64,
    classify: Callable[[BaseException], ErrorKind] = classify_error,
) -> RunnerStats:
    """Runs ``handler`` as baton's agent runtime until ``stop`` is set (at once: the pending
    poll is abandoned) or the task is cancelled. Up to ``concurrency`` commands run at once;
    commands under way when it stops are finished and answered first. Returns what it did."""
    stop = stop or asyncio.Event()
    keys: MutableMapping[int, int] = spawn_keys if spawn_keys is not None else {}
    stats = RunnerStats()
    sessions = _Sessions(keys.values())
    key_locks: dict[int, asyncio.Lock] = {}
    in_flight: set[int] = set()
    tasks: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(concurrency)

    async def run(command: Command) -> _Answer:
        op = cast(str, command.get("op"))
        try:
            if op == "spawn":
                key = cast(int, cast(dict[str, Any], command)["key"])
                lock = key_locks.setdefault(key, asyncio.Lock())
                async with lock:
                    if key in keys:
                        stats.spawns_reused += 1
                        return _Answer(ok={"session": keys[key]})
                    session = int(await _run_async(handler, sessions.fresh(command)))
                    keys[key] = session
                    sessions.made(session)
                    return _Answer(ok={"session": session})
            return _Answer(ok=_result(op, await _run_async(handler, command)))
        except Exception as e:  # the handler's failure becomes baton's error result
            log.warning("runtime command %s failed: %s", op, _message(e))
            return _Answer(kind=classify(e), message=_message(e))

    async def answer(command: Command) -> None:
        op = cast(str, command.get("op"))
        try:
            async with slots:
                outcome = await run(command)
                if await _post_async(client, command, outcome, stop, lease_ms):
                    stats._count(stats.answered if outcome.kind is None else stats.errors, op)
                else:
                    stats.dropped += 1
        finally:
            in_flight.discard(command["id"])

    stopped = asyncio.ensure_future(stop.wait())
    backoff = R.BACKOFF_START
    try:
        while not stop.is_set():
            poll = asyncio.ensure_future(
                client.poll_commands(max=max_commands, wait_ms=wait_ms, lease_ms=lease_ms)
            )
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
                break
            try:
                commands = poll.result()
                backoff = R.BACKOFF_START
            except (ConnectionFailed, Unavailable) as e:
                log.info("command poll failed (%s); trying again", e)
                try:
                    await asyncio.wait_for(asyncio.shield(stopped), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, R.BACKOFF_MAX)
                continue
            for command in commands:
                if command["id"] in in_flight:
                    continue
                in_flight.add(command["id"])
                task = asyncio.create_task(answer(command))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        stopped.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return stats


async def _run_async(handler: RuntimeHandler, command: Command) -> Any:
    method, args = _call(handler, command)
    value = method(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _post_async(
    client: AsyncClient, command: Command, outcome: _Answer, stop: asyncio.Event, lease_ms: int
) -> bool:
    command_id, lease = command["id"], command.get("lease")
    deadline = time.monotonic() + lease_ms / 1000
    backoff = R.BACKOFF_START
    while True:
        try:
            if outcome.kind is None:
                await client.send_result(command_id, outcome.ok, lease=lease)
            else:
                await client.send_error(command_id, outcome.kind, outcome.message, lease=lease)
            return True
        except (NotFound, Conflict) as e:
            log.info("answer to command %s dropped: %s", command_id, e)
            return False
        except (ConnectionFailed, Unavailable):
            if time.monotonic() > deadline or stop.is_set():
                return False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, R.BACKOFF_MAX)
