"""Integration tests run against a real PostgreSQL: see tests/pg_fixtures.py."""

from tests.pg_fixtures import (  # noqa: F401 (fixtures are found by name)
    db_pool,
    db_url,
    empty_db_url,
    pg_admin_url,
    template_db,
)
from tests.server_fixtures import node  # noqa: F401
