"""What the cluster tests share: a database of their own on the PostgreSQL that ``BATON_PG_URL``
names (``scripts/postgres.sh``, started by ``scripts/test.sh``), ``baton serve --cluster``
nodes that can be killed, stopped and cut off, a TCP proxy the test controls, and the history
checker over the events table (the outbox).

The database is read with ``psql`` (PostgreSQL's own client, installed with the server), so the
tests need no Python driver.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json

import pytest

from conftest import BatonServer

PSQL_CANDIDATES = ("/usr/lib/postgresql/15/bin/psql", "psql")


def admin_url() -> str:
    """The server's URL; skips the test without one, except under ``CI=true`` (fails)."""
    url = os.environ.get("BATON_PG_URL", "")
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail("BATON_PG_URL is not set: under CI=true the cluster tests never skip (scripts/test.sh starts PostgreSQL)")
    pytest.skip('BATON_PG_URL is not set (eval "$(bash scripts/postgres.sh start)" to run it)')


def psql_bin() -> str:
    for candidate in PSQL_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail("no psql: scripts/postgres.sh installs PostgreSQL 15 with its client")


def with_database(url: str, db: str) -> str:
    """``url`` with its database replaced by ``db``."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{db}" + (f"?{query}" if query else "")


def psql(url: str, sql: str) -> list[list[str]]:
    """Runs ``sql``; the rows, as text fields (unaligned, tab-separated)."""
    out = subprocess.run(
        [psql_bin(), "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise AssertionError(f"psql failed: {out.stderr.strip()}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


@contextlib.contextmanager
def fresh_database(test: str) -> Iterator[str]:
    """A new, empty database for the test, dropped after it; yields its URL."""
    admin = admin_url()
    name = f"baton_{test}_{os.getpid()}_{secrets.token_hex(3)}"
    psql(admin, f"CREATE DATABASE {name}")
    try:
        yield with_database(admin, name)
    except BaseException:
        if os.environ.get("BATON_KEEP_DB"):
            print(f"kept the failed test's database {name}")
            raise
        psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        raise
    else:
        psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class ClusterNode(BatonServer):
    """One ``baton serve --cluster`` process on the cluster's database, which can also be
    stopped (SIGSTOP), continued, and waited for."""

    def __init__(self, tmp: Path, token: str, url: str, name: str, extra: list[str]) -> None:
        super().__init__(tmp, token, ["--cluster", "--node", name, *extra], journal=url)
        self.name = name
        self.log_prefix = f"node-{name}"

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def wait_exit(self, timeout: float) -> int:
        """Waits for the process to end by itself; its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code


class TcpProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream``, which the test can cut: after :meth:`cut`,
    bytes in flight and new connections go nowhere, and no connection is closed (a partition,
    not a refusal: each side sees silence). Threads, one pair per connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
                self.connections += 1
            if self.cut_off.is_set():
                continue  # held open, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets.append(server)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                if not self.cut_off.is_set():
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                return
            if self.cut_off.is_set():
                continue  # swallowed
            try:
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        self.cut_off.set()

    def close(self) -> None:
        self.closed.set()
        self.cut_off.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.close()


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a ``postgres://user:pw@host:port/db`` URL."""
    rest = url.split("://", 1)[1].split("/", 1)[0]
    hostport = rest.rsplit("@", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    creds, _, _ = authority.rpartition("@")
    return f"{scheme}://{creds}@127.0.0.1:{proxy.port}/{path}"


# The history checker.


@dataclass
class Row:
    """One row of the events table."""

    seq: int
    at: int
    kind: str
    session: int | None
    work_item: int | None
    rotation: int | None
    owner: int | None
    payload: Any


@dataclass
class Adoption:
    dead: int
    by: int
    last_seq: int
    at: int


@dataclass
class History:
    """The outbox and the adoptions, as the database holds them."""

    events: list[Row]
    adoptions: list[Adoption]
    problems: list[str] = field(default_factory=list)

    @staticmethod
    def load(url: str) -> History:
        def num(s: str) -> int | None:
            return int(s) if s != "" else None

        rows = psql(url, "SELECT seq, at, kind, session, work_item, rotation, owner, payload FROM events ORDER BY seq")
        events = [
            Row(int(r[0]), int(r[1]), r[2], num(r[3]), num(r[4]), num(r[5]), num(r[6]), json.loads(r[7]))
            for r in rows
        ]
        adoptions = [
            Adoption(int(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in psql(url, "SELECT dead, by_epoch, last_seq, at FROM baton_adoptions ORDER BY at")
        ]
        return History(events, adoptions)

    def body(self, row: Row) -> dict[str, Any]:
        """The event's fields (the payload is ``{"variant": {...}}`` for fleet events)."""
        p = row.payload
        if isinstance(p, dict) and len(p) == 1:
            (inner,) = p.values()
            if isinstance(inner, dict):
                return inner
        return p if isinstance(p, dict) else {}

    def check(self, items: set[int]) -> list[str]:
        """Every problem found; empty when the history is sound:

        * every item of ``items`` is done exactly once, and nothing else is done;
        * no node wrote after it was adopted (every event it owns is at or below the
          adoption's ``last_seq``);
        * each session has one owner at a time: its events' owners change only from an adopted
          node to its adopter, and never back;
        * every rotation ends once, and a successful one has exactly one successor, which no
          other rotation also names, and which held the same work item (it started with it,
          or an adopter's recovery requeued the item from it).
        """
        problems: list[str] = []
        done = Counter(r.work_item for r in self.events if r.kind == "work_item_done")
        for item in sorted(items):
            if done[item] != 1:
                problems.append(f"work item {item} done {done[item]} times")
        for item in sorted(set(done) - items):
            problems.append(f"work item {item} was never submitted but is done")
        dead = [r for r in self.events if r.kind == "dead_letter"]
        problems += [f"work item {r.work_item} went to dead letter" for r in dead]

        adopted = {a.dead: a for a in self.adoptions}
        for r in self.events:
            a = adopted.get(r.owner) if r.owner is not None else None
            if a is not None and r.seq > a.last_seq:
                problems.append(f"event {r.seq} ({r.kind}) written by node {r.owner} after its adoption at seq {a.last_seq}")

        owners: dict[int, list[int]] = defaultdict(list)
        for r in self.events:
            if r.session is None or r.owner is None:
                continue
            runs = owners[r.session]
            if not runs or runs[-1] != r.owner:
                runs.append(r.owner)
        for session, runs in owners.items():
            if len(set(runs)) != len(runs):
                problems.append(f"session {session} went back to an earlier owner: {runs}")
            for before, after in zip(runs, runs[1:]):
                a = adopted.get(before)
                if a is None or a.by != after:
                    problems.append(f"session {session} moved from node {before} to {after} without an adoption")

        ends = [r for r in self.events if r.kind == "rotation"]
        per_rotation = Counter(self.body(r).get("rotation") for r in ends)
        problems += [f"rotation {rid} ended {n} times" for rid, n in per_rotation.items() if n != 1]
        started = [r for r in self.events if r.rotation is not None]
        for rid in sorted({r.rotation for r in started} - set(per_rotation)):
            problems.append(f"rotation {rid} never ended")
        successors: Counter[int] = Counter()
        # Where each session held its item: its start, or (when its node died between the
        # hand-over and the start) the adopter's recovery, which requeues the item from it.
        starts = {self.body(r).get("session"): self.body(r).get("work_item") for r in self.events if r.kind == "session_started"}
        for r in self.events:
            outcome = self.body(r).get("outcome") if r.kind == "recovered" else None
            if isinstance(outcome, dict) and isinstance(outcome.get("requeued"), dict):
                starts.setdefault(outcome["requeued"].get("session"), self.body(r).get("work_item"))
        rotated_from: Counter[int] = Counter()
        for r in ends:
            b = self.body(r)
            if not b.get("success"):
                continue
            new = b.get("new_session")
            rotated_from[b.get("old_session")] += 1
            if new is None:
                problems.append(f"rotation {b.get('rotation')} succeeded without a successor")
                continue
            successors[new] += 1
            if starts.get(new) != b.get("work_item"):
                problems.append(f"rotation {b.get('rotation')}'s successor {new} did not start with item {b.get('work_item')}")
        problems += [f"session {s} is the successor of {n} rotations" for s, n in successors.items() if n > 1]
        problems += [f"session {s} was rotated {n} times" for s, n in rotated_from.items() if n > 1]
        return problems

    def resumed_after(self, dead: int) -> tuple[Adoption, Row | None]:
        """The adoption of ``dead``, and the first session its adopter started after it for an
        item the dead node had started: when its work resumed."""
        a = next(x for x in self.adoptions if x.dead == dead)
        held = {r.work_item for r in self.events if r.owner == dead and r.kind == "session_started"}
        first = next(
            (
                r
                for r in self.events
                if r.seq > a.last_seq and r.owner == a.by and r.kind == "session_started" and r.work_item in held
            ),
            None,
        )
        return a, first
