"""The JSON shapes of docs/http.md as typed dictionaries.

The server's JSON is handed back as it came (plain ``dict`` and ``list``), typed with these
``TypedDict`` classes so that a type checker knows every field; nothing is copied into objects,
so a field the server adds later is not lost. Keys marked ``NotRequired`` may be absent.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict, Union

__all__ = [
    "AgentType",
    "AssignCommand",
    "BatchResult",
    "CloseCommand",
    "Command",
    "Duration",
    "Event",
    "EventPage",
    "Handoff",
    "NewWorkItem",
    "Phase",
    "Place",
    "Policy",
    "Reading",
    "ReplaceHistoryCommand",
    "Session",
    "SpawnCommand",
    "SummariseCommand",
    "Summary",
    "Usage",
    "UsageReport",
    "UsageResult",
    "WorkItem",
]

#: Where a work item is.
Place = Literal["queued", "starting", "live", "rotating", "done", "dead"]
#: A session's phase.
Phase = Literal["normal", "compacting", "rotating", "closed"]


class Duration(TypedDict):
    """A duration in the library's serde form."""

    secs: int
    nanos: int


class Policy(TypedDict, total=False):
    """The library's policy; every key optional (the server fills in ``Policy::default()``)."""

    compact_at: float
    rotate_at: float
    min_reduction: float
    max_compactions: int
    target_reduction: list[float]
    compaction_timeout: Duration
    rotation_timeout: Duration
    history_len: int
    handoff_share: float


class AgentType(TypedDict):
    """An agent type and its policy."""

    name: str
    window: int
    model: str
    system_prompt: str
    policy: Policy


class NewWorkItem(TypedDict):
    """A work item as submitted (and as given to ``assign``)."""

    id: int
    agent_type: str
    text: str


class WorkItem(TypedDict):
    """A work item and where it is."""

    id: int
    agent_type: str
    text: str
    place: Place
    session: NotRequired[int]
    reason: NotRequired[str]


class BatchResult(TypedDict):
    """One item's outcome in a batch submission."""

    id: int
    status: Literal["created", "exists", "conflict", "rejected"]
    message: NotRequired[str]


class Usage(TypedDict):
    """A session's latest reading."""

    used: int
    window: int
    ratio: float
    source: str


class Session(TypedDict):
    """A session, with its recent readings in ``history`` when fetched alone."""

    session: int
    agent_type: str
    work_item: int
    phase: Phase
    usage: NotRequired[Usage]
    compactions: int
    history: NotRequired[list[Any]]


class UsageReport(TypedDict):
    """One report of a batch (``POST /v1/usage``)."""

    session: int
    used: int
    window: NotRequired[int]
    source: NotRequired[str]


class Reading(TypedDict):
    """What a session does right after a reading was handled."""

    session: int
    phase: Phase
    successor: NotRequired[int]


class UsageResult(TypedDict):
    """One result of a batch report: a :class:`Reading`, or ``error`` for an unknown session."""

    session: int
    phase: NotRequired[Phase]
    successor: NotRequired[int]
    error: NotRequired[str]


class Event(TypedDict):
    """One event of the fleet: ``payload`` is the library's ``FleetEvent`` JSON (externally
    tagged: ``{"work_item_done": {...}}``)."""

    seq: int
    at: Any
    kind: str
    session: NotRequired[int]
    work_item: NotRequired[int]
    payload: Any


class EventPage(TypedDict):
    """A page of the journal's event log; pass ``next_after`` as ``after`` for the next page."""

    events: list[Event]
    next_after: int


class Summary(TypedDict):
    """A summary an agent wrote, and its size in tokens."""

    text: str
    tokens: int


class Handoff(TypedDict):
    """The handoff a successor starts from (``fallback``: baton wrote it, not the agent)."""

    text: str
    tokens: int
    fallback: bool


class _CommandBase(TypedDict):
    id: int
    #: This consumer's lease of the command (send it back with the answer).
    lease: int
    #: When the lease ends, in Unix milliseconds.
    lease_expires_ms: int


class SummariseCommand(_CommandBase):
    """Asks for a summary of the session's work."""

    op: Literal["summarise"]
    session: int
    purpose: Literal["compaction", "handoff"]


class ReplaceHistoryCommand(_CommandBase):
    """Asks to replace the session's history with ``summary``."""

    op: Literal["replace_history"]
    session: int
    summary: Summary


class SpawnCommand(_CommandBase):
    """Asks for a fresh session of ``agent_type``; ``session`` is the id baton proposes."""

    op: Literal["spawn"]
    agent_type: AgentType
    key: int
    session: int


class AssignCommand(_CommandBase):
    """Gives a work item to a session, with the handoff it continues from."""

    op: Literal["assign"]
    session: int
    work_item: NewWorkItem
    handoff: NotRequired[Handoff | None]


class CloseCommand(_CommandBase):
    """Ends a session."""

    op: Literal["close"]
    session: int


#: A command of the runtime queue, by ``op``.
Command = Union[SummariseCommand, ReplaceHistoryCommand, SpawnCommand, AssignCommand, CloseCommand]
