"""What several tests share: simulated agents behind a RuntimeHandler, and an event watcher
that lets a test wait for an event instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from baton_client import AsyncClient, RuntimeHandler, serve_runtime_async
from baton_client.models import AgentType, Event, Handoff, NewWorkItem, Summary

# Safety net for every wait: a wait that needs longer than this is a failure, not a slow pass.
WAIT = 60.0
# The tokens an agent holds right after assign (system prompt and task), before any handoff.
BASE_TOKENS = 100


@dataclass
class Agent:
    """One simulated agent: its work item and the tokens its context holds."""

    agent_type: str
    work_item: int | None = None
    used: int = 0
    closed: bool = False
    handoff: Handoff | None = None


@dataclass
class SimAgents(RuntimeHandler):
    """Agents whose context is a token count: a summary keeps ``keep`` of it; failures can be
    injected per operation (each entry is raised once, in order)."""

    keep: float = 0.3
    agents: dict[int, Agent] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    failures: dict[str, list[Exception]] = field(default_factory=dict)

    def _fail(self, op: str) -> None:
        queue = self.failures.get(op)
        if queue:
            raise queue.pop(0)

    def summarise(self, session: int, purpose: Literal["compaction", "handoff"]) -> Summary:
        self.calls.append(("summarise", session))
        self._fail(f"summarise:{purpose}")
        agent = self.agents[session]
        tokens = max(10, int(agent.used * self.keep))
        return {"text": f"summary of session {session} ({purpose})", "tokens": tokens}

    def replace_history(self, session: int, summary: Summary) -> int:
        self.calls.append(("replace_history", session))
        self._fail("replace_history")
        agent = self.agents[session]
        agent.used = BASE_TOKENS + summary["tokens"]
        return agent.used

    def spawn(self, agent_type: AgentType, key: int, proposed: int) -> int:
        self.calls.append(("spawn", proposed))
        self._fail("spawn")
        self.agents[proposed] = Agent(agent_type=agent_type["name"])
        return proposed

    def assign(self, session: int, work_item: NewWorkItem, handoff: Handoff | None) -> None:
        self.calls.append(("assign", session))
        self._fail("assign")
        agent = self.agents[session]
        agent.work_item = work_item["id"]
        agent.handoff = handoff
        agent.used = BASE_TOKENS + (handoff["tokens"] if handoff else 0)

    def close(self, session: int) -> None:
        self.calls.append(("close", session))
        agent = self.agents.get(session)
        if agent is not None:
            agent.closed = True

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)


def payload_of(event: Event) -> tuple[str, dict[str, Any]]:
    """The FleetEvent's variant name and fields (``{"work_item_done": {...}}``); an event
    whose payload is not such a one-key object comes back under its ``kind``."""
    payload = event.get("payload")
    if isinstance(payload, dict) and len(payload) == 1:
        ((name, body),) = payload.items()
        if isinstance(body, dict):
            return name, body
    return event["kind"], payload if isinstance(payload, dict) else {}


class Watcher:
    """Reads the event stream into ``events`` and wakes waiters on each event."""

    def __init__(self, client: AsyncClient, after: int | None = 0) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Condition()
        self.stream = client.stream_events(after=after)
        self._task: asyncio.Task[None] | None = None
        self._hooks: list[Callable[[Event], None]] = []

    def on_event(self, hook: Callable[[Event], None]) -> None:
        self._hooks.append(hook)

    async def _run(self) -> None:
        async for event in self.stream:
            for hook in self._hooks:
                hook(event)
            async with self.changed:
                self.events.append(event)
                self.changed.notify_all()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.stream.aclose()

    def of(self, name: str) -> list[dict[str, Any]]:
        """The bodies of every event of this FleetEvent variant seen so far."""
        return [body for kind, body in map(payload_of, self.events) if kind == name]

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Waits until ``predicate()`` holds (checked on every event)."""

        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            kinds = [payload_of(e)[0] for e in self.events[-20:]]
            raise AssertionError(f"timed out waiting for {what}; last events: {kinds}") from None

    async def first(self, name: str, match: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """Waits for the first event of variant ``name`` whose body matches."""
        await self.wait_for(lambda: any(match(b) for b in self.of(name)), f"a {name} event")
        return next(b for b in self.of(name) if match(b))


@contextlib.asynccontextmanager
async def running(client: AsyncClient, handler: RuntimeHandler, **kwargs: Any) -> AsyncIterator[asyncio.Event]:
    """Runs ``handler`` as the server's runtime for the block; yields the stop event."""
    stop = asyncio.Event()
    kwargs.setdefault("wait_ms", 2000)
    task = asyncio.create_task(serve_runtime_async(client, handler, stop=stop, **kwargs))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


@contextlib.asynccontextmanager
async def watching(client: AsyncClient, after: int | None = 0) -> AsyncIterator[Watcher]:
    watcher = Watcher(client, after)
    watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()
