"""Lease reaper and retry promoter.

Every step is a compare-and-set over rows locked with SKIP LOCKED, so two nodes running it at
once cannot both move a task; a leader (a later step) only saves the duplicate work.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from valka.core.config import Config
from valka.db import tasks as db_tasks
from valka.db.pool import Pool

__all__ = ["Maintenance"]

log = logging.getLogger("valka.maintenance")

_BATCH: Final = 1000


class Maintenance:
    def __init__(self, cfg: Config, pool: Pool) -> None:
        self._cfg = cfg
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self.reaped_dispatching = 0
        self.reaped_running = 0
        self.promoted = 0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="maintenance")

    async def run_once(self) -> None:
        retry = self._cfg.retry
        while len(rows := await db_tasks.reap_expired_dispatching(self._pool, _BATCH)):
            self.reaped_dispatching += len(rows)
            if len(rows) < _BATCH:
                break
        while len(rows := await db_tasks.reap_expired_running(
                self._pool, _BATCH, backoff_base_s=retry.backoff_base_seconds,
                backoff_cap_s=retry.backoff_cap_seconds)):
            self.reaped_running += len(rows)
            log.info("reaped %d expired running task(s)", len(rows))
            if len(rows) < _BATCH:
                break
        while len(rows := await db_tasks.promote_due(self._pool, _BATCH)):
            self.promoted += len(rows)
            if len(rows) < _BATCH:
                break

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance pass failed")
            await asyncio.sleep(self._cfg.scheduler.reaper_interval_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
