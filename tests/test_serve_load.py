"""Load: 64 streaming clients at once, 500 characters each, through a real server;
every one completes, within a bounded time, with exactly its own text."""

import asyncio
import json
import time

import pytest
from serving import ServerProcess, expected, httpx, metrics, tiny_checkpoint

import charrnn

CLIENTS, LENGTH = 64, 500
TIME_LIMIT = 120.0  # seconds for all of them; about 2 s on an idle 2-core machine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


async def stream_one(client: httpx.AsyncClient, body: dict) -> tuple[str, str | None, float]:
    """(text, finish reason, seconds to the first character) of one streamed request."""
    text, finish, first, start = "", None, None, time.monotonic()
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                assert choice["index"] == 0
                text += choice["text"]
                finish = choice["finish_reason"] or finish
                if first is None and choice["text"]:
                    first = time.monotonic() - start
    return text, finish, first


async def many(url: str, bodies: list[dict]):
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=TIME_LIMIT, limits=limits) as client:
        return await asyncio.gather(*(stream_one(client, body) for body in bodies))


@pytest.mark.parametrize("max_streams", [64, 16])  # all together; three quarters of them queued at first
def test_64_streaming_clients_all_get_their_own_text(checkpoint, max_streams):
    model = charrnn.load(checkpoint)
    prompts = ["", "ROMEO:", "To be", "A"]
    bodies = [dict(prompt=prompts[i % 4], max_tokens=LENGTH, seed=1000 + i, temperature=[0.6, 0.9, 1.2][i % 3],
                   stream=True, **({"top_k": 10} if i % 5 == 0 else {})) for i in range(CLIENTS)]
    with ServerProcess(checkpoint, "--max-streams", max_streams) as server:
        start = time.monotonic()
        results = asyncio.run(many(server.url, bodies))
        elapsed = time.monotonic() - start
        with httpx.Client() as client:
            after = metrics(client, server.url)
    assert elapsed < TIME_LIMIT
    for body, (text, finish, first) in zip(bodies, results):
        settings = {k: v for k, v in body.items() if k in ("temperature", "top_k", "seed")}
        assert (text, finish) == expected(model, body["prompt"], length=LENGTH, **settings), body
        assert first is not None
    assert after[("charrnn_characters_generated_total", "")] == CLIENTS * LENGTH
    assert after[("charrnn_requests_total", 'endpoint="completions",outcome="ok"')] == CLIENTS
    assert after[("charrnn_active_streams", "")] == 0 and after[("charrnn_queued_requests", "")] == 0
