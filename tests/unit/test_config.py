from __future__ import annotations

import os
from pathlib import Path

import pytest

from valka.core.config import (
    Config,
    DatabaseConfig,
    MatchingConfig,
    config_keys,
    load_config,
    parse_env_value,
    validate,
)
from valka.core.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_config_file_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_config reads ./valka.toml when present; run every test where there is none.
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "valka.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.node_id == ""
    assert config.database_url == ""
    assert config.grpc_addr == "127.0.0.1:50051"
    assert config.http_addr == "127.0.0.1:8080"
    assert config.log_level == "INFO"
    assert config.database.min_connections == 2
    assert config.database.max_connections == 10
    assert config.matching.num_partitions == 4
    assert config.matching.branching_factor == 3
    assert config.limits.max_grpc_message_bytes > config.limits.max_input_bytes
    assert config.tasks.default_max_retries == 3
    assert config.worker.lease_seconds == 30.0
    assert config.worker.heartbeat_interval_seconds == 10.0
    assert config.retry.backoff_cap_seconds == 3600.0
    assert config.scheduler.reaper_interval_s == 1.0
    validate(config)


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.node_id = "x"  # type: ignore[misc]


def test_heartbeat_interval_is_derived_not_a_key() -> None:
    assert "worker.heartbeat_interval_seconds" not in config_keys()
    config = load_config(env={"VALKA_WORKER__LEASE_SECONDS": "9"})
    assert config.worker.heartbeat_interval_seconds == 3.0


def test_data_dir_defaults_to_the_user_data_dir() -> None:
    assert load_config(env={}).resolved_data_dir().endswith("valka")
    assert load_config(env={"VALKA_DATA_DIR": "/srv/v"}).resolved_data_dir() == "/srv/v"


def test_toml_file_layers_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        node_id = "node-a"
        log_level = "debug"
        [matching]
        num_partitions = 8
        idle_poll_interval_s = 2
        [database]
        max_connections = 20
        """,
    )
    config = load_config(path, env={})
    assert config.node_id == "node-a"
    assert config.log_level == "DEBUG"
    assert config.matching.num_partitions == 8
    assert config.matching.idle_poll_interval_s == 2.0
    assert config.matching.branching_factor == 3
    assert config.database == DatabaseConfig(max_connections=20)


def test_config_file_from_env_and_from_cwd(tmp_path: Path) -> None:
    other = write(tmp_path, "node_id = 'from-env-path'\n", "other.toml")
    assert load_config(env={"VALKA_CONFIG": other}).node_id == "from-env-path"
    write(tmp_path, "node_id = 'from-cwd'\n")
    assert load_config(env={}).node_id == "from-cwd"
    # An explicit path wins over both.
    explicit = write(tmp_path, "node_id = 'explicit'\n", "explicit.toml")
    assert load_config(explicit, env={"VALKA_CONFIG": other}).node_id == "explicit"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"), env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(env={"VALKA_CONFIG": str(tmp_path / "nope.toml")})


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_env_layers_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[matching]\nnum_partitions = 8\nbranching_factor = 4\n")
    config = load_config(
        path,
        env={
            "VALKA_MATCHING__NUM_PARTITIONS": "16",
            "VALKA_DATABASE_URL": "postgresql://db/valka",
            "VALKA_WORKER__LEASE_SECONDS": "12.5",
            "VALKA_LOG_LEVEL": "warning",
            "HOME": "/root",
        },
    )
    assert config.matching.num_partitions == 16
    assert config.matching.branching_factor == 4
    assert config.database_url == "postgresql://db/valka"
    assert config.worker.lease_seconds == 12.5
    assert config.log_level == "WARNING"


def test_env_names_that_are_not_config_keys_are_allowed() -> None:
    env = {
        "VALKA_PURE": "1",
        "VALKA_SERVER": "127.0.0.1:50051",
        "VALKA_TOKEN": "secret",
        "VALKA_EXPECT_COMPILED": "0",
        "VALKA_TEST_DATABASE_URL": "postgresql://x",
        "VALKA_TEST_ANYTHING": "y",
    }
    assert load_config(env=env) == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        (" off ", False),
    ],
)
def test_parse_env_bool(text: str, expected: bool) -> None:
    assert parse_env_value(text, bool) is expected


def test_parse_env_other_types() -> None:
    assert parse_env_value(" 42 ", int) == 42
    assert parse_env_value("-7", int) == -7
    assert parse_env_value("2.5", float) == 2.5
    assert parse_env_value("1e3", float) == 1000.0
    assert parse_env_value(" keep spaces ", str) == " keep spaces "
    assert parse_env_value("a, b,,c ", list[str]) == ["a", "b", "c"]
    assert parse_env_value("", list[str]) == []
    assert parse_env_value("a,b", tuple[str, ...]) == ("a", "b")


@pytest.mark.parametrize(("text", "typ"), [("maybe", bool), ("1.5", int), ("x", float), ("", int)])
def test_parse_env_rejects_bad_text(text: str, typ: type) -> None:
    with pytest.raises(ValueError):
        parse_env_value(text, typ)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[matching]\nnum_partition = 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "unknown config key 'matching.num_partition'" in message
    assert "did you mean 'matching.num_partitions'" in message
    assert path in message
    assert info.value.field == "matching.num_partition"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("nodeid = 'a'\n", "nodeid"),
        ("[cluster]\nport = 1\n", "cluster"),
        ("[matching.deeper]\nx = 1\n", "matching.deeper"),
    ],
)
def test_unknown_keys_and_sections_in_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(path, env={})


def test_section_given_as_a_value_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "matching = 3\n")
    with pytest.raises(ConfigError, match=r"'matching' .* must be a table"):
        load_config(path, env={})


def test_unknown_key_in_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"VALKA_MATCHING__NUM_PARTITION": "8"})
    assert str(info.value).startswith(
        "unknown environment variable VALKA_MATCHING__NUM_PARTITION "
        "(config key matching.num_partition)"
    )
    assert "VALKA_MATCHING__NUM_PARTITIONS" in str(info.value)


def test_env_naming_a_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="VALKA_MATCHING names the section 'matching'"):
        load_config(env={"VALKA_MATCHING": "8"})


def test_single_underscore_does_not_nest() -> None:
    with pytest.raises(ConfigError, match=r"config key matching_num_partitions\)"):
        load_config(env={"VALKA_MATCHING_NUM_PARTITIONS": "8"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[matching]\nnum_partitions = '8'\n", "'matching.num_partitions' .*expected an integer"),
        ("[matching]\nnum_partitions = 8.0\n", "expected an integer, got 8.0"),
        ("[worker]\nlease_seconds = true\n", "'worker.lease_seconds' .*expected a number"),
        ("node_id = 5\n", "'node_id' .*expected a string, got 5"),
        ("node_id = [1]\n", "'node_id' .*expected a string"),
    ],
)
def test_wrong_type_in_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_wrong_type_in_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"VALKA_MATCHING__NUM_PARTITIONS": "eight"})
    assert str(info.value) == (
        "environment variable VALKA_MATCHING__NUM_PARTITIONS (config key "
        "matching.num_partitions): expected an integer, got 'eight'"
    )
    assert info.value.field == "matching.num_partitions"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"VALKA_MATCHING__NUM_PARTITIONS": "0"},
            "matching.num_partitions must be between 1 and 256, got 0",
        ),
        (
            {"VALKA_MATCHING__NUM_PARTITIONS": "257"},
            "matching.num_partitions must be between 1 and 256",
        ),
        (
            {"VALKA_MATCHING__BRANCHING_FACTOR": "1"},
            "matching.branching_factor must be between 2 and 64",
        ),
        (
            {"VALKA_MATCHING__READER_BATCH_SIZE": "10001"},
            "matching.reader_batch_size must be between 1 and 10000",
        ),
        (
            {"VALKA_MATCHING__IDLE_POLL_INTERVAL_S": "0"},
            "idle_poll_interval_s must be greater than 0 and at most 60",
        ),
        (
            {"VALKA_MATCHING__IDLE_POLL_INTERVAL_S": "61"},
            "idle_poll_interval_s must be greater than 0",
        ),
        (
            {"VALKA_MATCHING__IDLE_POLL_INTERVAL_S": "nan"},
            "idle_poll_interval_s must be greater than 0",
        ),
        (
            {"VALKA_MATCHING__IDLE_POLL_INTERVAL_S": "inf"},
            "idle_poll_interval_s must be greater than 0",
        ),
        ({"VALKA_DATABASE__MIN_CONNECTIONS": "0"}, "database.min_connections must be between 1"),
        (
            {"VALKA_DATABASE__MIN_CONNECTIONS": "5", "VALKA_DATABASE__MAX_CONNECTIONS": "4"},
            "database.max_connections must be between database.min_connections \\(5\\)",
        ),
        (
            {"VALKA_LIMITS__MAX_INPUT_BYTES": "9000000"},
            "limits.max_grpc_message_bytes must be greater than limits.max_input_bytes",
        ),
        (
            {"VALKA_TASKS__DEFAULT_MAX_RETRIES": "-1"},
            "tasks.default_max_retries must be between 0 and 1000",
        ),
        (
            {"VALKA_TASKS__DEFAULT_TIMEOUT_SECONDS": "604801"},
            "default_timeout_seconds must be between 1 and 604800",
        ),
        ({"VALKA_WORKER__LEASE_SECONDS": "0.5"}, "worker.lease_seconds must be between 1"),
        (
            {"VALKA_RETRY__BACKOFF_CAP_SECONDS": "0.5"},
            "retry.backoff_cap_seconds must be between retry.backoff_base_seconds \\(1.0\\)",
        ),
        (
            {"VALKA_SCHEDULER__REAPER_INTERVAL_S": "-1"},
            "scheduler.reaper_interval_s must be greater than 0",
        ),
        ({"VALKA_LOG_LEVEL": "loud"}, "log_level must be one of DEBUG, INFO"),
        ({"VALKA_GRPC_ADDR": "localhost"}, "grpc_addr must be HOST:PORT"),
        ({"VALKA_HTTP_ADDR": "127.0.0.1:70000"}, "http_addr must be HOST:PORT"),
        ({"VALKA_NODE_ID": "has space"}, "node_id must not contain whitespace"),
    ],
)
def test_out_of_range_values_name_key_and_limit(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            env={"VALKA_MATCHING__NUM_PARTITIONS": "0", "VALKA_MATCHING__BRANCHING_FACTOR": "0"}
        )
    assert "matching.num_partitions" in str(info.value)
    assert "matching.branching_factor" in str(info.value)
    assert info.value.field == "matching.num_partitions"


def test_validate_checks_a_config_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"matching\.num_partitions"):
        validate(Config(matching=MatchingConfig(num_partitions=1000)))


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc_addr = '0.0.0.0:1'\n[matching]\nnum_partitions = 8\n")
    config = load_config(
        path,
        env={"VALKA_MATCHING__NUM_PARTITIONS": "16", "VALKA_GRPC_ADDR": "0.0.0.0:2"},
        overrides={"matching.num_partitions": 32, "grpc_addr": "0.0.0.0:3"},
    )
    assert config.matching.num_partitions == 32
    assert config.grpc_addr == "0.0.0.0:3"


def test_overrides_parse_text_and_check_types() -> None:
    config = load_config(
        env={}, overrides={"worker.lease_seconds": "45", "tasks.default_priority": 5}
    )
    assert config.worker.lease_seconds == 45.0
    assert config.tasks.default_priority == 5
    with pytest.raises(
        ConfigError, match=r"override 'matching\.num_partitions': expected an integer"
    ):
        load_config(env={}, overrides={"matching.num_partitions": "many"})
    with pytest.raises(
        ConfigError, match=r"override 'matching\.num_partitions': expected an integer"
    ):
        load_config(env={}, overrides={"matching.num_partitions": 2.5})
    with pytest.raises(ConfigError, match=r"unknown config key 'matching\.partitions'"):
        load_config(env={}, overrides={"matching.partitions": 2})


def test_config_keys_cover_every_section() -> None:
    keys = config_keys()
    assert len(keys) == len(set(keys))
    sections = {key.split(".")[0] for key in keys if "." in key}
    assert sections == {"database", "matching", "limits", "tasks", "worker", "retry", "scheduler"}
    assert "node_id" in keys


def test_shell_valka_variables_never_reach_a_test() -> None:
    # tests/conftest.py clears them; a stray VALKA_MATCHING__NUM_PARTITIONS=0 in a developer's
    # shell would otherwise break this load.
    kept = {"VALKA_TEST_DATABASE_URL", "VALKA_EXPECT_COMPILED"}
    assert [name for name in os.environ if name.startswith("VALKA_") and name not in kept] == []
    assert load_config() == Config()
