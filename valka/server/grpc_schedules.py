"""Schedule RPCs of ApiService (cron): being written; each answers UNIMPLEMENTED until then."""

from __future__ import annotations

from typing import Any

import grpc

from valka.v1 import api_pb2

__all__ = ["ScheduleRpcs"]

Ctx = grpc.aio.ServicerContext[Any, Any]

_MSG = "schedules are not available in this version"


class ScheduleRpcs:
    async def CreateSchedule(self, request: api_pb2.CreateScheduleRequest, context: Ctx
                             ) -> api_pb2.Schedule:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG)

    async def ListSchedules(self, request: api_pb2.ListSchedulesRequest, context: Ctx
                            ) -> api_pb2.ListSchedulesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG)

    async def PauseSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                            ) -> api_pb2.Schedule:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG)

    async def ResumeSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                             ) -> api_pb2.Schedule:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG)

    async def DeleteSchedule(self, request: api_pb2.ScheduleRequest, context: Ctx
                             ) -> api_pb2.DeleteScheduleResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _MSG)
