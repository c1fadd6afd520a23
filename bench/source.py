"""Which Dockyard code is measured: the working tree, or a snapshot of one commit.

Other people edit dockyard/ while a 35-minute run goes on; ``--rev`` measures a fixed
commit instead, extracted with ``git archive`` into the temp dir (nothing in the
repository changes). The server then runs with that directory as its working
directory and first on PYTHONPATH, ahead of the editable install.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bench.servers import BenchError

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DockyardSource:
    path: Path
    description: str

    def env(self) -> dict[str, str]:
        previous = os.environ.get("PYTHONPATH")
        pythonpath = str(self.path) + (os.pathsep + previous if previous else "")
        return {**os.environ, "PYTHONPATH": pythonpath}


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"git {' '.join(args)}: {error}") from error
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _byte_compile(root: Path) -> None:
    # As installing a wheel leaves a package: every process the run starts (the
    # garbage-collect command above all) then loads bytecode, whether or not the
    # environment lets Python write its own (PYTHONDONTWRITEBYTECODE).
    if not compileall.compile_dir(root / "dockyard", quiet=1):
        raise BenchError(f"could not byte-compile {root / 'dockyard'}")


def working_tree() -> DockyardSource:
    _byte_compile(REPO)
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "dockyard")
    except BenchError:
        return DockyardSource(REPO, f"working tree {REPO} (not a git checkout)")
    changes = " plus uncommitted changes in dockyard/" if dirty else ""
    return DockyardSource(REPO, f"working tree at {commit}{changes}")


def snapshot(rev: str, destination: Path) -> DockyardSource:
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    destination.mkdir(parents=True, exist_ok=True)
    archive = destination / "dockyard.tar"
    _git("archive", "--format=tar", "-o", str(archive), commit, "dockyard")
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    archive.unlink()
    _byte_compile(destination)
    # The last commit that changed dockyard/ names the code measured better than REV.
    changed = _git("log", "-1", "--format=%h %s", commit, "--", "dockyard")
    return DockyardSource(
        destination, f"dockyard/ as of {rev} ({commit[:12]}): last changed by {changed}"
    )
