"""A Python orchestrator running chat agents through ``baton serve``.

Each agent is a conversation with an OpenAI-compatible endpoint (``POST /v1/chat/completions``,
llama.cpp's ``llama-server``, vLLM, or a hosted API). The orchestrator:

* is baton's agent runtime (a :class:`RuntimeHandler`): it spawns conversations, assigns them
  work items (with the handoff of a predecessor), summarises them and replaces their history
  when baton compacts, and closes them;
* works each live session turn by turn, and reports after each turn the tokens the endpoint
  counted (``usage.prompt_tokens + usage.completion_tokens``) to baton, which decides when to
  compact and when to rotate;
* follows the fleet on the event stream: a session that starts (first, or as a rotation's
  successor) gets worked on; the run ends when every work item is done.

Usage (a server started with ``baton serve``, and its token in ``BATON_TOKEN``)::

    python examples/chat_orchestrator.py --baton http://127.0.0.1:7070 \\
        --llm http://127.0.0.1:8080 --model qwen --window 8192 --turns 6 \\
        "Write a haiku about rotation" "Explain compaction in one paragraph"

``LLM_API_KEY``, if set, is sent as the endpoint's bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from baton_client import (
    AsyncClient,
    Conflict,
    ConnectionFailed,
    NotFound,
    PermanentError,
    RuntimeHandler,
    TransientError,
    serve_runtime_async,
)
from baton_client.models import AgentType, Handoff, NewWorkItem, Summary

SUMMARY_REQUEST = {
    "compaction": "Summarise your work so far so that you can continue from the summary alone: "
    "decisions, results, and what remains. Be concise.",
    "handoff": "Write a handoff for a colleague who continues this task from your notes alone: "
    "the task, what is done, what remains, and anything they must know.",
}


@dataclass
class Conversation:
    """One agent: its model, its messages, and the tokens the endpoint last counted."""

    model: str
    messages: list[dict[str, str]]
    work_item: int | None = None
    used: int = 0


@dataclass
class ChatAgents(RuntimeHandler):
    """baton's agent runtime over an OpenAI-compatible chat endpoint."""

    llm: httpx.AsyncClient
    default_model: str
    max_tokens: int = 256
    conversations: dict[int, Conversation] = field(default_factory=dict)

    async def complete(self, messages: list[dict[str, str]], model: str) -> tuple[str, int, int]:
        """One chat completion: the reply, and the prompt and completion tokens counted."""
        try:
            response = await self.llm.post(
                "/v1/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": self.max_tokens},
            )
        except httpx.TransportError as e:
            raise TransientError(f"endpoint unreachable: {e}") from e
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"endpoint answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentError(f"endpoint answered {response.status_code}")
        body: dict[str, Any] = response.json()
        reply = str(body["choices"][0]["message"]["content"])
        usage = body.get("usage") or {}
        return reply, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))

    async def summarise(self, session: int, purpose: Literal["compaction", "handoff"]) -> Summary:
        chat = self.conversations[session]
        ask = chat.messages + [{"role": "user", "content": SUMMARY_REQUEST[purpose]}]
        text, _, completion = await self.complete(ask, chat.model)
        return {"text": text, "tokens": completion}

    def replace_history(self, session: int, summary: Summary) -> int:
        chat = self.conversations[session]
        system, task = chat.messages[0], chat.messages[1]
        chat.messages = [system, task, {"role": "assistant", "content": summary["text"]}]
        # The endpoint counts the new history on the next turn; until then, an estimate.
        chat.used = sum(len(m["content"]) for m in chat.messages) // 4 + summary["tokens"] // 2
        return chat.used

    def spawn(self, agent_type: AgentType, key: int, proposed: int) -> int:
        system = agent_type["system_prompt"] or "You are a careful assistant. Work step by step."
        model = agent_type["model"] or self.default_model
        self.conversations[proposed] = Conversation(model, [{"role": "system", "content": system}])
        return proposed

    def assign(self, session: int, work_item: NewWorkItem, handoff: Handoff | None) -> None:
        chat = self.conversations[session]
        task = work_item["text"]
        if handoff is not None:
            task += f"\n\nA colleague started this task. Their handoff:\n{handoff['text']}"
        chat.messages.append({"role": "user", "content": task})
        chat.work_item = work_item["id"]

    def close(self, session: int) -> None:
        self.conversations.pop(session, None)


class Orchestrator:
    """Works every live session for ``turns`` turns per work item, reporting usage to baton."""

    def __init__(self, baton: AsyncClient, agents: ChatAgents, turns: int) -> None:
        self.baton, self.agents, self.turns = baton, agents, turns
        self.progress: dict[int, int] = {}
        self.compacted: dict[int, asyncio.Event] = {}
        self.done: set[int] = set()
        self.workers: set[asyncio.Task[None]] = set()

    async def work(self, session: int, item: int) -> None:
        """Turns of work for ``session`` until its item has had them all, or it rotates."""
        failures = 0
        try:
            while self.progress.get(item, 0) < self.turns:
                chat = self.agents.conversations.get(session)
                if chat is None:
                    return
                ask = chat.messages + [{"role": "user", "content": "Continue."}]
                try:
                    reply, prompt, completion = await self.agents.complete(ask, chat.model)
                except TransientError:
                    failures += 1
                    if failures > 3:
                        return  # the endpoint is down: baton's timeouts take it from here
                    await asyncio.sleep(failures)  # backoff, then the same turn again
                    continue
                except PermanentError:
                    # The endpoint refused the conversation (most often: it outgrew the
                    # model's context): a fresh session continues from a handoff.
                    await self.baton.rotate_session(session)
                    return
                chat.messages = ask + [{"role": "assistant", "content": reply}]
                chat.used = prompt + completion
                self.progress[item] = self.progress.get(item, 0) + 1
                self.compacted[session] = asyncio.Event()
                reading = await self.baton.report_usage(session, chat.used, source="reported")
                if reading["phase"] == "compacting":
                    await self.compacted[session].wait()
                elif reading["phase"] != "normal":
                    return  # rotating: the successor continues from the handoff
            await self.baton.close_session(session)
        except (NotFound, Conflict, ConnectionFailed):
            return  # the session ended meanwhile (rotated, closed): its successor is worked on

    async def run(self, items: list[NewWorkItem]) -> None:
        """Submits the items and works until every one is done."""
        stop = asyncio.Event()
        runtime = asyncio.create_task(serve_runtime_async(self.baton, self.agents, stop=stop))
        # From the journal's start: no event of these items can be missed, whenever the stream
        # connects (events of other work items are skipped).
        events = self.baton.stream_events(after=0)
        await self.baton.submit_work_items(items)
        wanted = {item["id"] for item in items}
        try:
            async for event in events:
                payload = event["payload"]
                if not isinstance(payload, dict) or len(payload) != 1:
                    continue
                kind, body = next(iter(payload.items()))
                if not isinstance(body, dict) or body.get("work_item") not in wanted:
                    continue
                if kind == "session_started":
                    task = asyncio.create_task(self.work(body["session"], body["work_item"]))
                    self.workers.add(task)
                    task.add_done_callback(self.workers.discard)
                elif kind == "compaction" and body["session"] in self.compacted:
                    self.compacted[body["session"]].set()
                elif kind in ("work_item_done", "dead_letter"):
                    self.done.add(body["work_item"])
                    print(f"work item {body['work_item']}: {kind}")
                    if wanted <= self.done:
                        break
        finally:
            await events.aclose()
            stop.set()
            await runtime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baton", default="http://127.0.0.1:7070")
    parser.add_argument("--llm", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="default")
    parser.add_argument("--agent-type", default="chat")
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=256, help="per reply")
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("tasks", nargs="+")
    args = parser.parse_args()
    key = os.environ.get("LLM_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        AsyncClient(args.baton) as baton,
        httpx.AsyncClient(base_url=args.llm, headers=headers, timeout=300) as llm,
    ):
        await baton.put_agent_type(args.agent_type, window=args.window, model=args.model)
        items: list[NewWorkItem] = [
            {"id": args.first_id + i, "agent_type": args.agent_type, "text": text}
            for i, text in enumerate(args.tasks)
        ]
        agents = ChatAgents(llm=llm, default_model=args.model, max_tokens=args.max_tokens)
        await Orchestrator(baton, agents, args.turns).run(items)


if __name__ == "__main__":
    asyncio.run(main())
