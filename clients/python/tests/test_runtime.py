"""The runtime handler runners against a real ``baton serve``: results, transient and permanent
errors, spawn keys across a SIGKILL of the server, the blocking runner."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Literal

import httpx

from baton_client import (
    AsyncClient,
    ConnectionFailed,
    JsonFileSpawnKeys,
    PermanentError,
    TransientError,
    classify_error,
    serve_runtime,
)
from baton_client.models import AgentType, Summary
from helpers import WAIT, SimAgents, running, watching

WINDOW = 1000


async def start_one(aclient: AsyncClient, events, policy: dict | None = None) -> int:
    await aclient.put_agent_type("coder", window=WINDOW, policy=policy or {})  # type: ignore[arg-type]
    await aclient.submit_work_item(1, "coder", "task")
    started = await events.first("session_started", lambda b: b["work_item"] == 1)
    return int(started["session"])


async def test_a_transient_error_is_retried_within_the_deadline(aclient: AsyncClient) -> None:
    agents = SimAgents(
        failures={
            "spawn": [TransientError("no capacity yet")],
            "summarise:handoff": [TransientError("rate limited")],
        }
    )
    async with running(aclient, agents), watching(aclient) as events:
        s = await start_one(aclient, events)
        assert agents.count("spawn") == 2, "the start's spawn was tried again"
        agents.agents[s].used = 990
        assert (await aclient.report_usage(s, 990))["phase"] == "rotating"
        rotation = await events.first("rotation", lambda b: b["old_session"] == s)
        assert rotation["success"] and rotation["handoff_fallback"] is False
        assert agents.calls.count(("summarise", s)) == 2


async def test_a_transient_compaction_error_fails_that_compaction(aclient: AsyncClient) -> None:
    # As in the library, a compaction is not retried: it fails, and the policy decides.
    agents = SimAgents(failures={"summarise:compaction": [TransientError("rate limited")]})
    async with running(aclient, agents), watching(aclient) as events:
        s = await start_one(aclient, events)
        agents.agents[s].used = 850
        assert (await aclient.report_usage(s, 850))["phase"] == "compacting"
        record = await events.first("compaction", lambda b: b["session"] == s)
        assert not record["success"] and "rate limited" in (record["error"] or "")
        assert agents.calls.count(("summarise", s)) == 1


async def test_a_permanent_handoff_error_falls_back_to_batons_handoff(aclient: AsyncClient) -> None:
    agents = SimAgents(failures={"summarise:handoff": [PermanentError("cannot summarise")]})
    async with running(aclient, agents), watching(aclient) as events:
        s = await start_one(aclient, events)
        agents.agents[s].used = 990
        assert (await aclient.report_usage(s, 990))["phase"] == "rotating"
        rotation = await events.first("rotation", lambda b: b["old_session"] == s)
        assert rotation["success"] and rotation["handoff_fallback"] is True
        assert agents.calls.count(("summarise", s)) == 1
        successor = agents.agents[rotation["new_session"]]
        assert successor.handoff is not None and successor.handoff["fallback"] is True


async def test_an_unexpected_exception_is_permanent(aclient: AsyncClient) -> None:
    agents = SimAgents(failures={"replace_history": [ValueError("bug in the handler")]})
    async with running(aclient, agents), watching(aclient) as events:
        s = await start_one(aclient, events)
        agents.agents[s].used = 850
        await aclient.report_usage(s, 850)
        record = await events.first("compaction", lambda b: b["session"] == s)
        assert not record["success"] and "bug in the handler" in (record["error"] or "")
        assert agents.calls.count(("replace_history", s)) == 1
    assert classify_error(ValueError()) == "permanent"
    assert classify_error(TimeoutError()) == "transient"
    assert classify_error(httpx.ConnectError("refused")) == "transient"
    assert classify_error(ConnectionFailed("gone")) == "transient"


class SlowSpawn(SimAgents):
    """Spawn waits until the test releases it (the server is killed meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawning = asyncio.Event()
        self.release = asyncio.Event()

    async def spawn(self, agent_type: AgentType, key: int, proposed: int) -> int:  # type: ignore[override]
        session = super().spawn(agent_type, key, proposed)
        self.spawning.set()
        await self.release.wait()
        return session


async def test_a_spawn_key_seen_before_returns_its_session_and_ids_stay_fresh_across_a_sigkill(
    server, tmp_path: Path
) -> None:
    agents = SlowSpawn()
    keys = JsonFileSpawnKeys(tmp_path / "spawn-keys.json")
    async with server.async_client(retry_connect=WAIT) as aclient:
        await aclient.put_agent_type("coder", window=WINDOW)
        async with running(aclient, agents, spawn_keys=keys), watching(aclient) as events:
            await aclient.submit_work_item(1, "coder", "task")
            await asyncio.wait_for(agents.spawning.wait(), WAIT)
            first = next(s for op, s in agents.calls if op == "spawn")
            server.restart_after_kill()  # same address and journal
            agents.release.set()
            started = await events.first("session_started", lambda b: b["work_item"] == 1)
            assert started["session"] == first
            assert agents.count("spawn") == 1
            assert (await aclient.get_work_item(1))["session"] == first
            # The restarted server never recorded `first`: a new key may be offered that id
            # again, and must get another.
            await aclient.submit_work_item(2, "coder", "after the restart")
            second = await events.first("session_started", lambda b: b["work_item"] == 2)
            assert second["session"] != first
            assert (await aclient.get_work_item(2))["session"] == second["session"]
    assert dict(JsonFileSpawnKeys(tmp_path / "spawn-keys.json")) == dict(keys)
    assert first in dict(keys).values()


def test_the_blocking_runner_serves_the_queue_until_stopped(server) -> None:
    agents = SimAgents()
    stop = threading.Event()
    with server.client() as client:
        client.put_agent_type("coder", window=WINDOW)
        stats_box = []
        runner = threading.Thread(
            target=lambda: stats_box.append(serve_runtime(client, agents, stop=stop, wait_ms=500))
        )
        runner.start()
        try:
            client.submit_work_item(1, "coder", "blocking")
            with client.stream_events(after=0) as events:
                started = next(e for e in events if e["kind"] == "session_started")
            session = started["session"]
            agents.agents[session].used = 850
            assert client.report_usage(session, 850)["phase"] == "compacting"
            with client.stream_events(after=started["seq"]) as events:
                record = next(e for e in events if e["kind"] == "compaction")
            assert record["payload"]["compaction"]["success"]
            client.close_session(session)
            with client.stream_events(after=record["seq"]) as events:
                next(e for e in events if e["kind"] == "work_item_done")
        finally:
            stop.set()
            runner.join(WAIT)
    [stats] = stats_box
    assert stats.answered["spawn"] == 1 and stats.answered["assign"] == 1
    assert stats.answered["summarise"] == 1 and stats.answered["replace_history"] == 1


class Rude(SimAgents):
    def summarise(self, session: int, purpose: Literal["compaction", "handoff"]) -> Summary:
        raise RuntimeError("x" * 10_000)


async def test_error_messages_sent_to_baton_are_bounded(aclient: AsyncClient) -> None:
    agents = Rude()
    async with running(aclient, agents), watching(aclient) as events:
        s = await start_one(aclient, events)
        agents.agents[s].used = 850
        await aclient.report_usage(s, 850)
        record = await events.first("compaction", lambda b: b["session"] == s)
        assert not record["success"] and len(record["error"] or "") < 3000


async def test_a_proposed_id_the_runtime_already_made_is_replaced_by_a_fresh_one(
    aclient: AsyncClient,
) -> None:
    # As after a crash of baton between a spawn and its record: the runtime made sessions
    # 1 to 3 under keys baton no longer knows, and baton proposes 1 again.
    agents = SimAgents()
    made = {1001: 1, 1002: 2, 1003: 3}
    async with running(aclient, agents, spawn_keys=made), watching(aclient) as events:
        s = await start_one(aclient, events)
    assert s not in (1, 2, 3)
    assert agents.calls[0] == ("spawn", s)
    assert s in made.values(), "the runner records the session it made under its key"
