"""The database seam: connections, migrations, named SQL and the embedded server.

Submodules are imported directly (`from valka.db.pool import open_pool`); this package
imports nothing so that loading one part never pulls in the others.
"""
