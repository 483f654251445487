"""Every client method against a real ``baton serve``: agent types, work items, sessions, usage,
events, the command queue, and the other paths, in both the sync and the async client."""

from __future__ import annotations

import httpx
import pytest

from baton_client import AsyncClient, BadRequest, Client, Conflict, NotFound
from helpers import SimAgents, payload_of, running, watching

WINDOW = 1000


def put_coder(client: Client, name: str = "coder", **policy: object) -> None:
    client.put_agent_type(name, window=WINDOW, model="m", system_prompt="be brief", policy=policy)  # type: ignore[arg-type]


def test_agent_types_are_created_read_listed_and_only_their_policy_changes(client: Client, server) -> None:
    raw = httpx.put(
        f"{server.url}/v1/agent-types/coder",
        json={"window": WINDOW, "model": "m", "system_prompt": "", "policy": {}},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert raw.status_code == 201
    created = client.get_agent_type("coder")
    assert created["name"] == "coder" and created["window"] == WINDOW
    assert created["policy"]["compact_at"] == pytest.approx(0.8)

    updated = client.put_agent_type("coder", window=WINDOW, model="m", policy={"compact_at": 0.7})
    assert updated["policy"]["compact_at"] == pytest.approx(0.7)
    assert client.get_agent_type("coder")["policy"]["compact_at"] == pytest.approx(0.7)
    with pytest.raises(Conflict):
        client.put_agent_type("coder", window=2 * WINDOW, model="m")

    put_coder(client, "writer")
    assert [t["name"] for t in client.list_agent_types()] == ["coder", "writer"]
    with pytest.raises(NotFound):
        client.get_agent_type("nobody")


def test_work_items_are_idempotent_by_id_and_content(client: Client) -> None:
    put_coder(client)
    item = client.submit_work_item(7, "coder", "fix the bug")
    assert (item["id"], item["agent_type"], item["text"]) == (7, "coder", "fix the bug")
    assert item["place"] in ("queued", "starting")
    again = client.submit_work_item(7, "coder", "fix the bug")
    assert again["id"] == 7
    with pytest.raises(Conflict):
        client.submit_work_item(7, "coder", "something else")

    results = client.submit_work_items(
        [
            {"id": 8, "agent_type": "coder", "text": "new"},
            {"id": 7, "agent_type": "coder", "text": "fix the bug"},
            {"id": 7, "agent_type": "coder", "text": "other"},
            {"id": 9, "agent_type": "nobody", "text": "unknown type"},
        ]
    )
    assert [(r["id"], r["status"]) for r in results] == [
        (8, "created"),
        (7, "exists"),
        (7, "conflict"),
        (9, "rejected"),
    ]

    assert [i["id"] for i in client.list_work_items()] == [7, 8]
    assert [i["id"] for i in client.list_work_items(agent_type="coder", limit=1)] == [7]
    assert client.get_work_item(8)["text"] == "new"
    with pytest.raises(NotFound):
        client.get_work_item(12345)


def test_cancelling_a_queued_item_ends_it_dead_once(client: Client) -> None:
    put_coder(client)
    client.submit_work_item(1, "coder", "never started: no runtime consumes the queue")
    cancelled = client.cancel_work_item(1)
    assert cancelled["place"] == "dead"
    assert cancelled.get("reason") == "cancelled"
    assert [i["id"] for i in client.list_work_items(place="dead")] == [1]
    with pytest.raises(Conflict):
        client.cancel_work_item(1)
    with pytest.raises(NotFound):
        client.cancel_work_item(2)


async def test_sessions_usage_compaction_rotation_and_close_over_http(aclient: AsyncClient) -> None:
    await aclient.put_agent_type("coder", window=WINDOW, policy={"max_compactions": 3})
    agents = SimAgents()
    async with running(aclient, agents), watching(aclient) as events:
        await aclient.submit_work_item(1, "coder", "task")
        started = await events.first("session_started", lambda b: b["work_item"] == 1)
        s = started["session"]

        [listed] = await aclient.list_sessions(agent_type="coder")
        assert (listed["session"], listed["work_item"], listed["phase"]) == (s, 1, "normal")
        assert (await aclient.get_work_item(1))["place"] == "live"

        reading = await aclient.report_usage(s, 300)
        assert reading == {"session": s, "phase": "normal"} or reading["phase"] == "normal"
        agents.agents[s].used = 850
        reading = await aclient.report_usage(s, 850, window=WINDOW, source="reported")
        assert reading["phase"] == "compacting"
        record = await events.first("compaction", lambda b: b["session"] == s)
        assert record["success"] and record["after_tokens"] < 850
        session = await aclient.get_session(s)
        assert session["compactions"] == 1 and "history" in session
        assert [x["session"] for x in await aclient.list_sessions(min_ratio=0.9)] == []

        rotated = await aclient.rotate_session(s)
        assert rotated["session"] == s
        rotation = await events.first("rotation", lambda b: b["old_session"] == s)
        assert rotation["success"] and rotation["reason"] == "manual"
        successor = rotation["new_session"]
        assert agents.agents[successor].work_item == 1
        assert agents.agents[successor].handoff is not None
        await events.first("session_started", lambda b: b["session"] == successor)

        closed = await aclient.close_session(successor)
        assert closed["session"] == successor
        done = await events.first("work_item_done", lambda b: b["work_item"] == 1)
        assert done["session"] == successor
        assert (await aclient.get_work_item(1))["place"] == "done"
        with pytest.raises(NotFound):
            await aclient.get_session(987654)


async def test_batch_usage_reports_answer_each_session_and_name_unknown_ones(aclient: AsyncClient) -> None:
    await aclient.put_agent_type("coder", window=WINDOW)
    async with running(aclient, SimAgents()), watching(aclient) as events:
        await aclient.submit_work_items([{"id": i, "agent_type": "coder", "text": f"t{i}"} for i in (1, 2)])
        await events.wait_for(lambda: len(events.of("session_started")) == 2, "two sessions")
        a, b = sorted(x["session"] for x in events.of("session_started"))
        results = await aclient.report_usages(
            [{"session": a, "used": 200}, {"session": 99999, "used": 1}, {"session": b, "used": 990}]
        )
        assert results[0] == {"session": a, "phase": "normal"} or results[0]["phase"] == "normal"
        assert results[1]["session"] == 99999 and results[1]["error"] == "not_found"
        assert results[2]["session"] == b and results[2]["phase"] == "rotating"
        rotation = await events.first("rotation", lambda r: r["old_session"] == b)
        assert rotation["reason"] == "threshold"


def test_commands_are_polled_answered_and_stale_answers_refused(client: Client) -> None:
    put_coder(client)
    client.submit_work_item(1, "coder", "by hand")
    [spawn] = client.poll_commands(max=1, wait_ms=10_000, lease_ms=30_000)
    assert spawn["op"] == "spawn" and spawn["agent_type"]["name"] == "coder"
    with pytest.raises(BadRequest):  # the wrong shape for a spawn: the command stays pending
        client.send_result(spawn["id"], {"session": spawn["session"], "extra": 1})
    client.send_result(spawn["id"], {"session": spawn["session"]}, lease=spawn["lease"])
    with pytest.raises(NotFound):  # already answered
        client.send_result(spawn["id"], {"session": spawn["session"]})
    [assign] = client.poll_commands(max=4, wait_ms=10_000)
    assert assign["op"] == "assign" and assign["session"] == spawn["session"]
    assert assign["work_item"] == {"id": 1, "agent_type": "coder", "text": "by hand"}
    client.send_result(assign["id"], {})
    with pytest.raises(NotFound):
        client.send_result(424242, {})
    with pytest.raises(NotFound):
        client.send_error(424242, "transient", "no such command")
    with client.stream_events(after=0) as events:
        started = next(e for e in events if e["kind"] == "session_started")
    assert started["payload"]["session_started"]["session"] == spawn["session"]
    live = client.get_work_item(1)
    assert live["place"] == "live" and live.get("session") == spawn["session"]

    client.close_session(spawn["session"])
    commands = client.poll_commands(wait_ms=10_000)
    assert [(c["op"], c["session"]) for c in commands] == [("close", spawn["session"])]
    client.send_error(commands[0]["id"], "permanent", "already gone")
    assert client.poll_commands(wait_ms=0) == []


def test_command_stream_delivers_commands_as_events(client: Client) -> None:
    put_coder(client)
    client.submit_work_item(1, "coder", "streamed")
    # A short lease: a command the closed stream took meanwhile is soon offered to the poll.
    stream = client.stream_commands(lease_ms=1000, max_outstanding=4)
    command = next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert command["op"] == "spawn" and command["lease"] >= 1
    client.send_result(command["id"], {"session": command["session"]})
    [assign] = client.poll_commands(wait_ms=10_000)
    assert assign["op"] == "assign" and assign["session"] == command["session"]


def test_event_log_pages_and_filters_like_baton_log(client: Client) -> None:
    put_coder(client)
    client.submit_work_items([{"id": i, "agent_type": "coder", "text": f"t{i}"} for i in range(5)])
    for i in range(5):
        client.cancel_work_item(i)
    everything = list(client.journal_events())
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(set(seqs)) and len(seqs) >= 10
    dead = [e for e in everything if payload_of(e)[0] == "dead_letter"]
    assert sorted(payload_of(e)[1]["work_item"] for e in dead) == list(range(5))

    latest = client.list_events(limit=2)
    assert [e["seq"] for e in latest["events"]] == seqs[-2:]
    page = client.list_events(after=0, limit=3)
    assert [e["seq"] for e in page["events"]] == seqs[:3]
    assert page["next_after"] == seqs[2]
    rest = client.list_events(after=page["next_after"], limit=1000)
    assert [e["seq"] for e in rest["events"]] == seqs[3:]
    only_2 = client.list_events(work_item=2)["events"]
    assert only_2 and all(e.get("work_item") == 2 for e in only_2)


def test_openapi_and_metrics_are_served(client: Client) -> None:
    document = client.openapi()
    assert str(document["openapi"]).startswith("3.")
    assert "/v1/work-items" in document["paths"]
    text = client.metrics()
    assert "# TYPE" in text


def test_clients_never_show_the_token(server, token: str) -> None:
    sync = server.client()
    asyncc = AsyncClient(server.url, token)
    try:
        assert token not in repr(sync) and token not in repr(asyncc)
        assert server.url in repr(sync)
    finally:
        sync.close()


async def test_the_async_client_has_every_operation_of_the_sync_one(aclient: AsyncClient, server) -> None:
    sync_ops = {n for n in dir(Client) if not n.startswith("_")}
    async_ops = {n for n in dir(AsyncClient) if not n.startswith("_")}
    assert sync_ops - {"close"} == async_ops - {"aclose"}

    await aclient.put_agent_type("coder", window=WINDOW)
    assert [t["name"] for t in await aclient.list_agent_types()] == ["coder"]
    assert (await aclient.get_agent_type("coder"))["window"] == WINDOW
    await aclient.submit_work_item(1, "coder", "a")
    await aclient.submit_work_item(2, "coder", "b")
    assert [i["id"] for i in await aclient.list_work_items(limit=10)] == [1, 2]
    assert (await aclient.get_work_item(2))["text"] == "b"

    commands = aclient.stream_commands(lease_ms=1000)
    first = await commands.__anext__()
    await commands.aclose()  # type: ignore[attr-defined]
    assert first["op"] == "spawn"
    await aclient.send_result(first["id"], {"session": first["session"]})
    polled = await aclient.poll_commands(max=16, wait_ms=10_000)
    assert polled, "the assign (or the second spawn) is offered"
    for command in polled:
        ok = {"session": command["session"]} if command["op"] == "spawn" else {}
        await aclient.send_result(command["id"], ok)
    with pytest.raises(NotFound):
        await aclient.send_error(424242, "permanent", "no such command")

    cancelled = await aclient.cancel_work_item(2)
    assert cancelled["place"] == "dead"
    page = await aclient.list_events(work_item=2, limit=1000)
    assert page["events"] and all(e.get("work_item") == 2 for e in page["events"])
    assert "/v1/sessions" in (await aclient.openapi())["paths"]
    assert "# TYPE" in await aclient.metrics()
    assert (await aclient.request("GET", "/v1/agent-types/coder"))["name"] == "coder"
