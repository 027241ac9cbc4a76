"""Helpers for testing the asyncio services (DNS, NTP) from synchronous tests.

:class:`LoopThread` runs a service object (``async start()``/``async close()``,
``bound`` = [(host, port)]) on its own event loop in a thread, so that real
blocking clients (dig, dnspython, ntplib, chronyd) can talk to it while the test
waits on them. :class:`Sink` is an event sink that keeps what a service records.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Sink:
    """Records ``record``/``count`` calls in memory (the EventStore interface)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.counts: dict[tuple[str, str, str | None], int] = {}

    def record(self, kind: str, client: str | None, details: dict[str, Any]) -> None:
        self.events.append((kind, client, details))

    def count(self, kind: str, key: str, n: int = 1, *, client: str | None = None) -> None:
        self.counts[(kind, key, client)] = self.counts.get((kind, key, client), 0) + n


class LoopThread:
    """A started service on a private loop in a daemon thread; ``port`` is its first."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(10)
        self.port: int = server.bound[0][1]

    def call(self, function: Any, *args: Any) -> Any:
        """Run a plain function on the service's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
