"""Failover time of a cluster: kill a node (SIGKILL) holding live sessions, and measure from the
kill to its adoption (the ``baton_adoptions`` row, by the database's clock) and to the first
session its adopter starts for one of its items (the ``events`` row). Repeated, with the killed
node restarted (a new epoch) each time; prints p50 and p99 of both.

Run: ``bash scripts/bench-cluster.sh`` (starts PostgreSQL, builds baton in release, runs this and
``cargo bench --bench cluster``), or with ``BATON_PG_URL`` and ``BATON_BIN`` set:
``python benches/failover.py [--trials N] [--lease-ttl S] [--sweep-every S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from baton_client import serve_runtime_async  # noqa: E402

from cluster_support import ClusterNode, History, fresh_database, psql  # noqa: E402
from helpers import SimAgents  # noqa: E402

ITEMS_PER_TRIAL = 8


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--sweep-every", type=float, default=1.0)
    args = parser.parse_args()
    token = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="baton-failover-"))
    types = tmp / "types.json"
    types.write_text(json.dumps([{"name": "coder", "window": 100_000}]))
    node_args = [
        "--lease-ttl", f"{args.lease_ttl}s", "--sweep-every", f"{args.sweep_every}s",
        "--agent-types", str(types), "--workers", "1",
    ]
    agents = SimAgents()
    keys: dict[int, int] = {}
    to_adoption: list[float] = []
    to_resumed: list[float] = []
    with fresh_database("failover") as url:
        nodes = {name: ClusterNode(tmp, token, url, name, node_args) for name in ("x", "y")}
        runners: dict[str, tuple[asyncio.Event, asyncio.Task[object]]] = {}

        async def up(name: str) -> None:
            node = nodes[name]
            await asyncio.to_thread(node.start)
            stop = asyncio.Event()
            client = node.async_client(timeout=10.0)
            task = asyncio.create_task(serve_runtime_async(client, agents, stop=stop, spawn_keys=keys, wait_ms=500))
            runners[name] = (stop, task)

        async def down(name: str) -> None:
            nodes[name].kill()
            stop, task = runners.pop(name)
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

        await up("x")
        await up("y")
        next_id = 1
        try:
            for trial in range(args.trials):
                victim = "xy"[trial % 2]
                node = nodes[victim]
                client = node.async_client()
                me = next(n for n in (await client.request("GET", "/v1/cluster/nodes"))["nodes"] if n["this"])
                # Work into the pool, until the victim holds some of it.
                batch = [{"id": next_id + i, "agent_type": "coder", "text": "t"} for i in range(ITEMS_PER_TRIAL)]
                next_id += ITEMS_PER_TRIAL
                await client.submit_work_items(batch)  # type: ignore[arg-type]
                deadline = time.monotonic() + 60
                live = f"SELECT count(*) FROM sessions WHERE owner = {int(me['epoch'])} AND state = 'live'"
                while True:
                    mine = int(psql(url, live)[0][0])
                    if mine or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                await client.aclose()
                assert mine, f"{victim} took no work"
                killed = time.time()
                await down(victim)
                history = History.load(url)
                while not any(a.dead == me["epoch"] for a in history.adoptions):
                    await asyncio.sleep(0.1)
                    history = History.load(url)
                adoption, resumed = history.resumed_after(me["epoch"])
                while resumed is None and time.time() - killed < 60:
                    await asyncio.sleep(0.1)
                    adoption, resumed = History.load(url).resumed_after(me["epoch"])
                to_adoption.append(adoption.at / 1000 - killed)
                if resumed is not None:
                    to_resumed.append(resumed.at / 1000 - killed)
                print(
                    f"trial {trial + 1}: killed {victim} (epoch {me['epoch']}): adopted after {to_adoption[-1]:.2f} s, "
                    f"work resumed after {to_resumed[-1] if resumed else float('nan'):.2f} s",
                    flush=True,
                )
                await up(victim)
        finally:
            for name in list(runners):
                await down(name)
    ttl, sweep = args.lease_ttl, args.sweep_every
    print(f"\nlease TTL {ttl} s, sweep every {sweep} s: bound TTL + sweep = {ttl + sweep:.1f} s; {len(to_adoption)} kills")
    print(f"{'':>24} | {'p50':>6} | {'p99':>6} | {'max':>6}")
    for label, values in (("kill to adoption (s)", to_adoption), ("kill to work resumed (s)", to_resumed)):
        print(f"{label:>24} | {percentile(values, 50):>6.2f} | {percentile(values, 99):>6.2f} | {max(values):>6.2f}")
    print(f"mean kill to work resumed: {statistics.mean(to_resumed):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
