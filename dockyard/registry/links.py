"""Link files: a small file whose content is a digest, as Distribution writes them."""

from __future__ import annotations

from dockyard.errors import DigestInvalid
from dockyard.registry.digest import Digest
from dockyard.storage.driver import PathNotFoundError, StorageDriver


async def read_link(driver: StorageDriver, path: str) -> Digest | None:
    """The digest a link holds, or None when it is missing or does not hold one.

    A damaged link is treated as missing rather than trusted: it must never make the
    registry serve the wrong content.
    """
    try:
        return parse_link(await driver.read(path))
    except PathNotFoundError:
        return None


def parse_link(data: bytes | None) -> Digest | None:
    """The digest a link's content holds; None for none (or no content: no link)."""
    if data is None:
        return None
    try:
        return Digest.parse(data.decode("ascii", "replace").strip())
    except DigestInvalid:
        return None


async def write_link(driver: StorageDriver, path: str, digest: Digest) -> None:
    await driver.write(path, str(digest).encode("ascii"))


async def delete_if_exists(driver: StorageDriver, path: str) -> bool:
    try:
        await driver.delete(path)
    except PathNotFoundError:
        return False
    return True
