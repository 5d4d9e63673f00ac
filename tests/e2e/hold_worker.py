"""A worker process that takes assignments and never acknowledges them (then gets killed).

It prints `holding N` once it has N assignments, so the test knows when to SIGKILL it.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import grpc

from valka.v1 import worker_pb2, worker_pb2_grpc


async def main(address: str, queue: str, want: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = worker_pb2_grpc.WorkerServiceStub(channel).Session()
        await call.write(worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
            worker_id=str(uuid.uuid4()), worker_name="holder", queues=[queue],
            concurrency=want)))
        held = 0
        while True:
            frame = await call.read()
            if not isinstance(frame, worker_pb2.ServerFrame):
                return
            held += len(frame.assignments)
            if frame.assignments and held >= want:
                print(f"holding {held}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
