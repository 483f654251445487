"""The issue's "done when": a Python orchestrator, with no Rust code of its own, drives 100
sessions of two agent types through compactions and rotations over HTTP; ``baton serve`` is
killed with SIGKILL mid-run (after rotations happened) and restarted on the same journal; the
orchestrator reconnects and finishes; every work item is then done exactly once, checked from
the event stream (resumed by ``Last-Event-ID`` across the restart) and from the journal (both
``/v1/events`` and ``baton log``).

Nothing sleeps to synchronise: every step waits on an event of the stream or on a response
(with timeouts as a safety net only).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from baton_client import AsyncClient, ConnectionFailed, NotFound, Conflict, ApiError
from conftest import BatonServer, baton_bin
from helpers import WAIT, SimAgents, Watcher, payload_of, running

T = TypeVar("T")

ITEMS = 100
WINDOW = 1000
# Turns of work per item, whatever sessions they take.
TURNS = 8
# Tokens each turn adds, per agent type: "coder" climbs fast and crosses rotate_at (95%)
# straight from below compact_at; "writer" climbs slower, compacts at 80%, and rotates when
# its single allowed compaction is spent.
STEP = {"coder": 290, "writer": 180}
POLICY: dict[str, dict[str, Any]] = {
    "coder": {"compact_at": 0.8, "rotate_at": 0.95, "max_compactions": 3},
    "writer": {"compact_at": 0.8, "rotate_at": 0.95, "max_compactions": 1},
}
# The kill comes once this many rotations have been seen.
KILL_AFTER_ROTATIONS = 10


class Orchestrator:
    """Drives every live session: reports usage turn by turn, waits out compactions, follows
    rotations (their successors arrive as SessionStarted events), and closes a session once its
    work item has had all its turns. State per work item survives a restart of baton, because
    it lives here."""

    def __init__(self, client: AsyncClient, agents: SimAgents, watcher: Watcher) -> None:
        self.client = client
        self.agents = agents
        self.watcher = watcher
        self.turns: Counter[int] = Counter()
        self.types: dict[int, str] = {}
        self.drivers: dict[int, asyncio.Task[None]] = {}
        self.gone: set[int] = set()  # sessions that will take no more turns
        self.compactions: Counter[int] = Counter()
        self.done: Counter[int] = Counter()
        self.failures: list[BaseException] = []
        self.exits: dict[int, str] = {}  # why each driver stopped (for a failure's message)
        self.readings: dict[int, list[tuple[int, str]]] = {}  # per session: (used, phase)
        watcher.on_event(self._on_event)

    def _on_event(self, event: Any) -> None:
        kind, body = payload_of(event)
        if kind == "session_started":
            if body["session"] not in self.drivers:
                task = asyncio.create_task(self.drive(body["session"], body["work_item"]))
                self.drivers[body["session"]] = task
        elif kind == "compaction":
            self.compactions[body["session"]] += 1
        elif kind == "rotation":
            self.gone.add(body["old_session"])
        elif kind == "transition" and body["to"] in ("rotating", "closed"):
            self.gone.add(body["session"])
        elif kind == "recovered":
            outcome = body.get("outcome")
            if isinstance(outcome, dict) and "requeued" in outcome:
                self.gone.add(outcome["requeued"]["session"])
        elif kind == "work_item_done":
            self.done[body["work_item"]] += 1
            self.gone.add(body["session"])

    async def describe_unfinished(self) -> str:
        """What the server and this orchestrator know of the items not done (for a failure)."""
        lines = []
        for item in sorted(set(self.types) - set(self.done))[:10]:
            place = await self.client.get_work_item(item)
            sessions = [s for s, t in self.drivers.items() if self.agents.agents.get(s) and self.agents.agents[s].work_item == item]
            states = [(s, s in self.gone, self.exits.get(s)) for s in sessions]
            events = [payload_of(e)[0] + str(payload_of(e)[1].get("session", "")) for e in self.watcher.events if e.get("work_item") == item]
            lines.append(f"item {item}: {place} turns={self.turns[item]} drivers={states} events={events}")
            for s in sessions:
                lines.append(f"  session {s}: readings {self.readings.get(s)}")
                if s not in self.gone:
                    lines.append(f"  server: {await self.client.get_session(s)}")
                kinds = [payload_of(e) for e in self.watcher.events if e.get("session") == s or payload_of(e)[1].get("session") == s]
                lines.append(f"  events: {kinds}")
        return "\n".join(lines)

    async def again(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call tried again when the connection broke without an answer: the server may have
        died under it (then the retry waits for the restart, and the session is unknown there:
        NotFound), or the connection failed on its own. Repeating a reading or a close is
        harmless: a second close is refused, a second reading of the same size changes nothing
        the first did not."""
        for _ in range(3):
            try:
                return await call()
            except ConnectionFailed:
                continue
        return await call()

    async def drive(self, session: int, item: int) -> None:
        step = STEP[self.types[item]]
        exit = "gone"
        try:
            while session not in self.gone:
                if self.turns[item] >= TURNS:
                    await self.again(lambda: self.client.close_session(session))
                    exit = "closed"
                    return
                agent = self.agents.agents[session]
                agent.used = min(agent.used + step, WINDOW - 10)
                seen = self.compactions[session]
                reading = await self.again(lambda: self.client.report_usage(session, agent.used))
                self.readings.setdefault(session, []).append((agent.used, reading["phase"]))
                self.turns[item] += 1
                if reading["phase"] == "compacting":
                    await self.watcher.wait_for(
                        lambda: self.compactions[session] > seen or session in self.gone,
                        f"compaction of session {session}",
                    )
                elif reading["phase"] != "normal":
                    exit = f"phase {reading['phase']}"
                    return  # rotating (a successor takes over) or closed
        except (ConnectionFailed, NotFound, Conflict) as e:
            # The session ended meanwhile (a restart requeued its item, a rotation took it, a
            # close crossed another): a SessionStarted brings the next one.
            exit = repr(e)
            return
        except ApiError as e:
            exit = repr(e)
            if e.status != 503:
                self.failures.append(e)
        except Exception as e:  # surfaced by the test, never lost in a task
            exit = repr(e)
            self.failures.append(e)
        finally:
            self.exits[session] = exit


async def test_a_python_orchestrator_finishes_every_item_exactly_once_across_a_sigkill(
    server: BatonServer,
) -> None:
    agents = SimAgents(keep=0.3)
    async with server.async_client(retry_connect=WAIT) as client:
        for name in ("coder", "writer"):
            await client.put_agent_type(name, window=WINDOW, policy=POLICY[name])  # type: ignore[arg-type]
        watcher = Watcher(client, after=0)
        orchestrator = Orchestrator(client, agents, watcher)
        items = [
            {"id": i, "agent_type": "coder" if i % 2 else "writer", "text": f"task {i}"}
            for i in range(ITEMS)
        ]
        orchestrator.types = {i["id"]: i["agent_type"] for i in items}  # type: ignore[misc]
        watcher.start()
        async with running(client, agents, wait_ms=5000, lease_ms=10_000):
            results = await client.submit_work_items(items)  # type: ignore[arg-type]
            assert Counter(r["status"] for r in results) == {"created": ITEMS}

            await watcher.wait_for(
                lambda: len([r for r in watcher.of("rotation") if r["success"]]) >= KILL_AFTER_ROTATIONS,
                "rotations before the kill",
            )
            assert len(orchestrator.done) < ITEMS, "the kill must come mid-run"
            rotations_before = len(watcher.of("rotation"))
            seq_before = watcher.stream.last_seq
            server.restart_after_kill()

            # A retry of the whole submission after the restart changes nothing.
            again = await client.submit_work_items(items)  # type: ignore[arg-type]
            assert {r["status"] for r in again} == {"exists"}

            try:
                await watcher.wait_for(
                    lambda: len(orchestrator.done) == ITEMS or bool(orchestrator.failures),
                    "every item done",
                    timeout=120,
                )
            except AssertionError as e:
                raise AssertionError(f"{e}\n{await orchestrator.describe_unfinished()}") from None
        await watcher.stop()
        assert not orchestrator.failures, orchestrator.failures

        # From the event stream, resumed across the restart.
        stream = watcher.events
        seqs = [e["seq"] for e in stream]
        assert seqs == sorted(set(seqs)), "the stream repeated or reordered events"
        assert seq_before is not None and any(s > seq_before for s in seqs)
        assert watcher.of("recovered"), "the restart recovered unfinished items"
        assert set(orchestrator.done) == set(range(ITEMS))
        assert set(orchestrator.done.values()) == {1}, "an item was done twice"
        rotations = [r for r in watcher.of("rotation") if r["success"]]
        compactions = [c for c in watcher.of("compaction") if c["success"]]
        assert rotations_before >= KILL_AFTER_ROTATIONS
        assert {r["agent_type"] for r in rotations} == {"coder", "writer"}
        assert {c["agent_type"] for c in compactions} >= {"writer"}
        assert {r["reason"] for r in rotations} >= {"threshold", "compaction_budget"}

        # From the journal, over HTTP: the same events, with no gap the stream skipped.
        journal = [e async for e in client.journal_events()]
        by_seq = {e["seq"]: e for e in journal}
        for event in stream:
            assert by_seq[event["seq"]]["kind"] == event["kind"]
        journal_done = Counter(payload_of(e)[1]["work_item"] for e in journal if payload_of(e)[0] == "work_item_done")
        assert journal_done == Counter({i: 1 for i in range(ITEMS)})
        streamed_done = {e["seq"] for e in stream if e["kind"] == "work_item_done"}
        assert streamed_done == {e["seq"] for e in journal if e["kind"] == "work_item_done"}
        assert [i["place"] for i in await client.list_work_items(limit=1000)] == ["done"] * ITEMS

    # And from the journal file itself, read by `baton log` beside the live server.
    log = subprocess.run(
        [str(baton_bin()), "log", str(server.journal), "events", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [json.loads(line) for line in log.stdout.splitlines() if line.strip()]
    logged_done = Counter(r["work_item"] for r in rows if r["kind"] == "work_item_done")
    assert logged_done == Counter({i: 1 for i in range(ITEMS)})
    items_log = subprocess.run(
        [str(baton_bin()), "log", str(server.journal), "items", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    places = Counter(json.loads(line)["place"] for line in items_log.stdout.splitlines() if line.strip())
    assert places == {"done": ITEMS}
