"""Storage drivers: where the registry keeps its tree of blobs, links and uploads."""

from __future__ import annotations

from collections.abc import Mapping

from dockyard.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    check_path,
)
from dockyard.storage.filesystem import FilesystemDriver
from dockyard.storage.memory import MemoryDriver
from dockyard.storage.s3 import S3Driver, S3Parameters, create_s3_driver

__all__ = [
    "DEFAULT_ROOT",
    "FileInfo",
    "FileWriter",
    "FilesystemDriver",
    "InvalidOffsetError",
    "InvalidPathError",
    "MemoryDriver",
    "PathNotFoundError",
    "S3Driver",
    "S3Parameters",
    "StorageDriver",
    "StorageError",
    "check_path",
    "create_driver",
]

# Distribution's default for the filesystem driver's ``rootdirectory``.
DEFAULT_ROOT = "/var/lib/registry"


def create_driver(kind: str, params: Mapping[str, object]) -> StorageDriver:
    """The driver a configuration's ``storage`` section names, with its parameters.

    Parameters a driver does not use are ignored, as Distribution does, so that a
    registry:2 configuration works unchanged. For ``s3``, ``redirect`` (not a
    Distribution parameter: the configuration's ``storage.redirect.disable`` inverted)
    says whether blob downloads are redirected to pre-signed URLs; it defaults to true.
    """
    if kind == "filesystem":
        root = params.get("rootdirectory", DEFAULT_ROOT)
        if not isinstance(root, str) or not root:
            raise ValueError(f"storage.filesystem.rootdirectory must be a path, not {root!r}")
        return FilesystemDriver(root)
    if kind == "inmemory":
        return MemoryDriver()
    if kind == "s3":
        redirect = params.get("redirect", True)
        if not isinstance(redirect, bool):
            raise ValueError(f"redirect must be true or false, not {redirect!r}")
        return create_s3_driver(
            {key: value for key, value in params.items() if key != "redirect"}, redirect
        )
    raise ValueError(f"unknown storage driver {kind!r} (known: filesystem, inmemory, s3)")
