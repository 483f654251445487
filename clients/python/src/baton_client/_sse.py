"""A server-sent events decoder (the WHATWG rules, the parts ``baton serve`` uses).

Lines go in one at a time (without their end of line); a blank line ends a message, which comes
out as an :class:`SseMessage` when it had data. Comment lines (``:``, the server's keep-alive)
and unknown fields are skipped. A message's lines are bounded, so a hostile stream cannot grow
memory without limit.
"""

from __future__ import annotations

from dataclasses import dataclass

# One message's data may not exceed this (the server's events are a few KiB at most).
MAX_DATA = 4 << 20


@dataclass(frozen=True)
class SseMessage:
    """One dispatched message."""

    event: str
    data: str
    id: str | None


class SseDecoder:
    """Feeds lines, returns messages. ``last_id`` is the last ``id:`` seen, as the spec keeps
    it across messages (the value to send as ``Last-Event-ID``)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, line: str) -> SseMessage | None:
        """Takes one line; returns the message a blank line completes, if it had data."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._size += len(value) + 1
            if self._size > MAX_DATA:
                raise ValueError("server-sent event larger than the client accepts")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self.last_id = value
        return None

    def _dispatch(self) -> SseMessage | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return SseMessage(event=event or "message", data="\n".join(data), id=self.last_id)
