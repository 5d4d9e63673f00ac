"""Server configuration: defaults, then a TOML file, then VALKA_* environment, then flags.

Every layer is checked against the same schema (the Structs below), so a misspelt key is an
error that names the key wherever it came from, never a setting silently ignored. Range
checks live in one place, `validate()`, and name the key and the limit.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Final

import msgspec
import platformdirs

from valka.core.errors import ConfigError

__all__ = [
    "NON_CONFIG_ENV",
    "Config",
    "DatabaseConfig",
    "LimitsConfig",
    "MatchingConfig",
    "RetryConfig",
    "SchedulerConfig",
    "TasksConfig",
    "WorkerConfig",
    "config_keys",
    "load_config",
    "parse_env_value",
    "validate",
]

ENV_PREFIX: Final = "VALKA_"
DEFAULT_CONFIG_FILE: Final = "valka.toml"

# VALKA_* variables that are read by something other than the config loader.
NON_CONFIG_ENV: Final = frozenset(
    {"VALKA_CONFIG", "VALKA_PURE", "VALKA_SERVER", "VALKA_TOKEN", "VALKA_EXPECT_COMPILED"}
)
_NON_CONFIG_ENV_PREFIX: Final = "VALKA_TEST_"

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DatabaseConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_connections: int = 2
    max_connections: int = 10
    statement_timeout_ms: int = 30_000
    connect_timeout_s: float = 10.0


class MatchingConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    num_partitions: int = 4
    branching_factor: int = 3
    max_buffer_per_partition: int = 1000
    reader_batch_size: int = 100
    idle_poll_interval_s: float = 1.0


class LimitsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_input_bytes: int = 1_048_576
    max_output_bytes: int = 1_048_576
    max_name_length: int = 200
    max_metadata_bytes: int = 65_536
    max_grpc_message_bytes: int = 8_388_608
    max_page_size: int = 1000
    max_batch_create: int = 1000


class TasksConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    default_max_retries: int = 3
    default_timeout_seconds: int = 300
    default_priority: int = 0


class WorkerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    lease_seconds: float = 30.0
    dispatch_timeout_seconds: float = 10.0
    max_concurrency: int = 10_000

    @property
    def heartbeat_interval_seconds(self) -> float:
        # Three heartbeats per lease: one lost frame never expires a lease.
        return self.lease_seconds / 3


class RetryConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 3600.0


class SchedulerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    reaper_interval_s: float = 1.0


class Config(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    node_id: str = ""
    database_url: str = ""
    data_dir: str = ""
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    log_level: str = "INFO"
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    matching: MatchingConfig = msgspec.field(default_factory=MatchingConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)

    def resolved_data_dir(self) -> str:
        """The data folder: the configured one, else the user's data dir for valka."""
        return self.data_dir or platformdirs.user_data_dir("valka", appauthor=False)


# ---------------------------------------------------------------------------------------
# Schema: dotted key -> field type, derived from the Structs so it cannot drift from them.


@cache
def _schema() -> tuple[dict[str, object], frozenset[str]]:
    leaves: dict[str, object] = {}
    sections: set[str] = set()

    def walk(struct: type[msgspec.Struct], prefix: str) -> None:
        for info in msgspec.structs.fields(struct):
            key = prefix + info.name
            if isinstance(info.type, type) and issubclass(info.type, msgspec.Struct):
                sections.add(key)
                walk(info.type, key + ".")
            else:
                leaves[key] = info.type

    walk(Config, "")
    return leaves, frozenset(sections)


def config_keys() -> list[str]:
    """Every settable dotted key, in declaration order."""
    return list(_schema()[0])


def _is_str_sequence(typ: object) -> bool:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is list:
        return args == (str,)
    return origin is tuple and args == (str, Ellipsis)


def _type_name(typ: object) -> str:
    if typ is bool:
        return "a boolean"
    if typ is int:
        return "an integer"
    if typ is float:
        return "a number"
    if typ is str:
        return "a string"
    if _is_str_sequence(typ):
        return "a list of strings"
    return str(typ)


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def parse_env_value(text: str, typ: object) -> object:
    """Turn the text of an environment variable into a value of typ; ValueError if it can't."""
    if typ is str:
        return text
    stripped = text.strip()
    if typ is bool:
        low = stripped.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if typ is int:
        return int(stripped, 10)
    if typ is float:
        return float(stripped)
    if _is_str_sequence(typ):
        items = [item.strip() for item in text.split(",")]
        values = [item for item in items if item]
        return values if typing.get_origin(typ) is list else tuple(values)
    raise ValueError(f"unsupported config type {typ!r}")


def _convert(value: object, typ: object, key: str, where: str) -> object:
    try:
        return msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError:
        raise ConfigError(
            f"{where}: expected {_type_name(typ)}, got {_show(value)}", field=key
        ) from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_message(key: str) -> str:
    leaves, _ = _schema()
    message = f"unknown config key '{key}'"
    close = difflib.get_close_matches(key, list(leaves), n=1)
    if close:
        message += f"; did you mean '{close[0]}'?"
    return message


# ---------------------------------------------------------------------------------------
# Layers. Each returns {dotted key: value already of the field's type}.


def _file_layer(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    leaves, sections = _schema()
    out: dict[str, object] = {}

    def walk(table: Mapping[str, object], prefix: str) -> None:
        for name, value in table.items():
            key = prefix + name
            if key in sections:
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"config key '{key}' in {path} must be a table ([{key}]), "
                        f"got {_show(value)}",
                        field=key,
                    )
                walk(value, key + ".")
            elif key in leaves:
                out[key] = _convert(value, leaves[key], key, f"config key '{key}' in {path}")
            else:
                raise ConfigError(f"{_unknown_key_message(key)} (in {path})", field=key)

    walk(data, "")
    return out


def _env_layer(env: Mapping[str, str]) -> dict[str, object]:
    leaves, sections = _schema()
    out: dict[str, object] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV:
            continue
        if name.startswith(_NON_CONFIG_ENV_PREFIX):
            continue
        key = ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
        if key in sections:
            first = next(leaf for leaf in leaves if leaf.startswith(key + "."))
            example = ENV_PREFIX + "__".join(first.split(".")).upper()
            raise ConfigError(
                f"environment variable {name} names the section '{key}', not a key; "
                f"set its keys one by one, e.g. {example}",
                field=key,
            )
        if key not in leaves:
            message = f"unknown environment variable {name} (config key {key})"
            close = difflib.get_close_matches(key, list(leaves), n=1)
            if close:
                suggestion = ENV_PREFIX + "__".join(close[0].split(".")).upper()
                message += f"; did you mean {suggestion}?"
            raise ConfigError(message, field=key)
        typ = leaves[key]
        try:
            out[key] = parse_env_value(env[name], typ)
        except ValueError:
            raise ConfigError(
                f"environment variable {name} (config key {key}): "
                f"expected {_type_name(typ)}, got {_show(env[name])}",
                field=key,
            ) from None
    return out


def _override_layer(overrides: Mapping[str, object]) -> dict[str, object]:
    leaves, _ = _schema()
    out: dict[str, object] = {}
    for key, value in overrides.items():
        if key not in leaves:
            raise ConfigError(f"{_unknown_key_message(key)} (command-line override)", field=key)
        typ = leaves[key]
        where = f"override '{key}'"
        # Flags arrive as text; anything else is already typed by the caller.
        if isinstance(value, str) and typ is not str:
            try:
                out[key] = parse_env_value(value, typ)
            except ValueError:
                raise ConfigError(
                    f"{where}: expected {_type_name(typ)}, got {_show(value)}", field=key
                ) from None
        else:
            out[key] = _convert(value, typ, key, where)
    return out


def _config_path(path: str | None, env: Mapping[str, str]) -> Path | None:
    if path:
        return Path(path)
    from_env = env.get("VALKA_CONFIG", "")
    if from_env:
        return Path(from_env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective config. Later layers win: defaults, file, environment, overrides.

    `path` (else VALKA_CONFIG, else ./valka.toml when present) names the TOML file; `env`
    defaults to os.environ; `overrides` maps dotted keys (from command-line flags) to values.
    Raises ConfigError naming the key for unknown keys, wrong types and out-of-range values.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    flat: dict[str, object] = {}
    file_path = _config_path(path, environ)
    if file_path is not None:
        flat.update(_file_layer(file_path))
    flat.update(_env_layer(environ))
    if overrides:
        flat.update(_override_layer(overrides))

    level = flat.get("log_level")
    if isinstance(level, str):
        flat["log_level"] = level.strip().upper()

    nested: dict[str, object] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        table = nested
        for part in parents:
            child = table.setdefault(part, {})
            assert isinstance(child, dict)
            table = child
        table[leaf] = value
    config = msgspec.convert(nested, Config, strict=True)
    validate(config)
    return config


# ---------------------------------------------------------------------------------------
# Validation.


class _Problems:
    __slots__ = ("first_key", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.first_key: str | None = None

    def add(self, key: str, message: str) -> None:
        if self.first_key is None:
            self.first_key = key
        self.items.append(f"{key} {message}")

    def between(
        self,
        key: str,
        value: float,
        low: float,
        high: float,
        *,
        low_exclusive: bool = False,
        low_name: str | None = None,
    ) -> None:
        # Every limit is finite, so NaN and infinities fail here too.
        ok = low < value <= high if low_exclusive else low <= value <= high
        if ok:
            return
        low_text = f"{low_name} ({low})" if low_name else str(low)
        if low_exclusive:
            self.add(key, f"must be greater than {low_text} and at most {high}, got {value}")
        else:
            self.add(key, f"must be between {low_text} and {high}, got {value}")


def _check_addr(problems: _Problems, key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.add(key, f"must be HOST:PORT with a port from 0 to 65535, got {_show(value)}")


def _check_text(problems: _Problems, key: str, value: str, max_length: int) -> None:
    if len(value) > max_length:
        problems.add(key, f"must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        problems.add(key, "must not contain NUL characters")


def validate(config: Config) -> None:
    """Raise ConfigError listing every out-of-range value, each with its key and limit."""
    p = _Problems()

    _check_text(p, "node_id", config.node_id, 128)
    if any(ch.isspace() or not ch.isprintable() for ch in config.node_id):
        p.add("node_id", "must not contain whitespace or control characters")
    _check_text(p, "database_url", config.database_url, 4096)
    _check_text(p, "data_dir", config.data_dir, 4096)
    _check_addr(p, "grpc_addr", config.grpc_addr)
    _check_addr(p, "http_addr", config.http_addr)
    if config.log_level not in LOG_LEVELS:
        p.add("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {_show(config.log_level)}")

    db = config.database
    p.between("database.min_connections", db.min_connections, 1, 1000)
    p.between(
        "database.max_connections",
        db.max_connections,
        db.min_connections,
        1000,
        low_name="database.min_connections",
    )
    p.between("database.statement_timeout_ms", db.statement_timeout_ms, 0, 86_400_000)
    p.between("database.connect_timeout_s", db.connect_timeout_s, 0, 3600, low_exclusive=True)

    m = config.matching
    p.between("matching.num_partitions", m.num_partitions, 1, 256)
    p.between("matching.branching_factor", m.branching_factor, 2, 64)
    p.between("matching.max_buffer_per_partition", m.max_buffer_per_partition, 1, 1_000_000)
    p.between("matching.reader_batch_size", m.reader_batch_size, 1, 10_000)
    p.between("matching.idle_poll_interval_s", m.idle_poll_interval_s, 0, 60, low_exclusive=True)

    lim = config.limits
    payload_max = 256 * 1024 * 1024
    p.between("limits.max_input_bytes", lim.max_input_bytes, 1, payload_max)
    p.between("limits.max_output_bytes", lim.max_output_bytes, 1, payload_max)
    p.between("limits.max_name_length", lim.max_name_length, 1, 10_000)
    p.between("limits.max_metadata_bytes", lim.max_metadata_bytes, 1, payload_max)
    # A frame must be able to carry at least one full input or output plus its envelope.
    largest = max(lim.max_input_bytes, lim.max_output_bytes)
    if lim.max_grpc_message_bytes <= largest:
        p.add(
            "limits.max_grpc_message_bytes",
            f"must be greater than limits.max_input_bytes and limits.max_output_bytes "
            f"({largest}), got {lim.max_grpc_message_bytes}",
        )
    p.between("limits.max_grpc_message_bytes", lim.max_grpc_message_bytes, 1, _INT32_MAX)
    p.between("limits.max_page_size", lim.max_page_size, 1, 100_000)
    p.between("limits.max_batch_create", lim.max_batch_create, 1, 100_000)

    t = config.tasks
    p.between("tasks.default_max_retries", t.default_max_retries, 0, 1000)
    p.between("tasks.default_timeout_seconds", t.default_timeout_seconds, 1, 604_800)
    p.between("tasks.default_priority", t.default_priority, _INT32_MIN, _INT32_MAX)

    w = config.worker
    p.between("worker.lease_seconds", w.lease_seconds, 1, 86_400)
    p.between(
        "worker.dispatch_timeout_seconds", w.dispatch_timeout_seconds, 0, 3600, low_exclusive=True
    )
    p.between("worker.max_concurrency", w.max_concurrency, 1, 1_000_000)

    r = config.retry
    p.between("retry.backoff_base_seconds", r.backoff_base_seconds, 0, 86_400, low_exclusive=True)
    p.between(
        "retry.backoff_cap_seconds",
        r.backoff_cap_seconds,
        r.backoff_base_seconds,
        30 * 86_400,
        low_name="retry.backoff_base_seconds",
    )

    p.between(
        "scheduler.reaper_interval_s", config.scheduler.reaper_interval_s, 0, 60, low_exclusive=True
    )

    if p.items:
        raise ConfigError("invalid config: " + "; ".join(p.items), field=p.first_key)
