"""Issue 15's "done when": three ``baton serve --cluster`` processes on one PostgreSQL work
through 1,000 items of two agent types, driven by one orchestrator over HTTP. Mid-run one node
is SIGKILLed and another SIGSTOPped past its lease; the stopped one, continued, finds itself
fenced and exits 3. Every item is done exactly once, failover stays within the lease TTL plus
the sweep interval, and the history checker over the outbox is green. A second test cuts a
node off the database through a TCP proxy.

Nothing sleeps to synchronise: each step waits on an event of a node's stream or on a process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton_client import ApiError, ConnectionFailed, Conflict, NotFound, RuntimeHandler, serve_runtime_async
from baton_client.models import AgentType, Handoff, NewWorkItem, Summary

from cluster_support import ClusterNode, History, TcpProxy, fresh_database, host_port, psql, through
from helpers import WAIT, SimAgents, Watcher, payload_of

# The single host's orchestrator test's agents: "coder" climbs fast and rotates at 95% without
# compacting; "writer" compacts at 80% and rotates once its single compaction is spent.
from test_orchestrator import POLICY, STEP, TURNS, WINDOW

ITEMS = 1000
TTL_S = 3.0
SWEEP_S = 1.0
# Kill to adoption is bounded by the lease and one sweep (and the adopting transaction's own
# time); kill to the first adopted item's new session also includes the recovery's runtime
# calls, answered by this process.
ADOPTION_BOUND_S = TTL_S + SWEEP_S + 0.5
RESUME_SLACK_S = 2.0


def node_args(types: Path, max_sessions: int = 24) -> list[str]:
    return [
        "--lease-ttl", f"{TTL_S}s",
        "--sweep-every", f"{SWEEP_S}s",
        "--max-sessions", str(max_sessions),
        "--agent-types", str(types),
        "--grace", "2s",
        "--workers", "1",
    ]


@dataclass
class Shared:
    """What the orchestrator knows across every node: an agent's context and its spawn keys
    live in the orchestrator, not in the node that asked for them."""

    agents: SimAgents = field(default_factory=lambda: SimAgents(keep=0.3))
    spawn_keys: dict[int, int] = field(default_factory=dict)
    types: dict[int, str] = field(default_factory=dict)
    turns: Counter[int] = field(default_factory=Counter)
    # Per item, the seqs of its WorkItemDone events (a node's stream may replay another's
    # events from the database: each event counts once, by its seq).
    done: dict[int, set[int]] = field(default_factory=dict)
    # Which node each session was assigned by: the node that owns it now.
    assigned_by: dict[int, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    failures: list[BaseException] = field(default_factory=list)
    # The cluster's database, to say where unfinished items are when a wait times out.
    url: str = ""

    async def wait_for(self, predicate: Any, what: str, timeout: float = 240) -> None:
        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate() or bool(self.failures))

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            where = ""
            if self.url:
                rows = psql(
                    self.url,
                    "SELECT w.id, w.place, w.owner, w.session, s.state, s.phase, s.owner FROM work_items w "
                    "LEFT JOIN sessions s ON s.id = w.session WHERE w.place <> 'done' ORDER BY w.id LIMIT 10",
                )
                where = f"; not done (id, place, owner, session, its state, phase, owner): {rows}"
            raise AssertionError(f"timed out waiting for {what}: {len(self.done)} items done{where}") from None
        assert not self.failures, self.failures


class NodeAgents(RuntimeHandler):
    """One node's runner's view of the orchestrator's agents: the same agents, and each assign
    noted as coming from this node."""

    def __init__(self, shared: Shared, name: str) -> None:
        self.shared = shared
        self.name = name

    def summarise(self, session: int, purpose: Any) -> Summary:
        return self.shared.agents.summarise(session, purpose)

    def replace_history(self, session: int, summary: Summary) -> int:
        return self.shared.agents.replace_history(session, summary)

    def spawn(self, agent_type: AgentType, key: int, proposed: int) -> int:
        return self.shared.agents.spawn(agent_type, key, proposed)

    def assign(self, session: int, work_item: NewWorkItem, handoff: Handoff | None) -> None:
        self.shared.agents.assign(session, work_item, handoff)
        self.shared.assigned_by[session] = self.name

    def close(self, session: int) -> None:
        self.shared.agents.close(session)


class Driver:
    """One node's side of the orchestrator: its runtime runner, its event stream, and a task per
    live session that reports usage turn by turn and closes the session after its turns."""

    def __init__(self, node: ClusterNode, shared: Shared) -> None:
        self.node = node
        self.shared = shared
        self.client = node.async_client(timeout=10.0)
        self.watcher = Watcher(self.client, after=0)
        self.stop = asyncio.Event()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.items: dict[int, int] = {}  # live session -> item
        self.gone: set[int] = set()
        self.compactions: Counter[int] = Counter()
        self.runner: asyncio.Task[Any] | None = None
        self.watcher.on_event(self._on_event)

    async def start(self) -> None:
        self.watcher.start()
        self.runner = asyncio.create_task(
            serve_runtime_async(
                self.client, NodeAgents(self.shared, self.node.name), stop=self.stop,
                spawn_keys=self.shared.spawn_keys,
                wait_ms=1000, lease_ms=10_000,
            )
        )

    def abandon(self) -> None:
        """The orchestrator gives the node up (it was killed, or stopped): its runner and its
        sessions' tasks end; the adopter starts new sessions for their items."""
        self.stop.set()
        for t in self.tasks.values():
            t.cancel()

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.runner is not None:
            await asyncio.gather(asyncio.wait_for(self.runner, WAIT), return_exceptions=True)
        await self.watcher.stop()
        await self.client.aclose()

    def _on_event(self, event: Any) -> None:
        kind, body = payload_of(event)
        if kind == "session_started":
            s = body["session"]
            # Sessions of other nodes (replayed from the database) are theirs to drive.
            if s not in self.tasks and self.shared.assigned_by.get(s) == self.node.name:
                self.items[s] = body["work_item"]
                self.tasks[s] = asyncio.create_task(self.drive(s, body["work_item"]))
        elif kind == "compaction":
            self.compactions[body["session"]] += 1
        elif kind == "rotation":
            self.gone.add(body["old_session"])
        elif kind == "transition" and body["to"] in ("rotating", "closed"):
            self.gone.add(body["session"])
        elif kind == "work_item_done":
            self.gone.add(body["session"])
            self.items.pop(body["session"], None)
            self.shared.done.setdefault(body["work_item"], set()).add(event["seq"])

            async def wake() -> None:
                async with self.shared.changed:
                    self.shared.changed.notify_all()

            asyncio.get_running_loop().create_task(wake())

    async def drive(self, session: int, item: int) -> None:
        shared = self.shared
        step = STEP[shared.types[item]]
        try:
            while session not in self.gone:
                if shared.turns[item] >= TURNS:
                    await self.client.close_session(session)
                    return
                agent = shared.agents.agents[session]
                agent.used = min(agent.used + step, WINDOW - 10)
                seen = self.compactions[session]
                reading = await self.client.report_usage(session, agent.used)
                shared.turns[item] += 1
                if reading["phase"] == "compacting":
                    await self.watcher.wait_for(
                        lambda: self.compactions[session] > seen or session in self.gone,
                        f"compaction of session {session}",
                    )
                elif reading["phase"] != "normal":
                    return  # rotating (a successor takes over) or closed
        except (ConnectionFailed, NotFound, Conflict, asyncio.CancelledError):
            # The node died or was fenced, or the session ended meanwhile: another session
            # (here or on the adopter) takes the item over.
            return
        except ApiError as e:
            if e.status != 503:
                shared.failures.append(e)
        except AssertionError as e:
            if not self.stop.is_set():
                shared.failures.append(e)
        except Exception as e:  # surfaced by the test, never lost in a task
            shared.failures.append(e)


@asynccontextmanager
async def cluster(tmp: Path, token: str, url: str, names: list[str], shared: Shared, args: list[str] | None = None, urls: dict[str, str] | None = None) -> AsyncIterator[dict[str, tuple[ClusterNode, Driver]]]:
    types = tmp / "types.json"
    types.write_text(json.dumps([{"name": n, "window": WINDOW, "policy": p} for n, p in POLICY.items()]))
    nodes: dict[str, tuple[ClusterNode, Driver]] = {}
    async with AsyncExitStack() as stack:
        for name in names:
            node = ClusterNode(tmp, token, (urls or {}).get(name, url), name, args or node_args(types))
            await asyncio.to_thread(node.start)
            stack.callback(node.kill)
            driver = Driver(node, shared)
            await driver.start()
            stack.push_async_callback(driver.close)
            nodes[name] = (node, driver)
        try:
            yield nodes
        except BaseException:
            for node, _ in nodes.values():
                if node.proc is not None:
                    node.resume()
                print(node.stderr())
            raise


def submit_all(shared: Shared) -> list[dict[str, Any]]:
    items = [{"id": i, "agent_type": "coder" if i % 2 else "writer", "text": f"task {i}"} for i in range(1, ITEMS + 1)]
    shared.types.update({i["id"]: i["agent_type"] for i in items})  # type: ignore[misc]
    return items


async def test_three_nodes_finish_1000_items_exactly_once_across_a_sigkill_and_a_sigstop(tmp_path: Path, token: str) -> None:
    shared = Shared()
    with fresh_database("chaos") as url:
        shared.url = url
        async with cluster(tmp_path, token, url, ["a", "b", "c"], shared) as nodes:
            (a, da), (b, db), (c, dc) = nodes["a"], nodes["b"], nodes["c"]
            items = submit_all(shared)
            for chunk in range(0, ITEMS, 250):
                results = await dc.client.submit_work_items(items[chunk : chunk + 250])  # type: ignore[arg-type]
                assert Counter(r["status"] for r in results) == {"created": 250}
            epochs = {n["name"]: n["epoch"] for n in (await dc.client.request("GET", "/v1/cluster/nodes"))["nodes"]}

            await shared.wait_for(lambda: len(shared.done) >= 200, "200 items done")
            killed_at = time.time()
            a.kill()
            da.abandon()

            await shared.wait_for(lambda: len(shared.done) >= 450, "450 items done")
            held_by_b = set(db.items.values())
            assert held_by_b, "b must hold work when it is stopped"
            stopped_at = time.time()
            b.pause()
            db.abandon()
            seen = len(dc.watcher.events)
            # Past b's lease: the sweeper adopts its work, and c starts sessions for it.
            await dc.watcher.wait_for(
                lambda: any(
                    payload_of(e)[0] == "recovered" and payload_of(e)[1]["work_item"] in held_by_b
                    for e in dc.watcher.events[seen:]
                ),
                "the adoption of b's work on c",
                timeout=WAIT,
            )
            b.resume()
            # b finds its row gone: fenced, it takes no more work and exits 3.
            assert await asyncio.to_thread(b.wait_exit, WAIT) == 3, b.stderr()

            await shared.wait_for(lambda: len(shared.done) >= ITEMS, "every item done")
            assert not shared.failures, shared.failures
            assert set(shared.done) == set(range(1, ITEMS + 1))
            assert {len(seqs) for seqs in shared.done.values()} == {1}, "an item was done twice"
            listed = await dc.client.list_work_items(limit=ITEMS)
            assert Counter(i["place"] for i in listed) == {"done": ITEMS}

        history = History.load(url)
        assert history.check(set(range(1, ITEMS + 1))) == []
        assert {a.dead for a in history.adoptions} == {epochs["a"], epochs["b"]}
        assert {a.by for a in history.adoptions} <= {epochs["c"], epochs["b"]}
        rotations = [history.body(r) for r in history.events if r.kind == "rotation"]
        assert {r["agent_type"] for r in rotations if r["success"]} == {"coder", "writer"}
        assert not [r for r in history.events if r.owner == epochs["b"] and r.seq > next(x.last_seq for x in history.adoptions if x.dead == epochs["b"])]

        report = {}
        for name, t0 in (("a", killed_at), ("b", stopped_at)):
            adoption, resumed = history.resumed_after(epochs[name])
            to_adoption = adoption.at / 1000 - t0
            assert to_adoption <= ADOPTION_BOUND_S, f"{name}: adopted {to_adoption:.2f} s after it went"
            assert resumed is not None, f"no work of {name} resumed on its adopter"
            to_resumed = resumed.at / 1000 - t0
            assert to_resumed <= ADOPTION_BOUND_S + RESUME_SLACK_S, f"{name}: work resumed {to_resumed:.2f} s after it went"
            report[name] = (round(to_adoption, 2), round(to_resumed, 2))
        print(f"failover (s to adoption, s to first resumed session): {report}")


async def test_a_node_cut_off_from_the_database_is_lost_and_its_work_is_finished_elsewhere(tmp_path: Path, token: str) -> None:
    shared = Shared()
    with fresh_database("cut") as url:
        shared.url = url
        proxy = TcpProxy(host_port(url))
        try:
            async with cluster(tmp_path, token, url, ["p", "q"], shared, urls={"p": through(url, proxy)}) as nodes:
                (p, dp), (q, dq) = nodes["p"], nodes["q"]
                items = submit_all(shared)[:100]
                await dp.client.submit_work_items(items)  # type: ignore[arg-type]
                await shared.wait_for(lambda: len(shared.done) >= 20 and bool(dp.items), "work under way on p")
                held_by_p = set(dp.items.values())
                proxy.cut()
                dp.abandon()
                # p cannot heartbeat for a whole lease: it is lost and exits 3 ...
                assert await asyncio.to_thread(p.wait_exit, WAIT) == 3, p.stderr()
                # ... and q, the sweeper once p's lock went with its idle connection, finishes
                # p's work.
                await dq.watcher.wait_for(
                    lambda: any(body["work_item"] in held_by_p for body in dq.watcher.of("recovered")),
                    "the adoption of p's work on q",
                    timeout=WAIT,
                )
                await shared.wait_for(lambda: len(shared.done) >= len(items), "every item done")
                assert set(shared.done) == {i["id"] for i in items}
                assert {len(seqs) for seqs in shared.done.values()} == {1}
        finally:
            proxy.close()
        history = History.load(url)
        assert history.check({i["id"] for i in items}) == []
        assert len(history.adoptions) == 1
