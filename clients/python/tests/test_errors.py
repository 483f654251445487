"""Typed errors from the server's JSON bodies: 400, 401, 404, 405, 409, 413, 415, and a server
that is not there."""

from __future__ import annotations

import httpx
import pytest

from baton_client import (
    ApiError,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)


def test_a_wrong_token_is_unauthorized_and_never_echoed(server, token: str) -> None:
    wrong = "not-the-token-" + token[:4]
    with server.client(token=wrong) as bad:
        with pytest.raises(Unauthorized) as caught:
            bad.list_work_items()
    error = caught.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert wrong not in str(error) and token not in str(error) and token not in repr(error)
    raw = httpx.get(f"{server.url}/v1/work-items")
    assert raw.status_code == 401
    assert raw.headers.get("www-authenticate", "").startswith("Bearer")
    assert raw.json()["error"] == "unauthorized"


def test_unknown_ids_and_paths_are_not_found(client: Client) -> None:
    for call in (
        lambda: client.get_work_item(1),
        lambda: client.get_session(1),
        lambda: client.close_session(1),
        lambda: client.rotate_session(1),
        lambda: client.report_usage(1, 10),
        lambda: client.get_agent_type("x"),
        lambda: client.request("GET", "/v1/nothing-here"),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.code == "not_found"


def test_conflicts_are_409(client: Client) -> None:
    client.put_agent_type("coder", window=1000)
    client.submit_work_item(1, "coder", "a")
    with pytest.raises(Conflict) as caught:
        client.submit_work_item(1, "coder", "b")
    assert caught.value.status == 409 and caught.value.code == "conflict"


@pytest.mark.parametrize("server", [["--max-body-kib", "1"]], indirect=True)
def test_a_body_over_the_cap_is_payload_too_large(client: Client) -> None:
    client.put_agent_type("coder", window=1000)
    with pytest.raises(PayloadTooLarge) as caught:
        client.submit_work_item(1, "coder", "x" * 4096)
    assert caught.value.status == 413 and caught.value.code == "payload_too_large"
    client.submit_work_item(1, "coder", "x" * 100)  # a small one still passes


def test_malformed_bodies_and_wrong_methods_are_typed(client: Client, server) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    raw = httpx.post(f"{server.url}/v1/work-items", content=b"{not json", headers=headers)
    assert raw.status_code == 400 and raw.json()["error"] == "bad_request"
    with pytest.raises(BadRequest):
        client.request("POST", "/v1/work-items", json={"id": "seven", "agent_type": "c", "text": ""})
    with pytest.raises(BadRequest):
        client.report_usages([{"session": 1, "used": -5}])
    with pytest.raises(MethodNotAllowed):
        client.request("DELETE", "/v1/work-items")
    plain = dict(headers, **{"Content-Type": "text/plain"})
    raw = httpx.post(f"{server.url}/v1/work-items", content=b"{}", headers=plain)
    assert raw.status_code == 415
    with pytest.raises(UnsupportedMediaType):
        raise_for(raw)
    assert "stack" not in raw.text.lower() and server.token not in raw.text


def raise_for(response: httpx.Response) -> None:
    from baton_client.errors import error_from_response

    raise error_from_response(response)


def test_an_absent_server_is_a_connection_failure(token: str) -> None:
    with Client("http://127.0.0.1:9", token, timeout=2) as nobody:
        with pytest.raises(ConnectionFailed):
            nobody.list_work_items()


def test_every_api_error_names_status_code_and_message() -> None:
    error = NotFound(404, "not_found", "no session 9\x1b[2J")
    assert isinstance(error, ApiError)
    assert "\x1b" not in str(error) and "404 not_found" in str(error)
