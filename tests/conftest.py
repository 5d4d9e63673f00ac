"""Root test configuration: say which build of valka runs, and isolate tests from the shell."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc.experimental.aio import init_grpc_aio

import valka
from valka._build import compiled

# grpc's asyncio runtime shuts down (joining its poller thread) when the process's last
# channel or server goes away; mid-run that join has hung. Keeping the runtime alive for the
# whole session avoids it (grpc/grpc#22365).
init_grpc_aio()

# Variables a developer (or CI) sets on purpose for the test run itself.
KEPT_ENV = frozenset({"VALKA_TEST_DATABASE_URL", "VALKA_EXPECT_COMPILED"})


def pytest_report_header(config: pytest.Config) -> list[str]:
    build = "compiled" if compiled() else "pure"
    location = Path(valka.__file__).resolve().parent
    return [f"valka build: {build} ({valka.__version__} from {location})"]


@pytest.fixture(autouse=True, scope="session")
def _clean_valka_env() -> Iterator[None]:
    # A VALKA_* variable left in a developer's shell must never change what a test sees.
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("VALKA_") and name not in KEPT_ENV:
                mp.delenv(name)
        yield
