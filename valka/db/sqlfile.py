"""Named SQL queries kept in `.sql` files, parsed once into a dict.

A query file is a sequence of blocks::

    -- name: task_get
    -- Fetch one task by id.
    SELECT * FROM tasks WHERE id = %(id)s;

The name line opens a block, the next line is a one-line description (required, so every
query says what it is for), and the SQL runs until the next name line. Lines before the
first block may only be comments or blank (a file header). Files are read through
importlib.resources, so the same call works from the source tree and from an installed wheel.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

from valka.core.errors import ValkaError

__all__ = ["QueryFileError", "load_queries", "parse_queries"]

_NAME_LINE = re.compile(r"^--\s*name:(.*)$")
_VALID_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class QueryFileError(ValkaError):
    """A named-query file is malformed."""


def load_queries(package: str, filename: str) -> dict[str, LiteralString]:
    """Return the queries of `filename` in `package` by name.

    The file is read and parsed once per process; each call returns a fresh dict so a caller
    cannot change what another caller sees.
    """
    return dict(_load_cached(package, filename))


@functools.cache
def _load_cached(package: str, filename: str) -> dict[str, LiteralString]:
    try:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise QueryFileError(f"query file {package}/{filename} not found") from exc
    return parse_queries(text, source=f"{package}/{filename}")


def parse_queries(text: str, *, source: str = "<string>") -> dict[str, LiteralString]:
    """Parse the text of a query file; `source` names it in error messages."""
    queries: dict[str, LiteralString] = {}
    name: str | None = None
    name_lineno = 0
    body: list[str] = []
    lines = text.splitlines()

    def finish() -> None:
        if name is None:
            return
        sql = "\n".join(body).strip()
        if not _has_statement(sql):
            raise QueryFileError(f"{source}:{name_lineno}: query {name!r} has no SQL")
        # The file ships with the package and is never built from input, which is what
        # LiteralString (asked for by psycopg's typing) stands for. mypy reads
        # LiteralString as str, so no cast is needed (and strict mode rejects one).
        queries[name] = sql

    index = 0
    while index < len(lines):
        line = lines[index]
        match = _NAME_LINE.match(line.strip())
        if match is None:
            if name is None and line.strip() and not line.lstrip().startswith("--"):
                raise QueryFileError(f"{source}:{index + 1}: SQL before the first '-- name:' line")
            if name is not None:
                body.append(line.rstrip())
            index += 1
            continue
        finish()
        name = match.group(1).strip()
        name_lineno = index + 1
        body = []
        if not name:
            raise QueryFileError(f"{source}:{name_lineno}: empty query name")
        if not _VALID_NAME.match(name):
            raise QueryFileError(
                f"{source}:{name_lineno}: query name {name!r} is not lower_snake_case"
            )
        if name in queries:
            raise QueryFileError(f"{source}:{name_lineno}: duplicate query name {name!r}")
        description = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if not description.startswith("--") or not description.lstrip("-").strip():
            raise QueryFileError(
                f"{source}:{name_lineno}: query {name!r} needs a one-line '-- description'"
                " right after its name"
            )
        index += 2
    finish()
    return queries


def _has_statement(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())
