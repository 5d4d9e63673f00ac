"""Tells whether this process runs the mypyc-compiled core or the pure-Python one."""

from __future__ import annotations

import valka.core.status

__all__ = ["compiled"]

_EXTENSION_SUFFIXES = (".so", ".pyd")


def compiled() -> bool:
    # The status module is always in the compiled set; if it is an extension module the whole
    # core came from a mypyc build.
    path = getattr(valka.core.status, "__file__", None) or ""
    return path.endswith(_EXTENSION_SUFFIXES)
