"""The chat orchestrator example, run against a real ``baton serve`` and a stand-in
OpenAI-compatible endpoint (an httpx mock transport that counts tokens by message)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import httpx

from baton_client import AsyncClient

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chat_orchestrator.py"
# Tokens the stand-in endpoint counts per message in the prompt, and per reply.
PER_MESSAGE, PER_REPLY = 80, 20


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_orchestrator", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def chat_endpoint(requests: list[dict]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        requests.append(body)
        usage = {"prompt_tokens": PER_MESSAGE * len(body["messages"]), "completion_tokens": PER_REPLY}
        reply = {"choices": [{"message": {"role": "assistant", "content": "done a step"}}], "usage": usage}
        return httpx.Response(200, json=reply)

    return httpx.MockTransport(answer)


async def test_the_chat_orchestrator_example_finishes_its_items_through_compactions(aclient: AsyncClient) -> None:
    example = load_example()
    requests: list[dict] = []
    await aclient.put_agent_type("chat", window=1000, model="stand-in")
    async with httpx.AsyncClient(base_url="http://llm", transport=chat_endpoint(requests)) as llm:
        agents = example.ChatAgents(llm=llm, default_model="stand-in")
        orchestrator = example.Orchestrator(aclient, agents, turns=8)
        items = [{"id": i, "agent_type": "chat", "text": f"task {i}"} for i in (1, 2, 3)]
        await orchestrator.run(items)
    assert orchestrator.done == {1, 2, 3}
    assert [w["place"] for w in await aclient.list_work_items()] == ["done"] * 3
    summaries = [r for r in requests if "Summarise your work" in r["messages"][-1]["content"]]
    assert summaries, "no compaction asked for a summary"
    assert all(r["model"] == "stand-in" for r in requests)
    events = [e async for e in aclient.journal_events()]
    compactions = [e for e in events if e["kind"] == "compaction"]
    assert compactions and all(e["payload"]["compaction"]["success"] for e in compactions)
