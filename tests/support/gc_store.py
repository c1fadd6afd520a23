"""Garbage-collection test support: data directories measured, copied and collected.

The seed measures a registry with ``du``; these helpers measure the same thing exactly
(the sum of file sizes, so a difference of one link file shows), copy a store so that
two collectors can be run on identical data, and run both collectors as their users
do: ``python -m dockyard garbage-collect`` and Distribution's
``docker-registry garbage-collect``, each parsed from its printed output.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

import yaml

from dockyard.registry import layout
from dockyard.storage.journal import JOURNAL_PATH
from tests.support.servers import DISTRIBUTION_BINARY

V2 = Path("docker") / "registry" / "v2"
DIGEST = r"sha256:[0-9a-f]{64}"
# The length of a link file: Distribution writes the digest without a newline.
LINK_SIZE = len("sha256:") + 64

_ELIGIBLE_BLOB = re.compile(rf"^blob eligible for deletion: ({DIGEST})$")
# Dockyard names the repository; Distribution prints it on a line of its own before.
_ELIGIBLE_MANIFEST = re.compile(rf"^(?:(\S+): )?manifest eligible for deletion: ({DIGEST})$")
_DELETING_BLOB = re.compile(
    r"Deleting blob: (/docker/registry/v2/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64}))"
)


def wait_until_settled(root: Path, timeout: float = 30.0) -> None:
    """Until the journal of manifest pushes is empty: a push is settled from it within a
    tenth of a second, and until then ``du`` counts its record too."""
    journal = root / JOURNAL_PATH
    deadline = time.monotonic() + timeout
    while journal.exists() and journal.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not journal.exists() or journal.stat().st_size == 0, "the push journal never settled"


def wait_until_indexed(root: Path, repository: str, timeout: float = 30.0) -> None:
    """Until the repository's tag index is complete and settled: the first DELETE in a
    repository answers before the index of its other tags is written."""
    mark = root / layout.tags_indexed(repository).lstrip("/")
    deadline = time.monotonic() + timeout
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists(), "the tag index was never completed"
    wait_until_settled(root, timeout)


def store_size(root: Path) -> int:
    """What ``du --apparent-size -b`` says: the bytes of every regular file under ``root``,
    each counted once however many names (hard links) it has."""
    sizes: dict[tuple[int, int], int] = {}
    for path in root.rglob("*"):
        status = path.lstat()
        if S_ISREG(status.st_mode):
            sizes[status.st_dev, status.st_ino] = status.st_size
    return sum(sizes.values())


def stored_blobs(root: Path) -> dict[str, int]:
    """digest → size of every blob's data file, as Distribution's sweep sees the store."""
    found: dict[str, int] = {}
    blobs = root / V2 / "blobs" / "sha256"
    if not blobs.exists():
        return found
    for data in blobs.glob("*/*/data"):
        found[f"sha256:{data.parent.name}"] = data.stat().st_size
    return found


def newest_mtime(root: Path) -> float:
    return max((p.stat().st_mtime for p in root.rglob("*") if p.is_file()), default=0.0)


def wait_until_quiet(root: Path, seconds: float) -> None:
    """Sleep only as long as needed for every file under ``root`` to be ``seconds`` old.

    Dockyard's collector keeps blob data touched less than ``0.4 * settle`` ago (a push
    may hold it); with ``--settle 1`` that is 0.4 s, so tests wait for 0.5 s of quiet.
    Reads count too: a HEAD of a blob touches it.
    """
    while True:
        remaining = newest_mtime(root) + seconds - time.time()
        if remaining <= 0:
            return
        time.sleep(remaining + 0.01)


def copy_store(config: dict[str, Any], source_root: Path, destination: Path) -> tuple[Path, Path]:
    """Copy a data directory (modification times kept) and write a config for the copy.

    Returns (root, config path). ``config`` is the original server's configuration;
    only the root directory changes, so both collectors read identical settings.
    """
    root = destination / "data"
    shutil.copytree(source_root, root, copy_function=shutil.copy2)
    copied = copy.deepcopy(config)
    copied["storage"]["filesystem"]["rootdirectory"] = str(root)
    config_path = destination / "config.yml"
    config_path.write_text(yaml.safe_dump(copied))
    return root, config_path


@dataclass(frozen=True)
class GcRun:
    """One collector run: exit status and both streams, with the digests it named."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in (self.stdout + "\n" + self.stderr).splitlines()]

    @property
    def eligible_blobs(self) -> set[str]:
        return {m.group(1) for line in self.lines if (m := _ELIGIBLE_BLOB.match(line))}

    @property
    def eligible_manifests(self) -> set[str]:
        return {m.group(2) for line in self.lines if (m := _ELIGIBLE_MANIFEST.match(line))}

    @property
    def eligible_manifests_by_repository(self) -> set[tuple[str | None, str]]:
        return {
            (m.group(1), m.group(2)) for line in self.lines if (m := _ELIGIBLE_MANIFEST.match(line))
        }

    @property
    def deleted_blobs(self) -> set[str]:
        """Digests of the ``Deleting blob: <path>`` lines, checking each path's shape."""
        found: set[str] = set()
        for line in self.lines:
            match = _DELETING_BLOB.search(line)
            if match:
                assert match.group(3).startswith(match.group(2)), line
                found.add(f"sha256:{match.group(3)}")
        return found

    @property
    def summary(self) -> str:
        """Dockyard's last line: counts and bytes."""
        return self.stdout.strip().splitlines()[-1] if self.stdout.strip() else ""

    def check(self) -> GcRun:
        assert self.returncode == 0, f"exit {self.returncode}\n{self.stdout}\n{self.stderr}"
        return self


def dockyard_gc(config_path: Path, *options: str, timeout: float = 120.0) -> GcRun:
    """``python -m dockyard garbage-collect CONFIG [options]``, as an operator runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "dockyard", "garbage-collect", str(config_path), *options],
        capture_output=True,
        text=True,
        check=False,  # the exit status is checked with the output in hand
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return GcRun(result.returncode, result.stdout, result.stderr).check()


def distribution_gc(config_path: Path, *options: str, timeout: float = 120.0) -> GcRun:
    """Distribution 2.8's ``garbage-collect [--dry-run] [--delete-untagged] CONFIG``."""
    result = subprocess.run(
        [DISTRIBUTION_BINARY, "garbage-collect", *options, str(config_path)],
        capture_output=True,
        text=True,
        check=False,  # the exit status is checked with the output in hand
        timeout=timeout,
    )
    return GcRun(result.returncode, result.stdout, result.stderr).check()


def dockyard_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Any other ``python -m dockyard`` command; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "dockyard", *args],
        capture_output=True,
        text=True,
        check=False,  # the exit status is checked with the output in hand
        timeout=timeout,
    )
