"""The per-test database fixtures themselves: isolation and cleanup of crashed runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import psycopg
import pytest

from tests.pg_fixtures import (
    drop_leftover_databases,
    new_embedded_data_dir,
    remove_abandoned_data_dirs,
    unique_db_name,
    with_database,
)
from valka.db.embedded import create_database, drop_database

pytestmark = pytest.mark.integration


def database_names(admin_url: str) -> set[str]:
    with psycopg.connect(admin_url) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_each_test_gets_its_own_copy_of_the_template(
    db_url: str, template_db: str, pg_admin_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        conn.execute("CREATE TABLE scribble (v int)")
    assert row is not None
    assert row[0] != template_db
    assert row[0].startswith("valka_t_")
    with psycopg.connect(with_database(pg_admin_url, template_db)) as conn:
        exists = conn.execute("SELECT to_regclass('scribble') IS NOT NULL").fetchone()
    assert exists == (False,), "a test's writes must not reach the template"


def test_leftovers_of_dead_runs_are_dropped_and_live_ones_kept(pg_admin_url: str) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    live = unique_db_name("t")  # valka_t_<host>_<pid>_<random>
    _, _, host, _, rand = live.split("_")
    other_host = "000000" if host != "000000" else "111111"
    dead = f"valka_t_{host}_{dead_pid}_{rand}"
    # Another machine's database on a shared server: its pid means nothing here.
    foreign = f"valka_t_{other_host}_{dead_pid}_{rand}"
    for name in (live, dead, foreign):
        create_database(pg_admin_url, name)
    try:
        dropped = drop_leftover_databases(pg_admin_url)

        names = database_names(pg_admin_url)
        assert dead in dropped
        assert dead not in names
        assert {live, foreign} <= names
    finally:
        for name in (live, dead, foreign):
            drop_database(pg_admin_url, name)


def test_abandoned_embedded_data_dirs_are_removed() -> None:
    abandoned = new_embedded_data_dir()
    recent = new_embedded_data_dir()
    for folder in (abandoned, recent):
        (folder / "postgres.lock").write_text("12345\n")
    an_hour_ago = time.time() - 3600
    os.utime(abandoned / "postgres.lock", (an_hour_ago, an_hour_ago))
    try:
        removed = remove_abandoned_data_dirs()

        assert abandoned in removed
        assert not abandoned.exists()
        assert recent.exists(), "a folder touched lately may belong to a run starting now"
    finally:
        shutil.rmtree(recent, ignore_errors=True)
