"""Telling storage that refuses writes (a read-only mount, files owned by another user)
from other failures."""

from __future__ import annotations

import errno

from dockyard.storage.driver import StorageError

REFUSED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def refuses_writes(error: StorageError) -> bool:
    """Whether ``error`` comes from storage that will not be written to, not a fault."""
    cause = error.__cause__
    return isinstance(cause, OSError) and cause.errno in REFUSED
