"""The cluster tests' own tools: the history checker finds each kind of violation it claims to,
and the TCP proxy forwards until it is cut, then swallows."""

from __future__ import annotations

import socket
import threading
from typing import Any

from cluster_support import Adoption, History, Row, TcpProxy, host_port, through, with_database


def ev(seq: int, kind: str, owner: int | None, session: int | None = None, item: int | None = None, **body: Any) -> Row:
    payload = {kind: {"session": session, "work_item": item, **body}}
    return Row(seq, seq, kind, session, item, body.get("rotation"), owner, payload)


def sound() -> History:
    """Node 1 starts items 1 and 2, rotates session 10 to 11, is adopted by node 2 at seq 5,
    which finishes both."""
    return History(
        events=[
            ev(1, "session_started", 1, 10, 1),
            ev(2, "session_started", 1, 20, 2),
            ev(3, "rotation", 1, 10, 1, rotation=7, old_session=10, new_session=11, success=True),
            ev(4, "session_started", 1, 11, 1),
            ev(5, "transition", 1, 20, 2),
            ev(6, "transition", 2, 20, 2),
            ev(7, "session_started", 2, 30, 2),
            ev(8, "work_item_done", 2, 30, 2),
            ev(9, "transition", 2, 11, 1),
            ev(10, "work_item_done", 2, 11, 1),
        ],
        adoptions=[Adoption(dead=1, by=2, last_seq=5, at=5)],
    )


def test_a_sound_history_has_no_problems() -> None:
    assert sound().check({1, 2}) == []


def test_an_item_done_twice_or_never_is_found() -> None:
    h = sound()
    h.events.append(ev(11, "work_item_done", 2, 30, 2))
    assert h.check({1, 2, 3}) == ["work item 2 done 2 times", "work item 3 done 0 times"]


def test_a_write_after_adoption_is_found() -> None:
    h = sound()
    h.events.append(ev(11, "transition", 1, 20, 2))
    problems = h.check({1, 2})
    assert "event 11 (transition) written by node 1 after its adoption at seq 5" in problems
    assert "session 20 went back to an earlier owner: [1, 2, 1]" in problems


def test_a_session_moving_without_an_adoption_is_found() -> None:
    h = sound()
    h.adoptions = [Adoption(dead=1, by=3, last_seq=5, at=5)]
    assert "session 20 moved from node 1 to 2 without an adoption" in h.check({1, 2})


def test_a_rotation_with_two_successors_or_none_is_found() -> None:
    h = sound()
    h.events.append(ev(11, "rotation", 2, 30, 2, rotation=8, old_session=30, new_session=11, success=True))
    h.events.append(ev(12, "rotation_handoff", 2, 40, 3, rotation=9))
    problems = h.check({1, 2})
    assert "session 11 is the successor of 2 rotations" in problems
    assert "rotation 9 never ended" in problems
    assert "rotation 8's successor 11 did not start with item 2" in problems


def test_a_successor_that_died_before_its_start_held_its_item_if_recovery_requeued_it() -> None:
    h = sound()
    # Session 11's start was never written (its node died after the hand-over)...
    h.events = [e for e in h.events if not (e.kind == "session_started" and e.session == 11)]
    assert "rotation 7's successor 11 did not start with item 1" in h.check({1, 2})
    # ... but the adopter's recovery requeued item 1 from it.
    h.events.append(ev(11, "recovered", 2, None, 1, outcome={"requeued": {"session": 11}}))
    assert h.check({1, 2}) == []


def test_the_resumption_after_an_adoption_is_the_adopter_s_first_start_of_a_held_item() -> None:
    adoption, first = sound().resumed_after(1)
    assert adoption.by == 2 and first is not None and first.seq == 7


def test_urls_are_rewritten_for_a_database_and_a_proxy() -> None:
    url = "postgres://baton:pw@127.0.0.1:5432/baton"
    assert with_database(url, "t") == "postgres://baton:pw@127.0.0.1:5432/t"
    assert host_port(url) == ("127.0.0.1", 5432)

    class P:
        port = 9

    assert through(url, P()) == "postgres://baton:pw@127.0.0.1:9/baton"  # type: ignore[arg-type]


def test_the_proxy_forwards_until_cut_then_swallows_without_closing() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = upstream.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = TcpProxy(upstream.getsockname())
    try:
        c = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
        proxy.cut()
        c.sendall(b"lost")
        c.settimeout(0.3)
        try:
            got = c.recv(4)
        except TimeoutError:
            got = None
        assert got is None, "a cut proxy must neither answer nor close"
        c.close()
    finally:
        proxy.close()
        upstream.close()
