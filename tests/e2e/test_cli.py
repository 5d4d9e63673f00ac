"""The `valka` command against a real server process: output, --json and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.e2e.procs import Procs
from valka._build import compiled

pytestmark = pytest.mark.e2e


def valka(procs: Procs, *args: str, server: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["--server", procs.address] if server else []
    return subprocess.run([sys.executable, "-m", "valka", *prefix, *args], env=procs.env(),
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=procs.tmp)


def test_version_says_which_core(server_proc: Procs) -> None:
    out = valka(server_proc, "--version", server=False)
    assert out.returncode == 0
    assert f"compiled core: {'yes' if compiled() else 'no'}" in out.stdout


def test_migrate_only_applies_and_exits(server_proc: Procs, tmp_path: Path) -> None:
    with psycopg.connect(server_proc.db_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    out = subprocess.run([sys.executable, "-m", "valka", "server", "--migrate-only",
                          "--database-url", server_proc.db_url], env=server_proc.env(),
                         capture_output=True, text=True, timeout=60, check=False,
                         cwd=server_proc.tmp)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(server_proc.db_url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM valka_schema_migrations ORDER BY version")]
    assert names and names[0].startswith("0001")


def test_edited_migration_refuses_to_start(server_proc: Procs) -> None:
    with psycopg.connect(server_proc.db_url, autocommit=True) as conn:
        conn.execute("UPDATE valka_schema_migrations SET checksum = 'edited'")
    out = subprocess.run([sys.executable, "-m", "valka", "server", "--migrate-only",
                          "--database-url", server_proc.db_url], env=server_proc.env(),
                         capture_output=True, text=True, timeout=60, check=False,
                         cwd=server_proc.tmp)
    assert out.returncode == 1
    assert "0001" in out.stderr and "edited" in out.stderr


def test_task_commands(server_proc: Procs) -> None:
    server_proc.start_server()
    created = valka(server_proc, "--json", "task", "create", "--queue", "cli",
                    "--name", "t", "--input", '{"n": 1}', "--priority", "3")
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    assert task["status"] == 1 and task["input"] == {"n": 1} and task["priority"] == 3
    got = json.loads(valka(server_proc, "--json", "task", "get", task["id"]).stdout)
    assert got["id"] == task["id"]
    listed = valka(server_proc, "task", "list", "--queue", "cli")
    assert listed.returncode == 0 and task["id"] in listed.stdout and "PENDING" in listed.stdout
    cancelled = json.loads(valka(server_proc, "--json", "task", "cancel", task["id"]).stdout)
    assert cancelled["status"] == 8
    assert json.loads(valka(server_proc, "--json", "task", "runs", task["id"]).stdout) == []
    assert json.loads(valka(server_proc, "--json", "worker", "list").stdout) == []


def test_errors_are_one_line_and_non_zero(server_proc: Procs) -> None:
    server_proc.start_server()
    bad = valka(server_proc, "task", "create", "--queue", "", "--name", "t")
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "queue" in bad.stderr
    missing = valka(server_proc, "task", "get", "01a23d00-0000-7000-8000-000000000000")
    assert missing.returncode == 1 and "task_id" in missing.stderr
    bad_json = valka(server_proc, "task", "create", "--queue", "q", "--name", "t",
                     "--input", "{nope")
    assert bad_json.returncode == 1 and "--input" in bad_json.stderr


def test_sigterm_stops_the_server_cleanly(server_proc: Procs) -> None:
    proc = server_proc.start_server()
    assert server_proc.stop(proc, signal.SIGTERM) == 0
    assert "stopped" in server_proc.logs()
    assert not os.path.exists(f"/proc/{proc.pid}")


def test_queue_and_dead_letter_commands(server_proc: Procs) -> None:
    server_proc.start_server()
    created = json.loads(valka(server_proc, "--json", "task", "create", "--queue", "dq",
                               "--name", "t", "--max-retries", "0").stdout)
    with psycopg.connect(server_proc.db_url, autocommit=True) as conn:
        # Dead-lettered by hand: the CLI is what is under test here.
        conn.execute("UPDATE tasks SET status = 'DEAD_LETTER' WHERE id = %s",
                     (created["id"],))
        conn.execute("INSERT INTO dead_letter_queue (id, task_id, queue_name, task_name,"
                     " error_message, run_count) VALUES (gen_random_uuid(), %s, 'dq', 't',"
                     " 'boom', 1)", (created["id"],))
    listed = valka(server_proc, "dlq", "list", "--queue", "dq")
    assert listed.returncode == 0 and created["id"] in listed.stdout and "boom" in listed.stdout
    assert valka(server_proc, "dlq", "requeue").returncode == 1
    requeued = json.loads(valka(server_proc, "--json", "dlq", "requeue", "--all",
                                "--queue", "dq").stdout)
    assert requeued == {"requeued": [created["id"]]}
    paused = valka(server_proc, "queue", "pause", "dq")
    assert paused.returncode == 0 and "paused" in paused.stdout
    queues = json.loads(valka(server_proc, "--json", "queue", "list").stdout)
    [dq] = [q for q in queues if q["name"] == "dq"]
    assert dq["paused"] and dq["counts"] == {"PENDING": 1}
    limits = json.loads(valka(server_proc, "--json", "queue", "limits", "dq",
                              "--max-concurrency", "3", "--rate", "2.5").stdout)
    assert (limits["max_concurrency"], limits["rate_per_second"]) == (3, 2.5)
    bad = valka(server_proc, "queue", "limits", "dq", "--max-concurrency", "-1")
    assert bad.returncode == 1 and "max_concurrency" in bad.stderr
