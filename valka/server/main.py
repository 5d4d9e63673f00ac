"""`valka-server` and `python -m valka.server`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from valka.core.config import load_config
from valka.core.errors import ValkaError
from valka.server.app import run_server

__all__ = ["add_server_arguments", "main", "serve_from_args"]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file (default: $VALKA_CONFIG or ./valka.toml)")
    parser.add_argument("--migrate-only", action="store_true",
                        help="apply pending migrations and exit")
    parser.add_argument("--grpc-addr", help="host:port for gRPC (config: grpc_addr)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: embedded)")
    parser.add_argument("--data-dir", help="folder of the embedded PostgreSQL")


def serve_from_args(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    for flag, key in (("grpc_addr", "grpc_addr"), ("database_url", "database_url"),
                      ("data_dir", "data_dir")):
        if getattr(args, flag, None):
            overrides[key] = getattr(args, flag)
    try:
        cfg = load_config(args.config, overrides=overrides)
    except ValkaError as exc:
        print(f"valka-server: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_server(cfg, migrate_only=args.migrate_only))
    except ValkaError as exc:
        print(f"valka-server: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="valka-server", description="Run a Valka node.")
    add_server_arguments(parser)
    return serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
