"""End-to-end tests run real server and worker processes against a real PostgreSQL."""

from tests.e2e.procs import server_proc  # noqa: F401 (fixtures are found by name)
from tests.pg_fixtures import db_url, pg_admin_url, template_db  # noqa: F401
