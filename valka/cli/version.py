"""The one-line answer to `valka --version`."""

from __future__ import annotations

import platform

import valka
from valka._build import compiled

__all__ = ["version_line"]


def version_line() -> str:
    core = "yes" if compiled() else "no"
    return f"valka {valka.__version__} (compiled core: {core}, python {platform.python_version()})"
