"""The Python SDK of Valka: create and inspect tasks (clients) and run them (worker).

```
from valka.sdk import ValkaClient, ValkaWorker, TaskContext, Retry, Fail
```

Errors raised by the clients are the classes of `valka.core.errors` (InvalidArgument,
NotFound, ResourceExhausted, Unavailable, ...), carrying the server's message.
"""

from valka.core.status import TaskStatus
from valka.sdk._backoff import Backoff
from valka.sdk.client import ValkaClient
from valka.sdk.context import TaskContext
from valka.sdk.errors import Fail, Retry
from valka.sdk.models import (
    SignalSent,
    TaskInfo,
    TaskPage,
    TaskRun,
    TaskSignal,
    TaskSpec,
    WorkerInfo,
)
from valka.sdk.schedules import MissedPolicy, ScheduleInfo
from valka.sdk.sync_client import ValkaSyncClient
from valka.sdk.worker import Handler, ValkaWorker

__all__ = [
    "Backoff",
    "Fail",
    "Handler",
    "MissedPolicy",
    "Retry",
    "ScheduleInfo",
    "SignalSent",
    "TaskContext",
    "TaskInfo",
    "TaskPage",
    "TaskRun",
    "TaskSignal",
    "TaskSpec",
    "TaskStatus",
    "ValkaClient",
    "ValkaSyncClient",
    "ValkaWorker",
    "WorkerInfo",
]
