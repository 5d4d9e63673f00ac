"""The cold path: one task reader per owned partition, claiming only when there is demand.

A reader sleeps until it is woken (a slot freed, a task inserted here, a notification for
its queue) or its idle poll comes round, which bounds the delay when a notification is lost.
It then claims as many ready tasks as there are free slots that can reach its partition, in
one `FOR UPDATE SKIP LOCKED` statement, and keeps claiming while full batches come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

__all__ = ["ClaimTarget", "ReaderSet"]

log = logging.getLogger("valka.reader")


class ClaimTarget(Protocol):
    def demand(self, queue: str, partition: int) -> int: ...

    async def claim(self, queue: str, partition: int, limit: int) -> int: ...


class _Reader:
    def __init__(
        self, target: ClaimTarget, queue: str, partition: int, batch: int, idle_poll_s: float
    ) -> None:
        self.target = target
        self.queue = queue
        self.partition = partition
        self.batch = batch
        self.idle_poll_s = idle_poll_s
        self.wake = asyncio.Event()
        self.wake.set()
        self.closed = False
        self.task = asyncio.create_task(self._run(), name=f"reader:{queue}:{partition}")

    async def _run(self) -> None:
        failures = 0
        # A flag as well as the cancel: in 3.11 a wait_for that completes in the same turn
        # as a cancel swallows the cancel.
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.idle_poll_s)
            self.wake.clear()
            try:
                while (want := self.target.demand(self.queue, self.partition)) > 0:
                    limit = min(want, self.batch)
                    if await self.target.claim(self.queue, self.partition, limit) < limit:
                        break
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("reader %s:%d failed to claim", self.queue, self.partition)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                self.wake.set()


class ReaderSet:
    """The readers of every queue this node serves, created on first use."""

    def __init__(
        self, target: ClaimTarget, num_partitions: int, batch: int, idle_poll_s: float
    ) -> None:
        self._target = target
        self._num_partitions = num_partitions
        self._batch = batch
        self._idle_poll_s = idle_poll_s
        self._readers: dict[str, list[_Reader]] = {}
        self._closed = False

    def wake(self, queue: str) -> None:
        if self._closed:
            return
        readers = self._readers.get(queue)
        if readers is None:
            readers = [
                _Reader(self._target, queue, p, self._batch, self._idle_poll_s)
                for p in range(self._num_partitions)
            ]
            self._readers[queue] = readers
        for reader in readers:
            reader.wake.set()

    def wake_partition(self, queue: str, partition: int) -> None:
        readers = self._readers.get(queue)
        if readers is not None and not self._closed:
            readers[partition].wake.set()

    def wake_all(self) -> None:
        for queue in list(self._readers):
            self.wake(queue)

    def queues(self) -> list[str]:
        return list(self._readers)

    async def close(self) -> None:
        self._closed = True
        readers = [r for rs in self._readers.values() for r in rs]
        for r in readers:
            r.closed = True
            r.wake.set()
        tasks = [r.task for r in readers]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._readers.clear()
