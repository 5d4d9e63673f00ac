"""Task and worker identifiers: UUIDv7 (compiled with mypyc).

Version 7 ids start with a millisecond timestamp, so ids created later sort later and
B-tree inserts stay at the right edge of the index.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

import uuid_utils

from valka.core.errors import InvalidArgument

__all__ = ["id_timestamp_ms", "new_id", "new_uuid", "parse_id"]

# Canonical form, or 32 hex digits. The stdlib parser alone is too lenient: it also takes
# braces, "urn:uuid:" and underscores between digits (it ends in int(text, 16)).
_UUID_TEXT: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}"
)


def new_uuid() -> uuid.UUID:
    return uuid.UUID(int=uuid_utils.uuid7().int)


def new_id() -> str:
    return str(uuid_utils.uuid7())


def parse_id(text: str, field: str) -> str:
    """Return the canonical lower-case text of a UUID, or raise InvalidArgument naming field."""
    if _UUID_TEXT.fullmatch(text) is None:
        raise InvalidArgument(f"{field}: not a valid UUID", field=field)
    return str(uuid.UUID(text))


def id_timestamp_ms(id_text: str, field: str = "id") -> int:
    """Milliseconds since the Unix epoch at which a UUIDv7 was made."""
    value = uuid.UUID(parse_id(id_text, field))
    if value.version != 7:
        raise InvalidArgument(f"{field}: not a UUIDv7", field=field)
    return value.int >> 80
