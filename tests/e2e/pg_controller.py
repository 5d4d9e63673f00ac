"""Owns a private embedded PostgreSQL for one test: `pg_controller.py <data_dir>`.

Prints the URL once the server is up, then obeys one command per line on stdin:
`restart` (stop, start again, print `restarted`) and `stop`. End of input stops too, so a
test process that dies takes its PostgreSQL with it.

It runs in a process of its own because starting postgres as another user (as root) forks
without vfork, and a fork in a process with live grpc channels can leave grpc hung.
"""

from __future__ import annotations

import sys
from pathlib import Path

from valka.db.embedded import EmbeddedPostgres


def main() -> None:
    pg = EmbeddedPostgres(Path(sys.argv[1]), database="valka", durable=False)
    print(pg.start(), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "restart":
                pg.stop()
                pg.start()
                print("restarted", flush=True)
            elif command == "stop":
                break
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
