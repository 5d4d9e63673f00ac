"""Scheduler leader election: one leader per cluster, by a PostgreSQL advisory lock.

The lock lives in a session of its own, never a pooled connection: a pool would hand the
session (and the lock) to other work, or close it behind our back. The session is pinged
often; when it breaks, leadership is dropped at once (PostgreSQL releases the lock when the
session ends, so another node can take it) and this node goes back to campaigning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from valka.db.pool import connect_dedicated
from valka.db.sqlfile import load_queries

__all__ = ["LEADER_LOCK_KEY", "LeaderElection"]

log = logging.getLogger("valka.leader")

_Q: Final = load_queries("valka.db", "sql/leader.sql")

# "VALKA" in ASCII, as a 64-bit advisory lock key.
LEADER_LOCK_KEY: Final = 0x56414C4B41


class LeaderElection:
    def __init__(self, conninfo: str, node_id: str, *, on_elected: Callable[[], Awaitable[None]],
                 on_deposed: Callable[[], Awaitable[None]], ping_s: float = 0.5,
                 retry_s: float = 1.0) -> None:
        self._conninfo = conninfo
        self._node_id = node_id
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._ping_s = ping_s
        self._retry_s = retry_s
        self.is_leader = False
        self.attempts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def _run(self) -> None:
        while True:
            try:
                conn = await connect_dedicated(self._conninfo, name=f"leader:{self._node_id}")
            except Exception as exc:
                log.warning("leader election cannot connect: %s", exc)
                await asyncio.sleep(self._retry_s)
                continue
            try:
                while True:
                    cur = await conn.execute(_Q["leader_attempt_elect"],
                                             {"key": LEADER_LOCK_KEY})
                    row = await cur.fetchone()
                    self.attempts += 1
                    if row is not None and row[0]:
                        break
                    await asyncio.sleep(self._retry_s)
                await self._set(True)
                while True:
                    await asyncio.sleep(self._ping_s)
                    await conn.execute(_Q["leader_ping"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader session lost: %s", exc)
            finally:
                await self._set(False)
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(self._retry_s)

    async def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            log.info("node %s is the scheduler leader", self._node_id)
            await self._on_elected()
        else:
            log.info("node %s is no longer the scheduler leader", self._node_id)
            await self._on_deposed()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
