"""The htpasswd user file, as Distribution reads it: ``user:bcrypt-hash`` lines only.

The file is re-read whenever it changes on disk, so users can be added or removed
without a restart (Distribution does the same). Checking a bcrypt hash costs tens of
milliseconds of CPU by design, and clients send Basic credentials with every request,
so a successful check is remembered for a short while as an HMAC of the password under
a per-process random key: the next request with the same credentials is a constant-time
comparison instead of another bcrypt run, and nothing that could be reversed into the
password is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dockyard.auth.files import create_exclusive, write_private

log = logging.getLogger("dockyard.auth")

BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
DEFAULT_COST = 10  # Go's bcrypt.DefaultCost, which Distribution uses for the file it creates
DEFAULT_USER = "docker"  # the user Distribution provisions when the file is missing
REMEMBER_SECONDS = 300.0
REMEMBER_MAX = 4096


@dataclass(frozen=True, slots=True)
class _Remembered:
    stored_hash: bytes
    mac: bytes
    until: float


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    data = password.encode()
    if len(data) > 72:
        # bcrypt only looks at 72 bytes; refusing is better than silently truncating.
        raise ValueError("a bcrypt password can be at most 72 bytes long")
    import bcrypt  # see _safe_checkpw

    return bcrypt.hashpw(data, bcrypt.gensalt(cost)).decode()


def _parse(text: str, path: str) -> dict[str, bytes]:
    entries: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            log.warning("htpasswd %s:%d: not user:hash, ignored", path, number)
            continue
        encoded = hashed.strip().encode()
        if not encoded.startswith(BCRYPT_PREFIXES):
            # Distribution accepts bcrypt only; other schemes (MD5, SHA1, crypt) are weak.
            log.warning(
                "htpasswd %s:%d: user %s has no bcrypt hash (htpasswd -B); it cannot sign in",
                path,
                number,
                user,
            )
            continue
        entries[user] = encoded
    return entries


class HtpasswdFile:
    """The users of one htpasswd file, reloaded when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._entries: dict[str, bytes] = {}
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self._remembered: OrderedDict[str, _Remembered] = OrderedDict()
        self._dummy_hashes: dict[int, bytes] = {}

    def _reload(self) -> dict[str, bytes]:
        """The entries, re-read if the file's identity, size or mtime changed."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            log.error("htpasswd %s cannot be read: %s", self.path, error.strerror or error)
            return {}
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if signature != self._signature:
                try:
                    text = Path(self.path).read_text(encoding="utf-8", errors="replace")
                except OSError as error:
                    log.error("htpasswd %s cannot be read: %s", self.path, error.strerror or error)
                    return {}
                self._entries = _parse(text, self.path)
                self._signature = signature
            return self._entries

    def users(self) -> list[str]:
        return sorted(self._reload())

    def _mac(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def remembered(self, user: str, password: str) -> bool:
        """True when these exact credentials passed bcrypt recently: cheap, constant time."""
        stored = self._reload().get(user)
        if stored is None:
            return False
        with self._lock:
            entry = self._remembered.get(user)
        if entry is None or entry.until < time.monotonic():
            return False
        # A changed hash (new password) must not keep the old password working.
        same_hash = hmac.compare_digest(entry.stored_hash, stored)
        same_password = hmac.compare_digest(entry.mac, self._mac(password.encode()))
        return same_hash and same_password

    def _remember(self, user: str, stored: bytes, password: bytes) -> None:
        with self._lock:
            self._remembered[user] = _Remembered(
                stored, self._mac(password), time.monotonic() + REMEMBER_SECONDS
            )
            self._remembered.move_to_end(user)
            while len(self._remembered) > REMEMBER_MAX:
                self._remembered.popitem(last=False)

    def _check(self, user: str, password: str) -> bool:
        data = password.encode()
        entries = self._reload()
        stored = entries.get(user)
        if stored is None:
            # Spend the same time as for a real user (same cost as the file's entries),
            # so timing does not tell which user names exist.
            cost = next((_cost(h) for h in entries.values()), DEFAULT_COST)
            dummy = self._dummy_hashes.get(cost)
            if dummy is None:
                dummy = self._dummy_hashes[cost] = hash_password("dockyard", cost).encode()
            _safe_checkpw(data[:72], dummy)
            return False
        if len(data) > 72 or not _safe_checkpw(data, stored):
            return False
        self._remember(user, stored, data)
        return True

    async def verify(self, user: str, password: str) -> bool:
        """Check a password; bcrypt runs in a thread so the event loop keeps serving."""
        if self.remembered(user, password):
            return True
        return await asyncio.to_thread(self._check, user, password)


def _cost(stored: bytes) -> int:
    try:
        return min(max(int(stored[4:6]), 4), 31)
    except ValueError:
        return DEFAULT_COST


def _safe_checkpw(password: bytes, stored: bytes) -> bool:
    # Imported when a password is first checked or hashed: a registry without an
    # htpasswd file keeps bcrypt's 0.4 MiB out of every worker.
    import bcrypt

    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:
        # A malformed hash in the file: that user cannot sign in, nothing more.
        return False


def ensure_htpasswd(path: str | os.PathLike[str]) -> Path | None:
    """Create a missing htpasswd file with one user, as Distribution does.

    Distribution provisions user ``docker`` with a random password and prints that
    password in its log. Dockyard never writes a secret to its log: the password goes
    to ``<path>.initial-password`` (mode 0600) instead, whose name is logged. Returns
    that file's path when the htpasswd file was created, None when it already existed.
    """
    target = Path(path)
    if target.exists():
        return None
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    line = f"{DEFAULT_USER}:{hash_password(password)}\n"
    secret_file = target.with_name(target.name + ".initial-password")
    if not create_exclusive(target, line.encode()):
        return None  # another process created it first; its password stands
    write_private(secret_file, (password + "\n").encode())
    log.warning(
        "htpasswd file %s was missing: created it with user %r and a random password, "
        "which is in %s (readable only by this user); read it, then delete that file",
        target,
        DEFAULT_USER,
        secret_file,
    )
    return secret_file


def set_password(
    path: str | os.PathLike[str], user: str, password: str, cost: int = DEFAULT_COST
) -> bool:
    """Add ``user`` or change its password; other lines stay as they are.

    Returns True when the user was new. The file is replaced atomically, so a server
    re-reading it sees either the old or the new version.
    """
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ValueError("a user name must be non-empty, without ':' or spaces")
    target = Path(path)
    lines = target.read_text(encoding="utf-8").splitlines() if target.exists() else []
    entry = f"{user}:{hash_password(password, cost)}"
    replaced = False
    for index, line in enumerate(lines):
        if line.strip().partition(":")[0] == user and not line.lstrip().startswith("#"):
            lines[index] = entry
            replaced = True
    if not replaced:
        lines.append(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, ("\n".join(lines) + "\n").encode())
    return not replaced
