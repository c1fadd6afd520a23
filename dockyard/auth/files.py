"""Creating secret files safely when several processes may start at the same moment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def create_exclusive(target: Path, content: bytes, mode: int = 0o600) -> bool:
    """Write ``content`` to ``target`` only if it does not exist yet, atomically.

    The data goes to a temporary file with its final mode first, then is hard-linked
    into place: a reader never sees a half-written file, nobody can read a secret during
    a moment of default permissions, and of two writers exactly one wins (the loser gets
    False and should read the winner's file).
    """
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temp)


def write_private(target: Path, content: bytes, mode: int = 0o600) -> None:
    """Replace ``target`` with ``content``; the file never exists with a wider mode."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
