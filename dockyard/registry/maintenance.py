"""Removing abandoned upload sessions (``storage.maintenance.uploadpurging``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from dockyard.registry import layout
from dockyard.registry.gc import GarbageCollector, GcOptions
from dockyard.registry.uploads import UPLOAD_ID_PATTERN
from dockyard.storage.driver import PathNotFoundError, StorageDriver

log = logging.getLogger("dockyard.maintenance")


def parse_started_at(text: str) -> datetime | None:
    """Distribution writes RFC 3339 (``2020-04-21T05:11:14Z``, maybe with nanoseconds)."""
    text = text.strip()
    if "." in text:
        # Python reads at most microseconds; Go may write nanoseconds.
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def purge_uploads(
    driver: StorageDriver, older_than_seconds: float, dry_run: bool = False
) -> list[tuple[str, str]]:
    """Remove upload sessions started more than ``older_than_seconds`` ago.

    Returns (repository, upload id) of every session removed (or, in a dry run, that
    would be). A session whose start time cannot be read is judged by the age of its
    directory, so garbage from a crash does not stay forever.
    """
    now = datetime.now(UTC)
    collector = GarbageCollector(driver, GcOptions(dry_run=True))
    purged: list[tuple[str, str]] = []
    for name in await collector.repository_names():
        try:
            upload_ids = await driver.list(layout.uploads(name))
        except PathNotFoundError:
            continue
        for upload_id in upload_ids:
            if not UPLOAD_ID_PATTERN.match(upload_id):
                continue
            try:
                started = parse_started_at(
                    (await driver.read(layout.upload_started_at(name, upload_id))).decode(
                        "ascii", "replace"
                    )
                )
            except PathNotFoundError:
                started = None
            if started is None:
                try:
                    mtime = (await driver.stat(layout.upload_dir(name, upload_id))).mtime
                except PathNotFoundError:
                    continue
                started = datetime.fromtimestamp(mtime, UTC)
            if (now - started).total_seconds() <= older_than_seconds:
                continue
            purged.append((name, upload_id))
            if not dry_run:
                try:
                    await driver.delete(layout.upload_dir(name, upload_id))
                except PathNotFoundError:
                    continue
            log.info(
                "upload purging: %s %s/%s (started %s)",
                "would remove" if dry_run else "removed",
                name,
                upload_id,
                started.isoformat(),
            )
    return purged
