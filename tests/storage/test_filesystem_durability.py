"""The filesystem driver's staged writes are durable in order, as the system calls show.

A prepared write (a manifest PUT's files) is run under strace, and the trace is checked
for what a crash must not undo: every file's content is fsynced before its name
appears, and every rename and every new directory is fsynced before the next stage's
first rename; and for what it need not redo: a directory an earlier stage made durable
is fsynced again only when a file is renamed into it.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dockyard.storage.filesystem import _Syncs
from tests.storage.test_writeback import page_cache

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from dockyard.storage.filesystem import FilesystemDriver

    # A manifest PUT by a new tag: content, then revision and tag history, then the tag;
    # the last stage also renames into a directory an earlier stage made durable.
    STAGES = [
        {"/blobs/sha256/ab/abcd/data": b"{}", "/repo/_tagged/abcd/latest": b""},
        {
            "/repo/_manifests/revisions/sha256/abcd/link": b"sha256:abcd",
            "/repo/_manifests/tags/latest/index/sha256/abcd/link": b"sha256:abcd",
        },
        {
            "/repo/_manifests/tags/latest/current/link": b"sha256:abcd",
            "/repo/_tagged/abcd/stable": b"",
        },
    ]

    async def main() -> None:
        driver = FilesystemDriver(sys.argv[1])
        # One existing directory on the way, as in a store that already has blobs.
        await driver.write("/blobs/sha256/ab/other/data", b"x")
        print("BEGIN", flush=True)
        prepared = await driver.prepare_writes({k: v for s in STAGES for k, v in s.items()})
        # A marker before each stage: the first here, the others from the thread that
        # publishes them all.
        print("STAGE", flush=True)
        await prepared.publish_in_order(
            [list(stage) for stage in STAGES], lambda _: print("STAGE", flush=True)
        )
        print("END", flush=True)
        await driver.close()

    asyncio.run(main())
    """
)

# strace pads the pid column (``123   fsync(...)``).
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")


@dataclass
class Fsync:
    path: str
    thread: int
    start: int
    end: int = -1


@dataclass
class Trace:
    mkdirs: list[tuple[int, str]] = field(default_factory=list)
    renames: list[tuple[int, str, str]] = field(default_factory=list)
    fsyncs: list[Fsync] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)  # where each STAGE (and END) was printed


def parse(text: str, root: str) -> Trace:
    trace = Trace()
    begun = False
    pending: dict[int, Fsync] = {}
    for number, line in enumerate(text.splitlines()):
        resumed = _RESUMED.match(line)
        if resumed:
            if resumed.group(2) == "fsync" and int(resumed.group(1)) in pending:
                pending.pop(int(resumed.group(1))).end = number
            continue
        call = _CALL.match(line)
        if not call:
            continue
        thread, name, rest = int(call.group(1)), call.group(2), call.group(3)
        if name == "write" and rest.startswith("1<"):
            marker = re.search(r'"(BEGIN|STAGE|END)', rest)
            if marker and marker.group(1) == "BEGIN":
                begun = True
            elif marker:
                trace.stages.append(number)
            continue
        if not begun:
            continue
        if name in ("mkdir", "mkdirat"):
            path = re.findall(r'"([^"]*)"', rest)[0]
            if path.startswith(root):
                trace.mkdirs.append((number, path))
        elif name.startswith("rename"):
            source, dest = re.findall(r'"([^"]*)"', rest)[:2]
            trace.renames.append((number, source, dest))
        elif name == "fsync":
            fd_path = _FD_PATH.match(rest)
            assert fd_path, line
            fsync = Fsync(fd_path.group(1), thread, number)
            trace.fsyncs.append(fsync)
            if "<unfinished" in rest:
                pending[thread] = fsync
            else:
                fsync.end = number
    assert not pending, "an fsync never returned"
    return trace


def traced(tmp_path: Path, program: str) -> tuple[Trace, str]:
    """Run ``program`` (given a new store root as its argument) under strace."""
    root = tmp_path / "root"
    root.mkdir()
    output = tmp_path / "trace.txt"
    subprocess.run(
        [
            "strace", "-f", "-y", "-qq", "-o", str(output),
            "-e", "trace=fsync,rename,renameat,renameat2,mkdir,mkdirat,write",
            sys.executable, "-c", program, str(root),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    real_root = os.path.realpath(root)
    return parse(output.read_text(), real_root), real_root


def traced_write(tmp_path: Path) -> tuple[Trace, str]:
    return traced(tmp_path, WRITER)


def stage_end(trace: Trace, line: int) -> int:
    """The line where the stage in progress at ``line`` is over (the next marker)."""
    return min(marker for marker in trace.stages if marker > line)


def test_each_stage_is_durable_before_the_next_appears(tmp_path: Path) -> None:
    trace, root = traced_write(tmp_path)
    assert len(trace.renames) == 6 and len(trace.stages) == 4
    for at, source, dest in trace.renames:
        # The content was durable before the name appeared...
        assert any(f.path == source and f.end < at for f in trace.fsyncs), source
        # ...and the name is durable before the stage ends (the next stage's renames).
        end = stage_end(trace, at)
        parent = os.path.dirname(dest)
        assert any(f.path == parent and at < f.start and f.end < end for f in trace.fsyncs), dest
    for made, directory in trace.mkdirs:
        # A new directory's entry is durable before the first stage that puts a file in
        # it (or below it) is over.
        first = min(at for at, _, dest in trace.renames if dest.startswith(directory + "/"))
        end = stage_end(trace, first)
        parent = os.path.dirname(directory)
        assert any(
            f.path == parent and made < f.start and f.end < end for f in trace.fsyncs
        ), directory
    assert any(d == f"{root}/repo/_manifests/tags/latest/current" for _, d in trace.mkdirs)


def test_a_directory_is_fsynced_again_only_when_a_file_lands_in_it(tmp_path: Path) -> None:
    trace, _ = traced_write(tmp_path)
    # A directory made durable in an earlier stage is not fsynced again unless a file
    # was renamed into it: the last stage fsyncs the two it renames into, not the tag's
    # directory or ``tags`` above ``current``.
    last = [f.path for f in trace.fsyncs if trace.stages[2] < f.start < trace.stages[3]]
    assert sorted(path.split("/root/")[1] for path in last) == [
        "repo/_manifests/tags/latest/current",
        "repo/_tagged/abcd",
    ]


def test_the_fsyncs_of_a_barrier_are_issued_side_by_side(tmp_path: Path) -> None:
    trace, _ = traced_write(tmp_path)
    # The first barrier (every file's content, and the parents of the new directories)
    # is spread over several threads instead of one fsync after another.
    first = [f for f in trace.fsyncs if f.start < trace.renames[0][0]]
    assert len(first) >= 8
    assert len({f.thread for f in first}) >= 2


def test_a_failed_fsync_in_a_barrier_is_raised_after_the_others_ended(tmp_path: Path) -> None:
    syncs = _Syncs(threads=4)
    paths = [tmp_path / f"file{n}" for n in range(6)]
    descriptors = [os.open(path, os.O_WRONLY | os.O_CREAT) for path in paths]
    try:
        for fd in descriptors:
            os.write(fd, os.urandom(1 << 16))
        # A number no descriptor has (a closed one could be reused meanwhile).
        with pytest.raises(OSError) as failure:
            syncs.run([*descriptors, 1 << 30], [str(tmp_path)])
        assert failure.value.errno == errno.EBADF
        # Every other file was synced all the same: none of its pages is left dirty.
        assert all(page_cache(path).dirty == 0 for path in paths)
    finally:
        for fd in descriptors:
            os.close(fd)
        syncs.close()
    # Once closed (the driver closing), a barrier still runs, in the caller's thread.
    fd = os.open(paths[0], os.O_WRONLY)
    try:
        os.write(fd, os.urandom(1 << 16))
        syncs.run([fd], [str(tmp_path)])
        assert page_cache(paths[0]).dirty == 0
    finally:
        os.close(fd)


def test_a_barrier_of_many_fsyncs_hands_each_thread_one_task() -> None:
    # The files of a large batch settled one by one: thousands of fsyncs in a barrier,
    # taken in turn by the threads, not a future each.
    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
            self.submitted += 1
            return super().submit(*args, **kwargs)

    pool = CountingPool(4)
    ran: list[int] = []
    try:
        _Syncs(threads=4)._run([partial(ran.append, number) for number in range(500)], pool)
    finally:
        pool.shutdown()
    # Each job once, and three tasks for the pool beside the caller's own.
    assert sorted(ran) == list(range(500))
    assert pool.submitted == 3


MOVER = textwrap.dedent(
    """
    import asyncio, sys
    from dockyard.storage.filesystem import FilesystemDriver

    async def main() -> None:
        driver = FilesystemDriver(sys.argv[1])
        await driver.write("/repo/_uploads/u1/data", b"layer")
        print("BEGIN", flush=True)
        # An upload adopted as a blob: into a directory that does not exist yet.
        await driver.move("/repo/_uploads/u1/data", "/blobs/sha256/ab/abcd/data")
        print("END", flush=True)
        await driver.close()

    asyncio.run(main())
    """
)


def test_a_move_is_durable_on_both_sides_before_it_returns(tmp_path: Path) -> None:
    trace, real = traced(tmp_path, MOVER)
    ((at, source, dest),) = trace.renames
    (end,) = trace.stages
    assert dest == f"{real}/blobs/sha256/ab/abcd/data"
    # Every new directory's entry was durable before the file went into it...
    for made, directory in trace.mkdirs:
        parent = os.path.dirname(directory)
        assert any(f.path == parent and made < f.start and f.end < at for f in trace.fsyncs)
    # ...and the rename, on both sides, before the move returned.
    for side in (os.path.dirname(source), os.path.dirname(dest)):
        assert any(f.path == side and at < f.start and f.end < end for f in trace.fsyncs), side
