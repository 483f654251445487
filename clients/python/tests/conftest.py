"""Fixtures: a real ``baton serve`` process per test (or per module), its token, and clients.

The binary is ``$BATON_BIN`` (default: ``target/debug/baton`` of this repository; scripts/test.sh
builds it). Each server listens on 127.0.0.1 with port 0 (or a given port, to restart on the
same address), keeps its journal in the test's temporary directory, and gets its token through
the environment only. Its standard error goes to a file, shown when a test fails.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from baton_client import AsyncClient, Client

REPO = Path(__file__).resolve().parents[3]
# Seconds a server may take to print its address (a cold start opens and checks the journal).
START_TIMEOUT = 30.0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (PR_SET_PDEATHSIG), so
    that an interrupted run leaves no server behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def baton_bin() -> Path:
    path = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
    if not path.is_file():
        pytest.fail(f"no baton binary at {path}: build it (cargo build --bin baton) or set BATON_BIN")
    return path


class BatonServer:
    """One ``baton serve`` process: start, kill (SIGKILL), stop (SIGTERM), restart on the same
    address and journal."""

    def __init__(
        self, tmp: Path, token: str, extra: list[str] | None = None, journal: str | None = None
    ) -> None:
        self.tmp = tmp
        self.token = token
        # A SQLite file in the test's directory, or the URL given (a cluster's PostgreSQL).
        self.journal: Path | str = journal if journal is not None else tmp / "baton.db"
        self.extra = extra or []
        self.addr = "127.0.0.1:0"
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    # The server's logs are PREFIX-N.log in the test's directory (N counts its starts).
    log_prefix = "serve"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.tmp / f"{self.log_prefix}-{self.starts}.log", "w")
        env = {k: v for k, v in os.environ.items() if k != "BATON_TOKEN"}
        env["BATON_TOKEN"] = self.token
        env.setdefault("RUST_LOG", "warn")
        args = [str(baton_bin()), "serve", "--listen", self.addr, "--journal", str(self.journal)]
        self.proc = subprocess.Popen(
            args + self.extra,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            preexec_fn=_die_with_parent if os.uname().sysname == "Linux" else None,
        )
        log.close()
        line = self._first_line()
        prefix = "listening on http://"
        if not line.startswith(prefix):
            self.kill()
            raise AssertionError(f"baton serve printed {line!r}; stderr:\n{self.stderr()}")
        self.addr = line[len(prefix) :].strip()

    def _first_line(self) -> str:
        """The first stdout line, waited for in a thread (a hung server fails the test, after
        START_TIMEOUT, instead of hanging it)."""
        assert self.proc is not None and self.proc.stdout is not None
        result: list[str] = []
        stdout = self.proc.stdout
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not result:
            self.kill()
            raise AssertionError(f"baton serve printed nothing in {START_TIMEOUT} s")
        # Later stdout lines are drained so that the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        return result[0]

    def kill(self) -> None:
        """SIGKILL: the process dies at once, wherever it was."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def restart_after_kill(self) -> None:
        """SIGKILL, then start again on the same address and journal."""
        self.kill()
        self.start()

    def stderr(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp.glob(f"{self.log_prefix}-*.log"))
        )

    def client(self, token: str | None = None, **kwargs: object) -> Client:
        return Client(self.url, token if token is not None else self.token, **kwargs)  # type: ignore[arg-type]

    def async_client(self, token: str | None = None, **kwargs: object) -> AsyncClient:
        return AsyncClient(self.url, token if token is not None else self.token, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


def _serve(tmp: Path, token: str, request: pytest.FixtureRequest, extra: list[str]) -> Iterator[BatonServer]:
    server = BatonServer(tmp, token, extra)
    server.start()
    try:
        yield server
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(server.stderr())
        server.kill()


@pytest.fixture
def server(tmp_path: Path, token: str, request: pytest.FixtureRequest) -> Iterator[BatonServer]:
    """A fresh server with a journal in the test's temporary directory."""
    extra = list(getattr(request, "param", []))
    yield from _serve(tmp_path, token, request, extra)


@pytest.fixture
def client(server: BatonServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


@pytest.fixture
async def aclient(server: BatonServer) -> AsyncIterator[AsyncClient]:
    async with server.async_client() as c:
        yield c


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
