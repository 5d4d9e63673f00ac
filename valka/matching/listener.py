"""LISTEN for ready work inserted anywhere (another node, plain SQL) and wake its readers;
also for other cluster-wide signals (a queue's controls changed).

The notification carries the queue name only. The connection is dedicated (a pooled one
would be handed to others) and reconnects by itself; after a reconnect every reader is
woken, since notifications sent while disconnected are gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from psycopg import sql

from valka.db.pool import connect_dedicated

__all__ = ["CHANNEL", "ReadyListener"]

CHANNEL: Final = "valka_ready"

log = logging.getLogger("valka.listener")


class ReadyListener:
    def __init__(
        self,
        conninfo: str,
        on_queue: Callable[[str], None],
        on_reconnect: Callable[[], None],
        others: dict[str, Callable[[str], None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        # Channel -> what to do with a notification's payload.
        self._handlers = {CHANNEL: on_queue, **(others or {})}
        self._on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ready-listener")

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                conn = await connect_dedicated(self._conninfo, name="listener")
                try:
                    for channel in self._handlers:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected.set()
                    if not first:
                        self.reconnects += 1
                        log.info("listener reconnected")
                        self._on_reconnect()
                    first, delay = False, 0.1
                    async for note in conn.notifies():
                        self._handlers[note.channel](note.payload)
                finally:
                    self.connected.clear()
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
