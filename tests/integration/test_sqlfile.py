"""Named-query files: parsing rules and loading through importlib.resources (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from valka.db.sqlfile import QueryFileError, load_queries, parse_queries

GOOD = """\
-- Header comment: what this file is about.

-- name: task_get
-- Fetch one task.
SELECT *
FROM tasks
WHERE id = %(id)s;

-- name: task_delete
-- Delete one task.
-- (a second comment line belongs to the body)
DELETE FROM tasks WHERE id = %(id)s;
"""


def test_parses_blocks_by_name() -> None:
    queries = parse_queries(GOOD)

    assert list(queries) == ["task_get", "task_delete"]
    assert queries["task_get"] == "SELECT *\nFROM tasks\nWHERE id = %(id)s;"
    assert queries["task_delete"].endswith("DELETE FROM tasks WHERE id = %(id)s;")
    assert "Fetch one task" not in queries["task_get"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: a\n-- one\nSELECT 1;\n-- name: a\n-- two\nSELECT 2;\n", "duplicate"),
        ("-- name:\n-- nameless\nSELECT 1;\n", "empty query name"),
        ("-- name: Task-Get\n-- bad name\nSELECT 1;\n", "lower_snake_case"),
        ("-- name: a\nSELECT 1;\n", "description"),
        ("-- name: a\n-- \nSELECT 1;\n", "description"),
        ("-- name: a\n", "description"),
        ("-- name: a\n-- nothing here\n\n-- just a comment\n", "has no SQL"),
        ("SELECT 0;\n-- name: a\n-- one\nSELECT 1;\n", "before the first"),
    ],
)
def test_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(QueryFileError, match=message) as caught:
        parse_queries(text, source="bad.sql")

    assert "bad.sql:" in str(caught.value)


def test_loads_from_a_package_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "sqlfile_fixture_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sql").mkdir()
    query_file = package / "sql" / "things.sql"
    query_file.write_text("-- name: thing_count\n-- Count things.\nSELECT count(*) FROM things;\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    first = load_queries("sqlfile_fixture_pkg", "sql/things.sql")
    query_file.write_text("-- name: other\n-- Changed on disk after the first load.\nSELECT 2;\n")
    first["thing_count"] = "tampered"
    second = load_queries("sqlfile_fixture_pkg", "sql/things.sql")

    assert second == {"thing_count": "SELECT count(*) FROM things;"}


def test_missing_file_is_a_clear_error() -> None:
    with pytest.raises(QueryFileError, match=r"valka\.db/sql/nope\.sql not found"):
        load_queries("valka.db", "sql/nope.sql")


def test_valkas_own_query_files_parse() -> None:
    sql_dir = Path(__file__).resolve().parents[2] / "valka" / "db" / "sql"
    names: set[str] = set()
    for path in sorted(sql_dir.glob("*.sql")):
        queries = load_queries("valka.db", f"sql/{path.name}")
        assert queries, path.name
        names.update(queries)

    assert {"migration_record", "session_configure", "database_drop"} <= names
