"""A bounded load generator for vLLM's OpenAI completions API (prompts as token ids).

Keeps ``concurrency(t)`` requests in flight, spread over the current backends the way a
Service would, and stops by itself at the end of the schedule.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class LoadGenerator:
    backends: Callable[[], list[str]]  # base URLs of healthy replicas, asked before each request
    model: str
    concurrency: Callable[[float], int]  # seconds since start -> requests to keep in flight
    duration_s: float
    prompt_tokens: int = 256
    output_tokens: int = 256
    vocab: int = 32000
    seed: int = 0
    stats: LoadStats = field(default_factory=LoadStats)
    stop: threading.Event = field(default_factory=threading.Event)  # ends the run early when set

    async def _one(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        urls = self.backends()
        if not urls:
            await asyncio.sleep(0.5)
            return
        url = urls[rng.randrange(len(urls))]
        body = {"model": self.model, "prompt": [rng.randrange(10, self.vocab) for _ in range(self.prompt_tokens)],
                "max_tokens": self.output_tokens, "min_tokens": self.output_tokens, "ignore_eos": True,
                "temperature": 0.0, "detokenize": False}
        self.stats.sent += 1
        try:
            r = await http.post(f"{url}/v1/completions", json=body)
            r.raise_for_status()
            self.stats.ok += 1
        except httpx.HTTPError as exc:
            self.stats.failed += 1
            if len(self.stats.errors) < 20:
                self.stats.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            await asyncio.sleep(0.5)

    async def run(self) -> LoadStats:
        rng = random.Random(self.seed)
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0)) as http:
            while (elapsed := time.monotonic() - start) < self.duration_s and not self.stop.is_set():
                want = max(0, self.concurrency(elapsed))
                while len(tasks) < want:
                    task = asyncio.create_task(self._one(http, rng))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.sleep(0.2)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats


def run_load(gen: LoadGenerator) -> LoadStats:
    return asyncio.run(gen.run())
