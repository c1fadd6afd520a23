"""One suite for every storage driver: each test runs against each of them.

Tests of behaviour only one driver can have (files on disk, symbolic links) come last
and say which driver they are for. The s3 driver runs against a real S3-compatible
server (moto in server mode, one process for the session), with a fresh bucket per test.

Object stores have no empty directories: a directory is there while a key lies below
it. Where a test empties a directory, :func:`assert_empty_directory` accepts "gone" for
those drivers and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from dockyard.coordination.fences import FencedDriver, Fences
from dockyard.storage import (
    FileInfo,
    FilesystemDriver,
    InvalidOffsetError,
    InvalidPathError,
    MemoryDriver,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    create_driver,
)
from dockyard.storage import filesystem as filesystem_module
from dockyard.storage.delegating import DelegatingDriver
from dockyard.storage.driver import DeferredWrites
from dockyard.storage.filesystem import (
    BULK_WRITES,
    PLAIN_DIRS_REMEMBERED,
    PLAIN_LISTINGS_REMEMBERED,
    PLAIN_PATHS_REMEMBERED,
    SETTLED_AFTER_NS,
    SMALL_DIRECTORY,
    SMALL_FILE_LIMIT,
    _Listings,
    _read_file,
    _Shapes,
    _SmallFiles,
    _WideListing,
)
from tests.s3.moto_server import MotoServer
from tests.support.redis_server import RedisServer

MiB = 1 << 20
# s3-fenced: the s3 driver as replicas sharing a Redis run it, holds and collection
# moves fenced against each other (dockyard.coordination.fences).
# s3-rgw: the s3 driver on Ceph's RADOS Gateway (tests/s3/rgw_server.py) instead of moto.
DRIVERS = ["filesystem", "inmemory", "s3", "s3-fenced", "s3-rgw"]
# Drivers whose directories exist only through the files below them.
IMPLICIT_DIRECTORIES = {"s3"}


@pytest.fixture(params=DRIVERS)
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    if request.param == "s3-rgw":
        from tests.s3.fixtures import session_rgw_server

        rgw = session_rgw_server(request)
        bucket = rgw.new_bucket()
        instance = create_driver("s3", rgw.driver_params(bucket))
        yield instance
        await instance.close()
        rgw.remove_bucket(bucket)
        return
    if request.param in ("s3", "s3-fenced"):
        moto: MotoServer = request.getfixturevalue("moto_server")
        instance = create_driver("s3", moto.driver_params(moto.new_bucket()))
        client: aioredis.Redis | None = None
        if request.param == "s3-fenced":
            redis: RedisServer = request.getfixturevalue("redis_server")
            client = aioredis.Redis(host="127.0.0.1", port=redis.port)
            instance = FencedDriver(instance, Fences(client, f"suite-{uuid.uuid4().hex}:"))
        yield instance
        await instance.close()
        if client is not None:
            await client.aclose()
        moto.reset()
        return
    # The root does not exist yet, as on a fresh installation.
    instance = create_driver(request.param, {"rootdirectory": str(tmp_path / "root")})
    yield instance
    await instance.close()


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def fs(fs_root: Path) -> FilesystemDriver:
    return FilesystemDriver(str(fs_root))


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def walk(driver: StorageDriver, path: str) -> list[FileInfo]:
    return [info async for info in driver.walk(path)]


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


async def assert_empty_directory(driver: StorageDriver, path: str) -> None:
    """``path`` is an empty directory, or gone where directories are implicit."""
    if driver.name in IMPLICIT_DIRECTORIES:
        with pytest.raises(PathNotFoundError):
            await driver.list(path)
        with pytest.raises(PathNotFoundError):
            await walk(driver, path)
        return
    assert await driver.list(path) == []
    assert await walk(driver, path) == []


def assert_plain_storage_error(error: pytest.ExceptionInfo[StorageError]) -> None:
    # Both drivers must fail the same way, not merely both fail.
    assert type(error.value) is StorageError


# --- reading and writing whole files --------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"sha256:" + b"a" * 64, bytes(range(256)) * 1000])
async def test_write_then_read_round_trips(driver: StorageDriver, content: bytes) -> None:
    await driver.write("/docker/registry/v2/file", content)
    assert await driver.read("/docker/registry/v2/file") == content


# A write that need not be durable (a cache of other files) is otherwise the same write.
@pytest.mark.parametrize("durable", [True, False])
async def test_write_replaces_the_whole_content(driver: StorageDriver, durable: bool) -> None:
    await driver.write("/d/f", b"a much longer first version", durable)
    await driver.write("/d/f", b"short", durable)
    assert await driver.read("/d/f") == b"short"
    assert (await driver.stat("/d/f")).size == 5
    assert await driver.list("/d") == ["f"]  # nothing left beside it


@pytest.mark.parametrize("durable", [True, False])
async def test_write_creates_parent_directories(driver: StorageDriver, durable: bool) -> None:
    await driver.write("/a/b/c/file", b"x", durable)
    assert await driver.list("/a") == ["b"]
    assert await driver.list("/a/b") == ["c"]
    assert (await driver.stat("/a/b")).is_dir
    assert await driver.read("/a/b/c/file") == b"x"


@pytest.mark.parametrize("durable", [True, False])
async def test_write_over_a_directory_fails_and_keeps_it(
    driver: StorageDriver, durable: bool
) -> None:
    await driver.write("/dir/child", b"x")
    with pytest.raises(StorageError) as error:
        await driver.write("/dir", b"y", durable)
    assert_plain_storage_error(error)
    assert await driver.read("/dir/child") == b"x"
    assert await driver.list("/dir") == ["child"]


async def test_write_below_a_file_fails(driver: StorageDriver) -> None:
    await driver.write("/file", b"x")
    with pytest.raises(StorageError) as error:
        await driver.write("/file/child", b"y")
    assert_plain_storage_error(error)
    assert await driver.read("/file") == b"x"


async def test_read_of_a_directory_is_not_found(driver: StorageDriver) -> None:
    await driver.write("/dir/child", b"x")
    with pytest.raises(PathNotFoundError):
        await driver.read("/dir")


async def test_large_read(driver: StorageDriver) -> None:
    content = os.urandom(3 * MiB + 17)
    await driver.write("/big", content)
    assert await driver.read("/big") == content


async def test_read_each_reads_every_file_in_order_none_where_there_is_none(
    driver: StorageDriver,
) -> None:
    # More than a window of reads at a time, files small and large, and no files.
    files = {
        f"/tags/t{number:02d}/current/link": f"sha256:{number}".encode() for number in range(40)
    }
    files["/tags/empty"] = b""
    files["/tags/large"] = os.urandom(3 * MiB + 17)
    for path, data in files.items():
        await driver.write(path, data)
    absent = ["/tags/absent", "/tags/t00", "/tags/empty/below", "/absent/deeper"]
    paths = sorted(files) + absent + sorted(files)[:3]
    found = await driver.read_each(paths)
    assert found == [files[path] if path in files else None for path in paths]
    assert await driver.read_each([]) == []


# --- prepared writes --------------------------------------------------------------------


async def files_below(driver: StorageDriver, path: str) -> list[str]:
    try:
        return sorted(info.path for info in await walk(driver, path) if not info.is_dir)
    except PathNotFoundError:
        return []


PREPARED = {
    "/repo/_manifests/revisions/sha256/ab/link": b"sha256:ab",
    "/repo/_manifests/tags/t/index/sha256/ab/link": b"sha256:ab",
    "/repo/_manifests/tags/t/current/link": b"sha256:ab",
}


async def test_prepared_writes_appear_only_when_published(driver: StorageDriver) -> None:
    revision, index, current = PREPARED
    async with await driver.prepare_writes(PREPARED) as prepared:
        with pytest.raises(PathNotFoundError):
            await driver.read(revision)
        assert await files_below(driver, "/repo") == []
        await prepared.publish([revision])
        assert await driver.read(revision) == b"sha256:ab"
        assert await files_below(driver, "/repo") == [revision]
        await prepared.publish([index, current])
    for path, data in PREPARED.items():
        assert await driver.read(path) == data
    assert await driver.list("/repo/_manifests/tags/t") == ["current", "index"]
    assert await files_below(driver, "/repo") == sorted(PREPARED)


async def test_stages_published_in_order_all_appear(driver: StorageDriver) -> None:
    revision, index, current = PREPARED
    calls: list[int] = []
    async with await driver.prepare_writes(PREPARED) as prepared:
        await prepared.publish_in_order([[revision], [index], [current]], calls.append)
    # ``between`` runs before the second and the third stage only.
    assert calls == [1, 2]
    for path, data in PREPARED.items():
        assert await driver.read(path) == data


class Refused(Exception):
    pass


@pytest.mark.parametrize("stages_before_refusal", [1, 2])
async def test_a_refusal_between_stages_stops_the_later_ones(
    driver: StorageDriver, stages_before_refusal: int
) -> None:
    revision, index, current = PREPARED

    def between(stage: int) -> None:
        if stage == stages_before_refusal:
            raise Refused()

    with pytest.raises(Refused):
        async with await driver.prepare_writes(PREPARED) as prepared:
            await prepared.publish_in_order([[revision], [index], [current]], between)
    published = [revision, index][:stages_before_refusal]
    assert await files_below(driver, "/repo") == sorted(published)
    for path in published:
        assert await driver.read(path) == PREPARED[path]
    # The refused stages left no directory behind either (a tag's would list the tag).
    if stages_before_refusal == 1:
        assert await driver.list("/repo/_manifests") == ["revisions"]
    else:
        assert await driver.list("/repo/_manifests/tags/t") == ["index"]


@pytest.mark.parametrize("replayable", [False, True])
async def test_a_copy_holds_its_source_bytes_and_outlives_its_changes(
    driver: StorageDriver, replayable: bool
) -> None:
    revision, index, current = PREPARED
    entry = "/repo/_manifests/revisions/sha256/ab/tagged.t"
    files = {**PREPARED, entry: PREPARED[index], "/odd": b"not the source's bytes"}
    async with await driver.prepare_writes(
        files, replayable=replayable, copies={entry: index, "/odd": index}
    ) as prepared:
        await prepared.publish_in_order([[entry, "/odd"], [revision, index], [current]])
    assert await driver.read(entry) == b"sha256:ab"
    assert await driver.read("/odd") == b"not the source's bytes"
    # The source replaced, then removed: the copy stays as it was.
    await driver.write(index, b"sha256:cd")
    assert await driver.read(entry) == b"sha256:ab"
    await driver.delete("/repo/_manifests/tags")
    assert await driver.read(entry) == b"sha256:ab"
    assert await driver.list("/repo/_manifests/revisions/sha256/ab") == ["link", "tagged.t"]


@pytest.mark.parametrize("replayable", [False, True])
async def test_a_copy_of_a_stored_file_holds_the_batch_bytes_whatever_is_stored(
    driver: StorageDriver, replayable: bool
) -> None:
    await driver.write("/a/link", b"sha256:ab")
    await driver.write("/a/longer", b"sha256:ab and more")
    await driver.write("/b/there", b"sha256:older")
    files = dict.fromkeys(["/b/same", "/b/longer", "/b/gone", "/b/there", "/c/new"], b"sha256:ab")
    copies = {
        "/b/same": "/a/link",
        "/b/longer": "/a/longer",
        "/b/gone": "/a/missing",
        # Where a file already is, and in a directory not made yet.
        "/b/there": "/a/link",
        "/c/new": "/a/link",
    }
    async with await driver.prepare_writes(
        files, replayable=replayable, copies=copies
    ) as prepared:
        await prepared.publish(list(files))
    for path in files:
        assert await driver.read(path) == b"sha256:ab"
    assert await driver.read("/a/longer") == b"sha256:ab and more"
    # The source replaced, then removed: the copies stay as they were.
    await driver.write("/a/link", b"sha256:cd")
    assert await driver.read("/b/same") == b"sha256:ab"
    await driver.delete("/a")
    assert await driver.list("/b") == ["gone", "longer", "same", "there"]
    assert await driver.read("/b/same") == b"sha256:ab"
    assert await driver.read("/b/there") == b"sha256:ab"
    assert await driver.read("/c/new") == b"sha256:ab"


@pytest.mark.parametrize("replayable", [False, True])
async def test_a_copy_of_a_stored_file_replaced_before_publishing_holds_the_batch_bytes(
    driver: StorageDriver, replayable: bool
) -> None:
    await driver.write("/a/link", b"sha256:ab")
    await driver.write("/b/other", b"")  # the copy's directory is there
    files = {"/b/copy": b"sha256:ab"}
    async with await driver.prepare_writes(
        files, replayable=replayable, copies={"/b/copy": "/a/link"}
    ) as prepared:
        # Between getting ready and publishing, the source changes.
        await driver.write("/a/link", b"sha256:cd")
        await prepared.publish(list(files))
    assert await driver.read("/b/copy") == b"sha256:ab"
    assert await driver.read("/a/link") == b"sha256:cd"


async def test_prepared_writes_replace_existing_files(driver: StorageDriver) -> None:
    await driver.write("/f", b"a much longer first version")
    async with await driver.prepare_writes({"/f": b"short"}) as prepared:
        assert await driver.read("/f") == b"a much longer first version"
        await prepared.publish(["/f"])
    assert await driver.read("/f") == b"short"


async def test_unpublished_writes_leave_nothing(driver: StorageDriver) -> None:
    await driver.write("/repo/_manifests/revisions/sha256/00/link", b"kept")
    revision = next(iter(PREPARED))
    with pytest.raises(RuntimeError):
        async with await driver.prepare_writes(PREPARED) as prepared:
            await prepared.publish([revision])
            raise RuntimeError("a push refused half way")
    assert await files_below(driver, "/repo") == [
        "/repo/_manifests/revisions/sha256/00/link",
        revision,
    ]
    # No directory made for the tag remains (it would list the tag).
    assert await driver.list("/repo/_manifests") == ["revisions"]
    await (await driver.prepare_writes({"/other/file": b"x"})).discard()
    with pytest.raises(PathNotFoundError):
        await driver.list("/other")


async def test_discarding_keeps_a_directory_another_writer_used(driver: StorageDriver) -> None:
    prepared = await driver.prepare_writes(
        {"/blob": b"x", "/repo/_manifests/tags/t/current/link": b"sha256:ab"}
    )
    # Publishing a first stage prepares every file (the filesystem writes them ahead).
    await prepared.publish(["/blob"])
    # A concurrent push writes into the directories this one made, then this one fails.
    await driver.write("/repo/_manifests/tags/u/current/link", b"sha256:cd")
    await prepared.discard()
    assert await driver.list("/repo/_manifests/tags") == ["u"]
    assert await driver.read("/repo/_manifests/tags/u/current/link") == b"sha256:cd"


async def test_a_prepared_write_survives_its_directory_moving_away(driver: StorageDriver) -> None:
    await driver.write("/repo/_manifests/old", b"x")
    files = {"/repo/blob": b"x", "/repo/_manifests/tags/t/current/link": b"sha256:ab"}
    async with await driver.prepare_writes(files) as prepared:
        await prepared.publish(["/repo/blob"])
        # Garbage collection removing what looked like an empty tree.
        await driver.delete("/repo/_manifests")
        await prepared.publish(["/repo/_manifests/tags/t/current/link"])
    assert await files_below(driver, "/repo") == [
        "/repo/_manifests/tags/t/current/link",
        "/repo/blob",
    ]
    assert await driver.read("/repo/_manifests/tags/t/current/link") == b"sha256:ab"


async def test_prepared_write_below_a_file_fails_and_changes_nothing(driver: StorageDriver) -> None:
    await driver.write("/file", b"x")
    with pytest.raises(StorageError):
        prepared = await driver.prepare_writes({"/new/a": b"1", "/file/child": b"y"})
        async with prepared:
            await prepared.publish(["/new/a", "/file/child"])
    assert await driver.read("/file") == b"x"
    # Preparing (with the first stage) fails before anything is published where it
    # writes ahead; otherwise only that file fails.
    expected = [] if driver.name == "filesystem" else ["/new/a"]
    assert await files_below(driver, "/new") == expected


async def test_deferred_publish_returns_once_every_write_has_ended() -> None:
    # A failing write must not leave a sibling running after publish has raised.
    class SlowWrite(DelegatingDriver):
        async def write(self, path: str, data: bytes, durable: bool = True) -> None:
            if path == "/slow":
                await asyncio.sleep(0.1)
            await self.inner.write(path, data, durable)

    driver = SlowWrite(MemoryDriver())
    await driver.write("/file", b"x")
    writes = DeferredWrites(driver, {"/slow": b"1", "/file/child": b"y"})
    with pytest.raises(StorageError):
        await writes.publish(["/slow", "/file/child"])
    assert await driver.read("/slow") == b"1"


# --- missing and invalid paths ----------------------------------------------------------

Operation = Callable[[StorageDriver, str], Awaitable[object]]


async def _stream_all(driver: StorageDriver, path: str) -> bytes:
    return await collect(driver.stream(path))


async def _walk_all(driver: StorageDriver, path: str) -> list[FileInfo]:
    return await walk(driver, path)


async def _resume(driver: StorageDriver, path: str) -> None:
    await (await driver.writer(path, resume_at=0)).close()


async def _new_writer(driver: StorageDriver, path: str) -> None:
    await (await driver.writer(path)).close()


async def _move_from(driver: StorageDriver, path: str) -> None:
    await driver.move(path, "/elsewhere/dest")


async def _move_to(driver: StorageDriver, path: str) -> None:
    await driver.write("/existing", b"x")
    await driver.move("/existing", path)


async def _local_path(driver: StorageDriver, path: str) -> str | None:
    return driver.local_path(path)


READING_OPERATIONS: dict[str, Operation] = {
    "read": lambda d, p: d.read(p),
    "stream": _stream_all,
    "writer-resume": _resume,
    "stat": lambda d, p: d.stat(p),
    "touch": lambda d, p: d.touch(p),
    "list": lambda d, p: d.list(p),
    "move-source": _move_from,
    "delete": lambda d, p: d.delete(p),
    "walk": _walk_all,
}

ALL_OPERATIONS: dict[str, Operation] = {
    **READING_OPERATIONS,
    "write": lambda d, p: d.write(p, b"x"),
    "read_each": lambda d, p: d.read_each(["/fine", p]),
    "prepare_writes": lambda d, p: d.prepare_writes({"/fine": b"x", p: b"y"}),
    "writer-new": _new_writer,
    "move-dest": _move_to,
    "local_path": _local_path,
}

INVALID_PATHS = [
    "",
    "relative/path",
    "relative",
    "/",
    "//",
    "//a",
    "/a//b",
    "/a/",
    "/..",
    "/a/../b",
    "/a/..",
    "/.",
    "/a/./b",
    "/a\x00b",
    "/a\\b",
    "/a b",
    "/a\n",
    "/a\tb",
    "/caf\u00e9",
    "/a:b",
    "/a*b",
    "/" + "a" * 256,
    "/a" * 600,
    "/" + "a" * 300 + "/../b",
    "/b/" + "a" * 256 + "/c",
]


@pytest.mark.parametrize("operation", READING_OPERATIONS.values(), ids=READING_OPERATIONS)
async def test_missing_paths_are_not_found(driver: StorageDriver, operation: Operation) -> None:
    await driver.write("/present/file", b"x")
    for path in ["/absent", "/present/absent", "/absent/deeper/still", "/present/file/below"]:
        with pytest.raises(PathNotFoundError) as error:
            await operation(driver, path)
        assert error.value.path == path


async def test_move_of_a_missing_source_leaves_the_destination(driver: StorageDriver) -> None:
    await driver.write("/dest", b"kept")
    with pytest.raises(PathNotFoundError):
        await driver.move("/absent", "/dest")
    assert await driver.read("/dest") == b"kept"


@pytest.mark.parametrize("operation", ALL_OPERATIONS.values(), ids=ALL_OPERATIONS)
async def test_invalid_paths_are_refused(driver: StorageDriver, operation: Operation) -> None:
    for path in INVALID_PATHS:
        with pytest.raises(InvalidPathError):
            await operation(driver, path)


async def test_invalid_paths_change_nothing(driver: StorageDriver) -> None:
    await driver.write("/keep", b"x")
    for path in INVALID_PATHS:
        with pytest.raises(InvalidPathError):
            await driver.move("/keep", path)
        with pytest.raises(InvalidPathError):
            await driver.move(path, "/keep")
    assert await driver.read("/keep") == b"x"


async def test_longest_valid_paths_work(driver: StorageDriver) -> None:
    long_name = "/" + "n" * 255
    await driver.write(long_name, b"x")
    assert await driver.read(long_name) == b"x"
    deep = "/d" * 512
    assert len(deep) == 1024
    await driver.write(deep, b"y")
    assert await driver.read(deep) == b"y"


async def test_stream_and_walk_refuse_invalid_paths_when_called(driver: StorageDriver) -> None:
    # A bad path is a programming error: it is reported at the call, not on iteration.
    with pytest.raises(InvalidPathError):
        driver.stream("/a/../b")
    with pytest.raises(InvalidPathError):
        driver.walk("relative")


# --- streams ----------------------------------------------------------------------------


async def test_stream_errors_wait_for_the_first_iteration(driver: StorageDriver) -> None:
    missing = driver.stream("/absent")
    with pytest.raises(PathNotFoundError):
        await anext(missing)
    await driver.write("/small", b"abc")
    too_far = driver.stream("/small", 4)
    with pytest.raises(InvalidOffsetError) as error:
        await anext(too_far)
    assert error.value.offset == 4


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, b"0123456789"),
        (3, None, b"3456789"),
        (3, 4, b"3456"),
        (0, 0, b""),
        (9, 1, b"9"),
        (9, 5, b"9"),
        (10, None, b""),
        (10, 3, b""),
        (0, 100, b"0123456789"),
    ],
)
async def test_stream_ranges(
    driver: StorageDriver, offset: int, length: int | None, expected: bytes
) -> None:
    await driver.write("/digits", b"0123456789")
    assert await collect(driver.stream("/digits", offset, length)) == expected


@pytest.mark.parametrize("offset", [11, 1000, -1])
async def test_stream_offsets_outside_the_file(driver: StorageDriver, offset: int) -> None:
    await driver.write("/digits", b"0123456789")
    with pytest.raises(InvalidOffsetError):
        await collect(driver.stream("/digits", offset))


async def test_stream_of_an_empty_file(driver: StorageDriver) -> None:
    await driver.write("/empty", b"")
    assert [chunk async for chunk in driver.stream("/empty")] == []
    with pytest.raises(InvalidOffsetError):
        await collect(driver.stream("/empty", 1))


async def test_stream_refuses_a_negative_length(driver: StorageDriver) -> None:
    with pytest.raises(ValueError, match="negative length"):
        driver.stream("/any", 0, -1)


async def test_stream_of_a_directory_is_not_found(driver: StorageDriver) -> None:
    await driver.write("/dir/child", b"x")
    with pytest.raises(PathNotFoundError):
        await collect(driver.stream("/dir"))


async def test_stream_comes_in_chunks_of_at_most_a_mebibyte(driver: StorageDriver) -> None:
    content = os.urandom(3 * MiB + 5)
    await driver.write("/big", content)
    chunks = [chunk async for chunk in driver.stream("/big", 3)]
    # Memory stays bounded whatever the file's size; how the bytes are cut is the
    # driver's (object storage hands them on as the network delivers them).
    assert all(0 < len(chunk) <= MiB for chunk in chunks)
    assert b"".join(chunks) == content[3:]
    ranged = await collect(driver.stream("/big", MiB - 3, MiB + 10))
    assert ranged == content[MiB - 3 : 2 * MiB + 7]


async def test_stream_abandoned_early_releases_the_file(driver: StorageDriver) -> None:
    await driver.write("/big", os.urandom(3 * MiB))
    stream = driver.stream("/big")
    assert 0 < len(await anext(stream)) <= MiB
    await stream.aclose()  # type: ignore[attr-defined]
    await driver.delete("/big")
    with pytest.raises(PathNotFoundError):
        await driver.stat("/big")


async def test_stream_keeps_reading_the_content_it_started_with(driver: StorageDriver) -> None:
    old = b"o" * (2 * MiB)
    await driver.write("/f", old)
    stream = driver.stream("/f")
    first = await anext(stream)
    await driver.write("/f", b"new")
    rest = b"".join([chunk async for chunk in stream])
    assert first + rest == old


# --- writers ----------------------------------------------------------------------------


async def test_writer_creates_a_file_with_everything_written(driver: StorageDriver) -> None:
    writer = await driver.writer("/uploads/u1/data")
    assert writer.size == 0
    await writer.write(b"hello ")
    await writer.write(b"world")
    assert writer.size == 11
    await writer.commit()
    await writer.close()
    assert await driver.read("/uploads/u1/data") == b"hello world"
    assert (await driver.stat("/uploads/u1/data")).size == 11


async def test_blocking_appends_from_a_thread_land_in_order(driver: StorageDriver) -> None:
    # Where a writer offers it, appending from a thread is writing: the same bytes in
    # the same order, counted in its size, durable on commit; writes may follow.
    writer = await driver.writer("/uploads/u1/data")
    append = writer.blocking_append()
    if append is None:
        assert driver.name != "filesystem"  # a local file has no reason to refuse
        await writer.close()
        return
    await writer.write(b"head ")
    pieces = [bytes([65 + n]) * (300_000 + n) for n in range(5)]

    def in_a_thread() -> None:
        for piece in pieces:
            append(piece)

    await asyncio.to_thread(in_a_thread)
    assert writer.size == 5 + sum(map(len, pieces))
    await writer.write(b" tail")
    await writer.commit()
    await writer.close()
    assert await driver.read("/uploads/u1/data") == b"head " + b"".join(pieces) + b" tail"
    with pytest.raises(ValueError, match="closed"):
        append(b"late")


async def test_an_empty_committed_writer_leaves_an_empty_file(driver: StorageDriver) -> None:
    writer = await driver.writer("/uploads/u1/data")
    await writer.commit()
    await writer.close()
    assert (await driver.stat("/uploads/u1/data")).size == 0
    assert await driver.read("/uploads/u1/data") == b""


async def test_writer_stays_usable_after_commit(driver: StorageDriver) -> None:
    writer = await driver.writer("/f")
    await writer.write(b"one")
    await writer.commit()
    await writer.write(b"two")
    await writer.commit()
    await writer.close()
    assert await driver.read("/f") == b"onetwo"


async def test_new_writer_truncates_an_existing_file(driver: StorageDriver) -> None:
    await driver.write("/f", b"previous content")
    writer = await driver.writer("/f")
    assert writer.size == 0
    await writer.write(b"new")
    await writer.commit()
    await writer.close()
    assert await driver.read("/f") == b"new"


async def test_resume_appends_after_committed_content(driver: StorageDriver) -> None:
    writer = await driver.writer("/f")
    await writer.write(b"first,")
    await writer.commit()
    await writer.close()
    resumed = await driver.writer("/f", resume_at=6)
    assert resumed.size == 6
    await resumed.write(b"second")
    await resumed.commit()
    await resumed.close()
    assert await driver.read("/f") == b"first,second"


async def test_resume_discards_an_uncommitted_tail(driver: StorageDriver) -> None:
    writer = await driver.writer("/f")
    await writer.write(b"committed|")
    await writer.commit()
    committed = writer.size
    await writer.write(b"lost before the crash")
    await writer.close()
    resumed = await driver.writer("/f", resume_at=committed)
    assert resumed.size == committed
    assert (await driver.stat("/f")).size == committed
    await resumed.write(b"again")
    await resumed.commit()
    await resumed.close()
    assert await driver.read("/f") == b"committed|again"


async def test_a_writer_at_the_end_continues_after_everything_committed(
    driver: StorageDriver,
) -> None:
    await driver.write("/f", b"first,")
    resumed = await driver.writer_at_end("/f")
    assert resumed.size == 6
    await resumed.write(b"second")
    await resumed.commit()
    await resumed.close()
    assert await driver.read("/f") == b"first,second"
    with pytest.raises(PathNotFoundError):
        await driver.writer_at_end("/missing")
    await driver.write("/dir/child", b"x")
    with pytest.raises(PathNotFoundError):
        await driver.writer_at_end("/dir")


async def test_a_staged_file_is_seen_only_once_sealed_where_a_driver_stages(
    driver: StorageDriver,
) -> None:
    """Drivers whose move is a rename offer none (callers write elsewhere and move);
    the others show the file whole at its seal, and nothing of one closed before."""
    await driver.write("/staged/data", b"before")
    staged = await driver.staged_writer("/staged/data")
    if staged is None:
        assert driver.name in ("filesystem", "inmemory")
        return
    await staged.write(b"after, ")
    await staged.write(b"whole")
    assert await driver.read("/staged/data") == b"before"
    await staged.seal()
    await staged.close()
    assert await driver.read("/staged/data") == b"after, whole"
    dropped = await driver.staged_writer("/dropped/data")
    assert dropped is not None
    await dropped.write(b"never seen")
    await dropped.close()
    with pytest.raises(PathNotFoundError):
        await driver.stat("/dropped/data")


async def test_resume_at_zero_empties_the_file(driver: StorageDriver) -> None:
    await driver.write("/f", b"content")
    writer = await driver.writer("/f", resume_at=0)
    await writer.commit()
    await writer.close()
    assert await driver.read("/f") == b""


@pytest.mark.parametrize("resume_at", [8, 100, -1])
async def test_resume_outside_the_file_is_refused(driver: StorageDriver, resume_at: int) -> None:
    await driver.write("/f", b"content")
    with pytest.raises(InvalidOffsetError) as error:
        await driver.writer("/f", resume_at=resume_at)
    assert error.value.offset == resume_at
    assert await driver.read("/f") == b"content"


async def test_resume_of_a_directory_is_not_found(driver: StorageDriver) -> None:
    await driver.write("/dir/child", b"x")
    with pytest.raises(PathNotFoundError):
        await driver.writer("/dir", resume_at=0)


async def test_new_writer_on_a_directory_fails(driver: StorageDriver) -> None:
    await driver.write("/dir/child", b"x")
    with pytest.raises(StorageError) as error:
        await driver.writer("/dir")
    assert_plain_storage_error(error)
    with pytest.raises(StorageError) as error:
        await driver.writer("/dir/child/below")
    assert_plain_storage_error(error)
    assert await driver.read("/dir/child") == b"x"


async def test_cancel_removes_the_file(driver: StorageDriver) -> None:
    writer = await driver.writer("/uploads/u1/data")
    await writer.write(b"partial")
    await writer.commit()
    await writer.cancel()
    with pytest.raises(PathNotFoundError):
        await driver.stat("/uploads/u1/data")
    # The directory it was made in stays; cleaning it up is the caller's business.
    await assert_empty_directory(driver, "/uploads/u1")
    await writer.cancel()
    await writer.close()


async def test_closed_writer_refuses_more_data(driver: StorageDriver) -> None:
    writer = await driver.writer("/f")
    await writer.write(b"x")
    await writer.commit()
    await writer.close()
    await writer.close()
    with pytest.raises(ValueError, match="closed"):
        await writer.write(b"y")
    with pytest.raises(ValueError, match="closed"):
        await writer.commit()
    assert await driver.read("/f") == b"x"


async def test_large_write_in_pieces(driver: StorageDriver) -> None:
    expected = hashlib.sha256()
    writer = await driver.writer("/blobs/big")
    sizes = [1, 1000, MiB, 3 * MiB + 7, 64 * 1024, 64 * 1024 + 1, 5 * MiB]
    total = 0
    pieces = 0
    # Pieces of many sizes, both below and above the point where writes go to a thread.
    while total < 20 * MiB:
        piece = os.urandom(min(sizes[pieces % len(sizes)], 20 * MiB - total))
        await writer.write(piece)
        expected.update(piece)
        total += len(piece)
        pieces += 1
        if pieces % 3 == 0:
            await writer.commit()
    await writer.commit()
    assert writer.size == 20 * MiB
    await writer.close()
    assert (await driver.stat("/blobs/big")).size == 20 * MiB
    streamed = hashlib.sha256()
    async for chunk in driver.stream("/blobs/big"):
        streamed.update(chunk)
    assert streamed.hexdigest() == expected.hexdigest()
    assert hashlib.sha256(await driver.read("/blobs/big")).hexdigest() == expected.hexdigest()


async def test_concurrent_writers_to_different_files(driver: StorageDriver) -> None:
    async def upload(index: int) -> bytes:
        content = bytes([index]) * (MiB // 2 + index)
        writer = await driver.writer(f"/uploads/u{index}/data")
        for start in range(0, len(content), 100_000):
            await writer.write(content[start : start + 100_000])
            await asyncio.sleep(0)
        await writer.commit()
        await writer.close()
        return content

    contents = await asyncio.gather(*(upload(index) for index in range(12)))
    for index, content in enumerate(contents):
        assert await driver.read(f"/uploads/u{index}/data") == content
    assert await driver.list("/uploads") == sorted(f"u{index}" for index in range(12))


async def test_concurrent_atomic_writes_to_one_file(driver: StorageDriver) -> None:
    versions = [bytes([index]) * (200_000 + index) for index in range(8)]
    await asyncio.gather(*(driver.write("/link", version) for version in versions))
    assert await driver.read("/link") in versions


async def test_cancelled_write_then_close_is_safe(driver: StorageDriver) -> None:
    writer = await driver.writer("/f")
    task = asyncio.ensure_future(writer.write(b"z" * (8 * MiB)))
    await asyncio.sleep(0)
    task.cancel()
    # A driver may finish the write before the cancellation lands, or not.
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await writer.close()
    # Whatever the cancelled write managed is only ever in its own file.
    await driver.write("/other", b"untouched")
    await asyncio.sleep(0.2)
    assert await driver.read("/other") == b"untouched"
    resumed = await driver.writer("/f", resume_at=0)
    await resumed.write(b"fresh")
    await resumed.commit()
    await resumed.close()
    assert await driver.read("/f") == b"fresh"


# --- stat, list, move, delete -----------------------------------------------------------


async def test_touch_moves_the_modification_time_and_keeps_the_content(
    driver: StorageDriver,
) -> None:
    await driver.write("/dir/link", b"sha256:" + b"b" * 64)
    before = (await driver.stat("/dir/link")).mtime
    await asyncio.sleep(0.02)
    await driver.touch("/dir/link")
    after = await driver.stat("/dir/link")
    assert after.mtime > before
    assert await driver.read("/dir/link") == b"sha256:" + b"b" * 64
    await driver.touch("/dir/link", mtime=1_000_000.0)
    assert (await driver.stat("/dir/link")).mtime == 1_000_000.0
    with pytest.raises(PathNotFoundError):
        await driver.touch("/dir")


async def test_stat_of_files_and_directories(driver: StorageDriver) -> None:
    before = time.time()
    await driver.write("/dir/file", b"12345")
    file = await driver.stat("/dir/file")
    assert file == FileInfo("/dir/file", 5, file.mtime, False)
    assert before - 2 <= file.mtime <= time.time() + 2
    directory = await driver.stat("/dir")
    assert directory.is_dir
    assert directory.size == 0
    assert directory.path == "/dir"


async def test_list_gives_sorted_names_of_direct_children(driver: StorageDriver) -> None:
    for path in ["/r/b", "/r/a/deep/file", "/r/C", "/r/_z", "/r/a.b", "/r/a-b", "/r/1"]:
        await driver.write(path, b"x")
    assert await driver.list("/r") == ["1", "C", "_z", "a", "a-b", "a.b", "b"]
    assert await driver.list("/r/a") == ["deep"]


async def test_list_of_a_file_is_not_found(driver: StorageDriver) -> None:
    await driver.write("/file", b"x")
    with pytest.raises(PathNotFoundError):
        await driver.list("/file")


async def test_move_replaces_the_destination(driver: StorageDriver) -> None:
    await driver.write("/uploads/u1/data", b"new content")
    await driver.write("/blobs/ab/data", b"old")
    await driver.move("/uploads/u1/data", "/blobs/ab/data")
    assert await driver.read("/blobs/ab/data") == b"new content"
    with pytest.raises(PathNotFoundError):
        await driver.stat("/uploads/u1/data")
    await assert_empty_directory(driver, "/uploads/u1")


async def test_move_creates_the_destination_parents(driver: StorageDriver) -> None:
    await driver.write("/src", b"x")
    await driver.move("/src", "/a/b/c/dest")
    assert await driver.read("/a/b/c/dest") == b"x"
    assert [info.path for info in await walk(driver, "/a")] == ["/a/b", "/a/b/c", "/a/b/c/dest"]


async def test_move_of_a_directory_tree(driver: StorageDriver) -> None:
    await driver.write("/old/x/1", b"1")
    await driver.write("/old/y", b"2")
    await driver.move("/old", "/new/place")
    assert await driver.read("/new/place/x/1") == b"1"
    assert await driver.read("/new/place/y") == b"2"
    with pytest.raises(PathNotFoundError):
        await driver.stat("/old")


async def test_move_onto_itself_changes_nothing(driver: StorageDriver) -> None:
    await driver.write("/f", b"x")
    await driver.move("/f", "/f")
    assert await driver.read("/f") == b"x"


async def test_move_into_its_own_subtree_fails(driver: StorageDriver) -> None:
    await driver.write("/d/f", b"x")
    with pytest.raises(StorageError) as error:
        await driver.move("/d", "/d/sub/d")
    assert_plain_storage_error(error)
    assert await driver.read("/d/f") == b"x"
    assert await driver.list("/d") == ["f"]


async def test_move_refusals_between_files_and_directories(driver: StorageDriver) -> None:
    await driver.write("/file", b"f")
    await driver.write("/dir/child", b"c")
    await driver.write("/other/child", b"o")
    for source, dest in [("/file", "/dir"), ("/dir", "/file"), ("/dir", "/other")]:
        with pytest.raises(StorageError) as error:
            await driver.move(source, dest)
        assert_plain_storage_error(error)
    assert await driver.read("/file") == b"f"
    assert await driver.read("/dir/child") == b"c"
    assert await driver.read("/other/child") == b"o"


async def test_move_directory_onto_an_empty_directory(driver: StorageDriver) -> None:
    await driver.write("/src/child", b"c")
    await driver.write("/dest/gone", b"g")
    await driver.delete("/dest/gone")
    await driver.move("/src", "/dest")
    assert await driver.list("/dest") == ["child"]


async def test_delete_a_file_keeps_its_directory(driver: StorageDriver) -> None:
    await driver.write("/dir/a", b"a")
    await driver.write("/dir/b", b"b")
    await driver.delete("/dir/a")
    assert await driver.list("/dir") == ["b"]
    await driver.delete("/dir/b")
    await assert_empty_directory(driver, "/dir")
    with pytest.raises(PathNotFoundError):
        await driver.delete("/dir/b")


@pytest.mark.parametrize("more", [0, 40])
async def test_delete_a_whole_tree(driver: StorageDriver, more: int) -> None:
    # A tree as small as a tag's, and one of more entries than is removed at once.
    extra = [f"/repo/a/2/many/{number}" for number in range(more)]
    for path in ["/repo/a/1", "/repo/a/2/x", "/repo/b", "/keep", *extra]:
        await driver.write(path, b"x")
    await driver.delete("/repo")
    for path in ["/repo", "/repo/a", "/repo/a/2/x"]:
        with pytest.raises(PathNotFoundError):
            await driver.stat(path)
    assert await driver.read("/keep") == b"x"
    await driver.write("/repo/a/1", b"again")
    assert await driver.list("/repo") == ["a"]


async def test_delete_each_says_which_were_there(driver: StorageDriver) -> None:
    written = ["/b/1/data", "/b/2/data", "/b/2/marker", "/tree/a/x", "/tree/y", "/file", "/keep/z"]
    for path in written:
        await driver.write(path, b"x")
    # A flat directory, one with two files, a tree, a file, a missing path, one given twice.
    paths = ["/b/1", "/b/2", "/tree", "/file", "/missing", "/b/1"]
    assert await driver.delete_each(paths) == [True, True, True, True, False, False]
    for path in ["/b/1", "/b/2", "/tree", "/tree/a/x", "/file"]:
        with pytest.raises(PathNotFoundError):
            await driver.stat(path)
    assert await driver.read("/keep/z") == b"x"
    assert await driver.delete_each([]) == []


async def test_remove_empty_removes_a_tree_of_empty_directories(driver: StorageDriver) -> None:
    for path in ["/repo/_manifests/revisions/sha256/a/link", "/repo/_manifests/tags/v1/x"]:
        await driver.write(path, b"x")
        await driver.delete(path)
    await driver.write("/repo/_layers/l", b"keep")
    assert await driver.remove_empty("/repo/_manifests") is True
    with pytest.raises(PathNotFoundError):
        await driver.stat("/repo/_manifests")
    assert await driver.read("/repo/_layers/l") == b"keep"
    # Gone already counts as removed.
    assert await driver.remove_empty("/repo/_manifests") is True


async def test_remove_empty_keeps_a_tree_holding_any_file(driver: StorageDriver) -> None:
    await driver.write("/repo/_manifests/tags/v1/current/link", b"sha256:x")
    await driver.write("/repo/_manifests/revisions/sha256/a/link", b"a")
    await driver.delete("/repo/_manifests/revisions/sha256/a/link")
    assert await driver.remove_empty("/repo/_manifests") is False
    assert await driver.read("/repo/_manifests/tags/v1/current/link") == b"sha256:x"
    assert await driver.remove_empty("/repo/_manifests/tags/v1/current/link") is False
    assert await driver.read("/repo/_manifests/tags/v1/current/link") == b"sha256:x"


async def test_remove_empty_never_removes_a_file_written_meanwhile(
    driver: StorageDriver,
) -> None:
    """Writers and the removal race on one tree: every acknowledged write survives."""
    written: list[str] = []

    async def writer() -> None:
        for i in range(40):
            path = f"/r/_manifests/revisions/sha256/{i:02d}/link"
            await driver.write(path, b"x")
            written.append(path)
            await asyncio.sleep(0)

    async def remover() -> None:
        for _ in range(40):
            await driver.remove_empty("/r/_manifests")
            await asyncio.sleep(0)

    await asyncio.gather(writer(), remover())
    for path in written:
        assert await driver.read(path) == b"x"


async def test_move_unless_touched_moves_what_nobody_touched(driver: StorageDriver) -> None:
    await driver.write("/blobs/ab/data", b"x")
    await driver.write("/single", b"y")
    await driver.touch("/blobs/ab/data", mtime=1000.0)
    await driver.touch("/single", mtime=1000.0)
    assert await driver.move_unless_touched("/blobs/ab", "/trash/0", since=2000.0) is True
    assert await driver.move_unless_touched("/single", "/trash/1", since=2000.0) is True
    assert await driver.read("/trash/0/data") == b"x"
    assert await driver.read("/trash/1") == b"y"
    with pytest.raises(PathNotFoundError):
        await driver.stat("/blobs/ab")
    # Gone already: nothing moved.
    assert await driver.move_unless_touched("/blobs/ab", "/trash/2", since=2000.0) is False


async def test_move_unless_touched_refuses_what_was_touched_since(driver: StorageDriver) -> None:
    await driver.write("/blobs/ab/data", b"x")
    await driver.write("/blobs/ab/other", b"z")
    await driver.touch("/blobs/ab/data", mtime=1000.0)
    since = time.time() - 1
    assert await driver.move_unless_touched("/blobs/ab", "/trash/0", since=since) is False
    assert await driver.read("/blobs/ab/data") == b"x"
    with pytest.raises(PathNotFoundError):
        await driver.stat("/trash/0")


async def test_touch_after_a_move_finds_nothing(driver: StorageDriver) -> None:
    await driver.write("/blobs/ab/data", b"x")
    await driver.touch("/blobs/ab/data", mtime=1000.0)
    assert await driver.move_unless_touched("/blobs/ab", "/trash/0", since=2000.0)
    with pytest.raises(PathNotFoundError):
        await driver.touch("/blobs/ab/data")
    assert (await driver.stat("/trash/0/data")).mtime == 1000.0


async def test_a_touch_and_a_move_unless_touched_never_both_succeed(
    driver: StorageDriver,
) -> None:
    """Raced many times from threads: a hold that succeeded is never moved away."""
    outcomes: set[tuple[bool, bool]] = set()
    for i in range(60):
        path = f"/blobs/{i:02d}/data"
        await driver.write(path, b"x")
        await driver.touch(path, mtime=1000.0)
        since = time.time() - 0.5

        async def hold(path: str = path) -> bool:
            try:
                await driver.touch(path)
            except PathNotFoundError:
                return False
            return True

        held, moved = await asyncio.gather(
            asyncio.create_task(hold()),
            driver.move_unless_touched(path.rsplit("/", 1)[0], f"/trash/{i}", since),
        )
        outcomes.add((held, moved))
        assert held != moved, (i, held, moved)
    assert outcomes <= {(True, False), (False, True)}


# --- walk -------------------------------------------------------------------------------


async def test_walk_is_depth_first_in_lexical_order(driver: StorageDriver) -> None:
    files = {
        "/w/b/file": b"12",
        "/w/a/z": b"1",
        "/w/a/y/deep": b"123",
        "/w/a.txt": b"1234",
        "/w/c": b"",
    }
    for path, content in files.items():
        await driver.write(path, content)
    found = await walk(driver, "/w")
    assert [(info.path, info.is_dir, info.size) for info in found] == [
        ("/w/a", True, 0),
        ("/w/a/y", True, 0),
        ("/w/a/y/deep", False, 3),
        ("/w/a/z", False, 1),
        ("/w/a.txt", False, 4),
        ("/w/b", True, 0),
        ("/w/b/file", False, 2),
        ("/w/c", False, 0),
    ]
    assert [info.path for info in await walk(driver, "/w/a")] == [
        "/w/a/y",
        "/w/a/y/deep",
        "/w/a/z",
    ]


async def test_walk_of_an_empty_directory_and_of_a_file(driver: StorageDriver) -> None:
    await driver.write("/d/f", b"x")
    await driver.delete("/d/f")
    await assert_empty_directory(driver, "/d")
    await driver.write("/d/f", b"x")
    with pytest.raises(PathNotFoundError):
        await walk(driver, "/d/f")


async def test_a_sealed_file_reads_whole_and_its_writer_goes_on(driver: StorageDriver) -> None:
    content = os.urandom(3 * MiB + 5)
    writer = await driver.writer("/u/data")
    await writer.write(content)
    await writer.seal()
    assert await driver.read("/u/data") == content
    assert (await driver.stat("/u/data")).size == len(content)
    await writer.write(b"tail")
    await writer.commit()
    await writer.close()
    assert await driver.read("/u/data") == content + b"tail"


async def test_walk_survives_deletes_while_walking(driver: StorageDriver) -> None:
    # Garbage collection deletes what it finds while it walks.
    for path in ["/g/a/1", "/g/b/1", "/g/b/2", "/g/c/1"]:
        await driver.write(path, b"x")
    seen = []
    async for info in driver.walk("/g"):
        seen.append(info.path)
        if info.path == "/g/a":
            await driver.delete("/g/b")
    assert seen[:2] == ["/g/a", "/g/a/1"]
    assert "/g/c/1" in seen
    assert "/g/b/1" not in seen


# --- the factory ------------------------------------------------------------------------


def test_create_driver_kinds(tmp_path: Path) -> None:
    assert isinstance(create_driver("inmemory", {}), MemoryDriver)
    fs = create_driver("filesystem", {"rootdirectory": str(tmp_path), "maxthreads": 100})
    assert isinstance(fs, FilesystemDriver)
    assert fs.name == "filesystem"
    assert create_driver("inmemory", {}).name == "inmemory"


def test_create_driver_default_root() -> None:
    fs = create_driver("filesystem", {})
    assert fs.local_path("/x") == os.path.realpath("/var/lib/registry") + "/x"


@pytest.mark.parametrize("kind", ["gcs", "Filesystem", ""])
def test_create_driver_refuses_unknown_kinds(kind: str) -> None:
    with pytest.raises(ValueError, match="unknown storage driver"):
        create_driver(kind, {})


@pytest.mark.parametrize("root", [None, 3, ""])
def test_create_driver_refuses_a_bad_root(root: object) -> None:
    with pytest.raises(ValueError, match="rootdirectory"):
        create_driver("filesystem", {"rootdirectory": root})


# --- filesystem only --------------------------------------------------------------------


async def test_fs_layout_is_the_driver_paths_below_the_root(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/docker/registry/v2/blobs/data", b"blob")
    assert (fs_root / "docker/registry/v2/blobs/data").read_bytes() == b"blob"


@pytest.mark.parametrize("refusal", [None, errno.EPERM, errno.EMLINK])
async def test_fs_a_recorded_copy_is_its_source_file_where_links_are_allowed(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch, refusal: int | None
) -> None:
    if refusal is not None:
        # A file system without hard links, or one whose link count is at its limit.
        def refuse(source: str, dest: str) -> None:
            raise OSError(refusal, os.strerror(refusal))

        monkeypatch.setattr(os, "link", refuse)
    files = {"/a/link": b"sha256:ab", "/b/tagged.t": b"sha256:ab"}
    async with await fs.prepare_writes(
        files, replayable=True, copies={"/b/tagged.t": "/a/link"}
    ) as prepared:
        await prepared.publish_in_order([["/b/tagged.t"], ["/a/link"]])
    source, copy = os.stat(fs_root / "a/link"), os.stat(fs_root / "b/tagged.t")
    assert (copy.st_ino == source.st_ino) is (refusal is None)
    assert (fs_root / "b/tagged.t").read_bytes() == b"sha256:ab"
    assert os.listdir(fs_root / "a") == ["link"]
    assert os.listdir(fs_root / "b") == ["tagged.t"]


async def test_fs_a_recorded_copy_of_a_stored_file_is_that_file_where_its_bytes_match(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/a/link", b"sha256:ab")
    await fs.write("/a/longer", b"sha256:ab and more")
    await fs.write("/b/there", b"sha256:older")
    os.symlink("link", fs_root / "a/symlink")
    names = ["/b/same", "/b/longer", "/b/symlink", "/b/there", "/c/new"]
    files = dict.fromkeys(names, b"sha256:ab")
    copies = {
        "/b/same": "/a/link",
        "/b/longer": "/a/longer",
        "/b/symlink": "/a/symlink",
        "/b/there": "/a/link",
        "/c/new": "/a/link",
    }
    async with await fs.prepare_writes(files, replayable=True, copies=copies) as prepared:
        await prepared.publish(list(files))

    def inode(path: str) -> int:
        return os.lstat(fs_root / path).st_ino

    assert inode("b/same") == inode("a/link")
    assert inode("b/longer") != inode("a/longer")
    # Not what a symbolic link leads to, nor the link itself: a file of its own.
    assert inode("b/symlink") not in (inode("a/link"), inode("a/symlink"))
    assert not os.path.islink(fs_root / "b/symlink")
    # A file already there is replaced by the link; a missing directory is made for it.
    assert inode("b/there") == inode("a/link")
    assert inode("c/new") == inode("a/link")
    # No temporary name left behind.
    assert sorted(os.listdir(fs_root / "b")) == ["longer", "same", "symlink", "there"]
    assert os.listdir(fs_root / "c") == ["new"]


async def test_fs_write_leaves_no_temporary_file(fs: FilesystemDriver, fs_root: Path) -> None:
    await fs.write("/dir/file", b"one")
    await fs.write("/dir/file", b"two")
    assert os.listdir(fs_root / "dir") == ["file"]


async def test_fs_failed_write_leaves_no_temporary_file(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/dir/sub/file", b"x")
    with pytest.raises(StorageError):
        await fs.write("/dir/sub", b"y")
    assert os.listdir(fs_root / "dir") == ["sub"]


async def test_fs_failed_publish_leaves_no_temporary_file(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/dir/sub/file", b"x")
    prepared = await fs.prepare_writes({"/dir/new": b"1", "/dir/sub": b"y"})
    with pytest.raises(StorageError):
        async with prepared:
            await prepared.publish(["/dir/sub", "/dir/new"])
    assert sorted(os.listdir(fs_root / "dir")) == ["sub"]
    assert os.listdir(fs_root / "dir" / "sub") == ["file"]


async def test_fs_list_and_walk_skip_names_callers_cannot_address(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/dir/real", b"x")
    # Left behind by a crash mid-write, or put there by hand.
    (fs_root / "dir" / ".tmp~0123abcd").write_bytes(b"half")
    (fs_root / "dir" / "lost+found").mkdir()
    (fs_root / "dir" / "with space").write_bytes(b"")
    assert await fs.list("/dir") == ["real"]
    assert [info.path for info in await walk(fs, "/dir")] == ["/dir/real"]


async def test_fs_resume_after_crash_discards_the_tail(fs: FilesystemDriver, fs_root: Path) -> None:
    writer = await fs.writer("/u/data")
    await writer.write(b"durable")
    await writer.commit()
    await writer.close()
    append_bytes(fs_root / "u" / "data", b"torn write")
    resumed = await fs.writer("/u/data", resume_at=7)
    await resumed.close()
    assert (fs_root / "u" / "data").read_bytes() == b"durable"


async def test_fs_local_path_is_inside_the_root(fs: FilesystemDriver, fs_root: Path) -> None:
    await fs.write("/blobs/data", b"x")
    local = fs.local_path("/blobs/data")
    assert local is not None
    assert Path(local) == fs_root.resolve() / "blobs" / "data"
    assert Path(local).read_bytes() == b"x"


def test_memory_has_no_local_path() -> None:
    assert MemoryDriver().local_path("/blobs/data") is None


async def test_fs_root_is_created_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    fs = FilesystemDriver(str(root))
    with pytest.raises(PathNotFoundError):
        await fs.list("/docker")
    await fs.write("/docker/f", b"x")
    assert (root / "docker" / "f").read_bytes() == b"x"


async def test_fs_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    fs = FilesystemDriver(str(tmp_path / "link"))
    await fs.write("/f", b"x")
    assert await fs.read("/f") == b"x"
    assert (real / "f").read_bytes() == b"x"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_bytes(b"secret")
    return directory


async def test_fs_symlink_out_of_the_root_is_not_followed(
    fs: FilesystemDriver, fs_root: Path, outside: Path
) -> None:
    (fs_root / "escape").symlink_to(outside)
    (fs_root / "escape-file").symlink_to(outside / "secret")
    reads: list[Callable[[], Awaitable[object]]] = [
        lambda: fs.read("/escape/secret"),
        lambda: fs.read("/escape-file"),
        lambda: fs.read_each(["/escape/secret"]),
        lambda: fs.read_each(["/escape-file"]),
        lambda: collect(fs.stream("/escape-file")),
        lambda: fs.stat("/escape/secret"),
        lambda: fs.stat("/escape-file"),
        lambda: fs.list("/escape"),
        lambda: walk(fs, "/escape"),
        lambda: fs.writer("/escape-file", resume_at=0),
        lambda: fs.writer("/escape/new"),
        lambda: fs.write("/escape/new", b"x"),
        lambda: fs.move("/escape/secret", "/stolen"),
        lambda: fs.delete("/escape/secret"),
    ]
    for operation in reads:
        with pytest.raises(InvalidPathError):
            await operation()
    with pytest.raises(InvalidPathError):
        fs.local_path("/escape-file")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


async def test_fs_read_each_follows_a_symlink_inside_the_root_as_read_does(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/a/link", b"sha256:ab")
    (fs_root / "b").symlink_to(fs_root / "a")
    (fs_root / "a" / "alias").symlink_to("link")
    paths = ["/b/link", "/a/alias", "/b/alias"]
    assert await fs.read_each(paths) == [b"sha256:ab"] * 3
    assert [await fs.read(path) for path in paths] == [b"sha256:ab"] * 3


async def test_fs_list_and_walk_skip_symlinks_out_of_the_root(
    fs: FilesystemDriver, fs_root: Path, outside: Path
) -> None:
    await fs.write("/dir/real", b"x")
    (fs_root / "dir" / "escape").symlink_to(outside)
    (fs_root / "dir" / "escape-file").symlink_to(outside / "secret")
    assert await fs.list("/dir") == ["real"]
    assert [info.path for info in await walk(fs, "/dir")] == ["/dir/real"]


async def test_fs_replacing_or_deleting_a_link_never_touches_its_target(
    fs: FilesystemDriver, fs_root: Path, outside: Path
) -> None:
    (fs_root / "a").symlink_to(outside / "secret")
    (fs_root / "b").symlink_to(outside)
    await fs.delete("/b")
    await fs.write("/a", b"mine")
    assert (fs_root / "a").read_bytes() == b"mine"
    assert not (fs_root / "a").is_symlink()
    assert not (fs_root / "b").exists()
    assert (outside / "secret").read_bytes() == b"secret"


async def test_fs_symlinks_inside_the_root_are_followed(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    await fs.write("/store/blobs/data", b"x")
    (fs_root / "alias").symlink_to(fs_root / "store")
    (fs_root / "store" / "loop").symlink_to(fs_root / "store")
    assert await fs.read("/alias/blobs/data") == b"x"
    assert await fs.list("/alias") == ["blobs", "loop"]
    # A link as the last component: read and stat answer for its target.
    (fs_root / "data-link").symlink_to(fs_root / "store" / "blobs" / "data")
    assert await fs.read("/data-link") == b"x"
    linked = await fs.stat("/data-link")
    assert (linked.size, linked.is_dir) == (1, False)
    assert (await fs.stat("/alias")).is_dir
    # A link back up the tree is reported once, not walked forever.
    assert [info.path for info in await walk(fs, "/store")] == [
        "/store/blobs",
        "/store/blobs/data",
        "/store/loop",
    ]


def test_fs_touch_and_move_unless_touched_race_in_threads(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    """Two processes' worth of contention: holds from threads, moves from another.

    A hold that reported success must find its file still in place afterwards.
    """
    import threading

    rounds = 300
    for i in range(rounds):
        directory = fs_root / "blobs" / f"{i:03d}"
        directory.mkdir(parents=True)
        (directory / "data").write_bytes(b"x")
        os.utime(directory / "data", (1000.0, 1000.0))
    since = time.time() - 0.5
    held: list[int] = []
    moved: list[int] = []

    # Both threads start each round together, the hold a little later each time, so
    # that some holds land between a check and its move.
    start = threading.Barrier(2)

    def holder() -> None:
        for i in range(rounds):
            start.wait()
            deadline = time.perf_counter() + (i % 30) * 20e-6
            while time.perf_counter() < deadline:
                pass
            try:
                asyncio.run(fs.touch(f"/blobs/{i:03d}/data"))
            except PathNotFoundError:
                continue
            held.append(i)

    def mover() -> None:
        for i in range(rounds):
            start.wait()
            if asyncio.run(fs.move_unless_touched(f"/blobs/{i:03d}", f"/trash/{i:03d}", since)):
                moved.append(i)

    threads = [threading.Thread(target=holder), threading.Thread(target=mover)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(held) & set(moved)
    assert set(held) | set(moved) == set(range(rounds))
    for i in held:
        assert (fs_root / "blobs" / f"{i:03d}" / "data").exists()


@pytest.mark.parametrize("count", [1000, 3], ids=["large", "small"])
async def test_fs_a_settled_listing_is_kept_and_every_change_seen(
    fs: FilesystemDriver, fs_root: Path, count: int
) -> None:
    tags = fs_root / "repo" / "tags"
    tags.mkdir(parents=True)
    names = [f"tag-{i:04d}" for i in range(count)]
    for name in names:
        (tags / name).mkdir()
    large = os.stat(tags).st_size > SMALL_DIRECTORY
    assert large == (count == 1000)
    listings = fs._listings if large else fs._small_listings
    # Listed while it still changes within the settle time: not kept.
    assert await fs.list("/repo/tags") == names
    assert listings.get(str(tags), os.stat(tags)) is None
    await asyncio.sleep(SETTLED_AFTER_NS / 1e9 + 0.1)
    assert await fs.list("/repo/tags") == names
    assert listings.get(str(tags), os.stat(tags)) == names
    # Kept answers are copies: a caller changing one changes nothing kept.
    (await fs.list("/repo/tags")).clear()
    assert await fs.list("/repo/tags") == names
    # Changes made by anyone, right after the listing was kept, show at once.
    (tags / "tag-new").mkdir()
    assert await fs.list("/repo/tags") == [*names, "tag-new"]
    (tags / "tag-0000").rmdir()
    assert await fs.list("/repo/tags") == [*names[1:], "tag-new"]
    os.rename(tags / "tag-0001", tags / "tag-renamed")
    assert await fs.list("/repo/tags") == [*names[2:], "tag-new", "tag-renamed"]
    # Another directory put in its place, and a link to one, list their own names.
    os.rename(tags, fs_root / "repo" / "old-tags")
    (fs_root / "other").mkdir()
    (fs_root / "other" / "elsewhere").mkdir()
    os.symlink(fs_root / "other", tags)
    assert await fs.list("/repo/tags") == ["elsewhere"]
    os.unlink(tags)
    tags.mkdir()
    assert await fs.list("/repo/tags") == []


def _overwrite_in_place(path: Path, data: bytes) -> None:
    """Same inode, same size: only the times tell the change."""
    with open(path, "r+b") as file:
        file.write(data)


async def test_fs_a_settled_small_file_is_kept_and_every_change_seen(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = fs_root / "repo" / "tags" / "latest" / "current" / "link"
    link.parent.mkdir(parents=True)
    link.write_bytes(b"sha256:" + b"a" * 64)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    path = "/repo/tags/latest/current/link"
    # Read while it may still change within the settle time: read again every time.
    assert await fs.read(path) == b"sha256:" + b"a" * 64
    assert await fs.read(path) == b"sha256:" + b"a" * 64
    assert opened == [str(link)] * 2
    await asyncio.sleep(SETTLED_AFTER_NS / 1e9 + 0.1)
    assert await fs.read(path) == b"sha256:" + b"a" * 64
    # Settled and kept: the next reads only stat it, without resolving its path again.
    resolved: list[str] = []
    real_resolve = fs._resolve

    def counting_resolve(path: str, follow: bool = True) -> str:
        resolved.append(path)
        return real_resolve(path, follow)

    monkeypatch.setattr(fs, "_resolve", counting_resolve)
    assert await fs.read(path) == b"sha256:" + b"a" * 64
    assert await fs.read(path) == b"sha256:" + b"a" * 64
    assert opened == [str(link)] * 3
    assert resolved == []
    # Changes made by anyone, right after it was kept, show at once: in place with the
    # same size, replaced by a rename, touched, removed, and a link to another file.
    _overwrite_in_place(link, b"sha256:" + b"b" * 64)
    assert await fs.read(path) == b"sha256:" + b"b" * 64
    await fs.write(path, b"sha256:" + b"c" * 64)
    assert await fs.read(path) == b"sha256:" + b"c" * 64
    os.utime(link)
    assert await fs.read(path) == b"sha256:" + b"c" * 64
    link.unlink()
    with pytest.raises(PathNotFoundError):
        await fs.read(path)
    other = fs_root / "elsewhere"
    other.write_bytes(b"sha256:" + b"d" * 64)
    os.symlink(other, link)
    assert await fs.read(path) == b"sha256:" + b"d" * 64
    # A path that is a symbolic link is never kept, settled or not: pointed elsewhere,
    # it is read from its new target although the old one did not change.
    os.utime(link, ns=(0, 0), follow_symlinks=False)
    os.utime(other, ns=(0, 0))
    await asyncio.sleep(SETTLED_AFTER_NS / 1e9 + 0.1)
    assert await fs.read(path) == b"sha256:" + b"d" * 64
    assert await fs.read(path) == b"sha256:" + b"d" * 64
    another = fs_root / "another"
    another.write_bytes(b"sha256:" + b"e" * 64)
    os.symlink(another, fs_root / "new-link")
    os.replace(fs_root / "new-link", link)
    assert await fs.read(path) == b"sha256:" + b"e" * 64
    # A kept file's directory replaced by another (renamed aside, a new one in its
    # place): the file found there is another, and read.
    await fs.write(path, b"sha256:" + b"f" * 64)
    await asyncio.sleep(SETTLED_AFTER_NS / 1e9 + 0.1)
    assert await fs.read(path) == b"sha256:" + b"f" * 64
    os.rename(link.parent, link.parent.with_name("aside"))
    link.parent.mkdir()
    link.write_bytes(b"sha256:" + b"0" * 64)
    assert await fs.read(path) == b"sha256:" + b"0" * 64
    # Larger files are read every time.
    big = fs_root / "big"
    big.write_bytes(b"x" * (SMALL_FILE_LIMIT + 1))
    os.utime(big, ns=(0, 0))
    await asyncio.sleep(SETTLED_AFTER_NS / 1e9 + 0.1)
    opened.clear()
    assert await fs.read("/big") == b"x" * (SMALL_FILE_LIMIT + 1)
    assert await fs.read("/big") == b"x" * (SMALL_FILE_LIMIT + 1)
    assert opened == [str(big)] * 2


def test_fs_kept_small_files_are_bounded(tmp_path: Path) -> None:
    kept = _SmallFiles(limit=2)
    files = []
    for number in range(3):
        file = tmp_path / f"f{number}"
        file.write_bytes(b"%d" % number)
        status = os.stat(file)
        settled = max(status.st_mtime_ns, status.st_ctime_ns) + SETTLED_AFTER_NS
        files.append((f"/f{number}", str(file), status, settled))
    for path, real, status, settled in files[:2]:
        kept.keep(path, real, status, settled, b"x")
    # The least recently used goes first.
    assert kept.get("/f0") == b"x"
    kept.keep(*files[2], b"x")
    assert kept.get("/f1") is None
    assert kept.get("/f0") == b"x"
    assert kept.get("/f2") == b"x"
    # Read again before it settled: what was kept of it is forgotten.
    path, real, status, settled = files[0]
    kept.keep(path, real, status, settled - 1, b"y")
    assert kept.get(path) is None
    # Bounded by their bytes as well: kept again, a file's old content stops counting.
    by_size = _SmallFiles(limit=10, bytes_limit=5)
    by_size.keep(*files[0], b"abc")
    by_size.keep(*files[0], b"abcd")
    assert by_size.get("/f0") == b"abcd"
    by_size.keep(*files[1], b"e")
    assert (by_size.get("/f0"), by_size.get("/f1")) == (b"abcd", b"e")
    by_size.keep(*files[2], b"fg")
    assert (by_size.get("/f0"), by_size.get("/f1"), by_size.get("/f2")) == (None, b"e", b"fg")


def test_fs_kept_listings_hold_a_bounded_number_of_names(tmp_path: Path) -> None:
    listings = _Listings(str(tmp_path), names_limit=25)
    directories = []
    for number in range(4):
        directory = tmp_path / f"d{number}"
        directory.mkdir()
        status = os.stat(directory)
        settled = max(status.st_mtime_ns, status.st_ctime_ns) + SETTLED_AFTER_NS
        directories.append((str(directory), status, settled))
    names = [f"n{i}" for i in range(10)]
    for real, status, settled in directories[:2]:
        listings.keep(real, status, settled, names)
    assert all(listings.get(real, status) == names for real, status, _ in directories[:2])
    # A third listing of 10 would hold 30 names: the least recently used one goes.
    listings.get(directories[0][0], directories[0][1])
    real, status, settled = directories[2]
    listings.keep(real, status, settled, names)
    assert listings.get(directories[1][0], directories[1][1]) is None
    assert listings.get(directories[0][0], directories[0][1]) == names
    assert listings.get(real, status) == names
    # A listing larger than the whole allowance is not kept, and evicts nothing.
    real, status, settled = directories[3]
    listings.keep(real, status, settled, [f"m{i}" for i in range(26)])
    assert listings.get(real, status) is None
    assert listings.get(directories[0][0], directories[0][1]) == names
    # Keeping a directory again replaces its listing rather than adding to it.
    real, status, settled = directories[0]
    listings.keep(real, status, settled, names[:5])
    listings.keep(*directories[1], names)
    assert listings.get(real, status) == names[:5]
    assert listings.get(directories[1][0], directories[1][1]) == names


def test_fs_kept_listings_of_one_shape_share_their_names(tmp_path: Path) -> None:
    table = _Shapes(1)
    listings = _Listings(str(tmp_path), shapes=table)
    kept = []
    for number, names in enumerate(
        [["_layers", "_manifests"], ["_layers", "_manifests"], ["current", "index"]]
    ):
        directory = tmp_path / f"d{number}"
        directory.mkdir()
        status = os.stat(directory)
        settled = max(status.st_mtime_ns, status.st_ctime_ns) + SETTLED_AFTER_NS
        listings.keep(str(directory), status, settled, names)
        kept.append((str(directory), status, names))
    # Each directory answers its own names, whether its shape is shared or not (the
    # table holds one shape here, so the third is kept on its own).
    assert all(listings.get(real, status) == names for real, status, names in kept)
    shapes = [entry[1] for entry in listings._kept.values()]
    assert shapes[0] is shapes[1]
    assert shapes[2] == ("current", "index") and len(table) == 1


def test_fs_a_wide_listing_read_again_keeps_what_it_kept_of_the_names_still_there(
    tmp_path: Path,
) -> None:
    status = os.stat(tmp_path)
    settled = max(status.st_mtime_ns, status.st_ctime_ns) + SETTLED_AFTER_NS
    before = [f"r{number:04d}" for number in range(0, 2000, 2)]
    former = _WideListing(list(reversed(before)), None)
    assert former.dirs == tuple(before)
    # Every third kept, in one of three shapes.
    for at in range(0, len(before), 3):
        assert former.keep(at, status, settled, 1 + at % 3)
    # Names added and removed at the start, in the middle, in runs, at the end; each
    # name a new string, as a listing read again makes.
    after = sorted(
        {"".join(name) for name in before[5:400] + before[401:990]}
        | {f"r{number:04d}" for number in (1, 3, 401, 403, 405, 777, 1999, 2001)}
    )
    listing = _WideListing(after, former)
    assert listing.shapes is not None and listing.versions is not None
    for at, name in enumerate(listing.dirs):
        was = former.index(name)
        kept = was >= 0 and was % 3 == 0
        assert listing.shapes[at] == (1 + was % 3 if kept else 0), name
        if kept:
            assert listing.shape(at, status) == 1 + was % 3
    assert sum(map(bool, listing.shapes)) == sum(
        1 for name in after if former.index(name) % 3 == 0
    )


async def test_fs_remembered_directories_stay_bounded(fs: FilesystemDriver, fs_root: Path) -> None:
    # A registry serving many blobs resolves paths below ever new directories: what the
    # driver remembers of them must not grow with their number.
    count = 3 * PLAIN_DIRS_REMEMBERED
    for number in range(count):
        directory = fs_root / "blobs" / f"{number:05d}"
        directory.mkdir(parents=True)
        (directory / "data").write_bytes(b"x")
    held = []
    tracemalloc.start()
    try:
        for number in range(count):
            if number in (PLAIN_DIRS_REMEMBERED, count - 1):
                held.append(tracemalloc.get_traced_memory()[0])
            assert (await fs.stat(f"/blobs/{number:05d}/data")).size == 1
    finally:
        tracemalloc.stop()
    # Three times the directories, and not much more memory than after the first third
    # (the table of a dict that evicts grows a little before it is compacted).
    assert held[1] < held[0] * 1.5
    assert len(fs._plain_dirs) <= PLAIN_DIRS_REMEMBERED
    assert len(fs._plain_paths) == PLAIN_PATHS_REMEMBERED
    # One evicted long ago and replaced by a link leading out is still refused.
    outside = fs_root.parent / "outside"
    outside.mkdir()
    (outside / "data").write_bytes(b"secret")
    first = fs_root / "blobs" / "00000"
    shutil.rmtree(first)
    first.symlink_to(outside)
    with pytest.raises(InvalidPathError):
        await fs.read("/blobs/00000/data")


async def test_fs_a_bulk_batch_of_writes_leaves_what_is_remembered(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    # A repository's first tag index writes its entries by the thousand, each once: they
    # must not push out the paths requests come back to, nor stay remembered.
    (fs_root / "hot").mkdir()
    (fs_root / "hot" / "link").write_bytes(b"x")
    assert await fs.read("/hot/link") == b"x"
    paths, dirs = dict(fs._plain_paths), dict(fs._plain_dirs)
    assert "/hot/link" in paths
    count = PLAIN_PATHS_REMEMBERED + 1
    # Each in a directory of its own below one of its own, as a tag's index link is.
    bulk = {f"/index/t{number:05d}/sha256/entry": b"e" for number in range(count)}
    for number in range(count):
        (fs_root / "index" / f"t{number:05d}" / "sha256").mkdir(parents=True)
    copies = {path: "/hot/link" for path in list(bulk)[:8]}
    async with await fs.prepare_writes(bulk, replayable=True, copies=copies) as prepared:
        await prepared.publish(bulk)
    assert len(list((fs_root / "index").iterdir())) == count
    assert (fs_root / "index" / "t00000" / "sha256" / "entry").read_bytes() == b"e"
    assert dict(fs._plain_paths) == paths
    # Their directories neither, nor those above them.
    assert set(fs._plain_dirs) == set(dirs)
    # A batch the size of a manifest push's is remembered as before.
    small = {f"/hot/f{number}": b"s" for number in range(BULK_WRITES)}
    async with await fs.prepare_writes(small) as prepared:
        await prepared.publish(small)
    assert set(small) <= set(fs._plain_paths)
    assert "/hot/link" in fs._plain_paths


def record_lstats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths every ``os.lstat`` is called on from now on, in order."""
    looked_up: list[str] = []
    real_lstat = os.lstat

    def recording_lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        looked_up.append(str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", recording_lstat)
    return looked_up


@pytest.mark.parametrize("seeded", [1024, 2])
async def test_fs_a_listing_answers_its_directories_lookups(
    fs: FilesystemDriver,
    fs_root: Path,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    seeded: int,
) -> None:
    # A collection lists a repository's links, then stats each: one lstat per link, the
    # listing's entry types saying that the directory above it is a plain one. So too
    # for a listing of more directories than are remembered one by one (a large
    # repository's tags, each read when its first tag index is built).
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", seeded)
    layers = fs_root / "repo" / "_layers" / "sha256"
    encoded = [f"{number:064x}" for number in range(8)]
    for name in encoded:
        (layers / name).mkdir(parents=True)
        (layers / name / "link").write_bytes(b"sha256:" + name.encode())
    (layers / "inside").symlink_to(layers / encoded[0])
    (layers / "outside").symlink_to(outside)
    looked_up = record_lstats(monkeypatch)
    assert await fs.list("/repo/_layers/sha256") == [*encoded, "inside"]
    looked_up.clear()
    for name in encoded:
        assert (await fs.stat(f"/repo/_layers/sha256/{name}/link")).size == 71
    assert looked_up == [str(layers / name / "link") for name in encoded]
    # Symbolic links listed beside them are still resolved, and refused when they lead
    # out of the root.
    assert await fs.read("/repo/_layers/sha256/inside/link") == b"sha256:" + encoded[0].encode()
    with pytest.raises(InvalidPathError):
        await fs.stat("/repo/_layers/sha256/outside/secret")
    # Only paths reached through plain directories are remembered resolved.
    assert f"/repo/_layers/sha256/{encoded[1]}/link" in fs._plain_paths
    assert not {"/repo/_layers/sha256/inside/link", "/repo/_layers/sha256/outside/secret"} & set(
        fs._plain_paths
    )
    # A file asked to be listed is not taken for a directory.
    with pytest.raises(PathNotFoundError):
        await fs.list(f"/repo/_layers/sha256/{encoded[0]}/link")
    assert str(layers / encoded[0] / "link") not in fs._plain_dirs
    # A listing reached through a link vouches for nothing below it: a directory there
    # replaced by a link leading out is refused.
    (fs_root / "alias").symlink_to(layers)
    assert await fs.list("/alias") == [*encoded, "inside"]
    shutil.rmtree(layers / encoded[1])
    (layers / encoded[1]).symlink_to(outside)
    with pytest.raises(InvalidPathError):
        await fs.read(f"/alias/{encoded[1]}/secret")
    assert not any(path.startswith("/alias/") for path in fs._plain_paths)


async def test_fs_a_walk_below_a_large_listing_leaves_what_is_remembered(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog walk lists every repository's own directory once: those directories are
    # known plain from their parent's listing, and remembering each would push out the
    # directories requests come back to.
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", 2)
    names = [f"repo-{number}" for number in range(6)]
    for name in names:
        (fs_root / "many" / name / "_manifests").mkdir(parents=True)
    # One holds more directories than are remembered one by one.
    wide = ["_layers", "_manifests", "_uploads"]
    for held in wide:
        (fs_root / "many" / names[0] / held).mkdir(exist_ok=True)
    (fs_root / "hot").mkdir()
    (fs_root / "hot" / "link").write_bytes(b"x")
    assert await fs.read("/hot/link") == b"x"
    assert await fs.list("/many") == names
    remembered = set(fs._plain_dirs)
    assert os.path.realpath(fs_root / "hot") in remembered
    for name in names:
        assert await fs.list(f"/many/{name}") == (wide if name == names[0] else ["_manifests"])
    assert set(fs._plain_dirs) == remembered
    # The wider one's are still known as a set, as any large listing's are.
    assert os.path.realpath(fs_root / "many" / names[0]) in fs._plain_listed
    # Paths below them still resolve without a lookup of each directory above.
    looked_up = record_lstats(monkeypatch)
    assert await fs.list(f"/many/{names[3]}/_manifests") == []
    assert looked_up == [str(fs_root / "many" / names[3] / "_manifests")]


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories the filesystem driver reads to list them from now on, in order."""
    read: list[str] = []
    real_read = filesystem_module._names_and_dirs

    def recording_read(real: str, inside: Callable[[str], bool]) -> tuple[list[str], list[str]]:
        read.append(real)
        return real_read(real, inside)

    monkeypatch.setattr(filesystem_module, "_names_and_dirs", recording_read)
    return read


async def test_fs_a_walk_keeps_each_listing_beside_its_parents(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog walk lists every repository's own directory right after their parent's:
    # each such listing is kept by its place among the parent's directories, not on its
    # own (with its path as a key), which took eight times the memory.
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", 2)
    settle = 0.15
    monkeypatch.setattr(filesystem_module, "SETTLED_AFTER_NS", int(settle / 1.5 * 1e9))
    names = [f"repo-{number}" for number in range(6)]
    many = fs_root / "many"
    for name in names:
        for held in ("_layers", "_manifests"):
            (many / name / held).mkdir(parents=True)
    (many / names[5] / "_uploads").mkdir()
    expected = {name: ["_layers", "_manifests"] for name in names}
    expected[names[5]] = ["_layers", "_manifests", "_uploads"]
    await asyncio.sleep(settle)
    assert await fs.list("/many") == names
    on_their_own = dict(fs._small_listings._kept)
    read = record_reads(monkeypatch)

    async def walk_all() -> list[str]:
        """The directories a walk read, the others answered from what was kept."""
        read.clear()
        for name in sorted(expected):
            assert await fs.list(f"/many/{name}") == expected[name]
        return [str(Path(real).relative_to(many)) for real in read]

    assert await walk_all() == names
    # Walked again: each answered from what was kept, without reading it.
    assert await walk_all() == []
    assert dict(fs._small_listings._kept) == on_their_own
    assert fs._walked_shapes._names == [
        ("_layers", "_manifests"),
        ("_layers", "_manifests", "_uploads"),
    ]
    # Nor are their paths remembered one by one.
    assert not any(path.startswith("/many/") for path in fs._plain_paths)
    # A change inside one shows at once; the others stay kept. It is kept again once
    # it has settled.
    (many / names[2] / "_uploads").mkdir()
    expected[names[2]] = ["_layers", "_manifests", "_uploads"]
    assert await walk_all() == [names[2]]
    await asyncio.sleep(settle)
    assert await walk_all() == [names[2]]
    assert await walk_all() == []
    # Another directory put in one's place lists its own names.
    (fs_root / "elsewhere" / "_manifests").mkdir(parents=True)
    shutil.rmtree(many / names[4])
    os.rename(fs_root / "elsewhere", many / names[4])
    expected[names[4]] = ["_manifests"]
    assert await walk_all() == [names[4]]
    await asyncio.sleep(settle)
    assert await walk_all() == [names[4]]
    # A repository added reads the parent again; what was kept of the others stays.
    (many / "repo-new" / "_manifests").mkdir(parents=True)
    expected["repo-new"] = ["_manifests"]
    assert await fs.list("/many") == sorted(expected)
    assert await walk_all() == ["repo-new"]


async def test_fs_a_wide_listing_in_use_outlasts_one_off_ones(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog walked page after page keeps what it kept while DELETEs list the tags of
    # one large repository after another, each once.
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", 2)
    monkeypatch.setattr(filesystem_module, "SETTLED_AFTER_NS", 100_000_000)
    names = [f"repo-{number}" for number in range(6)]
    for name in names:
        (fs_root / "many" / name / "_manifests").mkdir(parents=True)
    one_off = [f"tags-{number:02d}" for number in range(PLAIN_LISTINGS_REMEMBERED)]
    for directory in one_off:
        for tag in range(3):
            (fs_root / directory / f"t{tag}").mkdir(parents=True)
    await asyncio.sleep(0.15)
    assert await fs.list("/many") == names
    for name in names:
        assert await fs.list(f"/many/{name}") == ["_manifests"]
    read = record_reads(monkeypatch)
    for directory in one_off:
        assert await fs.list(f"/{directory}") == ["t0", "t1", "t2"]
        assert await fs.list("/many") == names
    for name in names:
        assert await fs.list(f"/many/{name}") == ["_manifests"]
    assert read == [str(fs_root / directory) for directory in one_off]
    # The oldest unused went instead.
    assert str(fs_root / one_off[0]) not in fs._plain_listed
    assert str(fs_root / "many") in fs._plain_listed


async def test_fs_wide_listings_known_stay_bounded_by_their_directories(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", 2)
    monkeypatch.setattr(filesystem_module, "LISTED_NAMES_REMEMBERED", 8)
    for directory, count in (("a", 4), ("b", 4), ("c", 3), ("d", 12)):
        for number in range(count):
            (fs_root / directory / f"s{number:02d}").mkdir(parents=True)
    for directory in "abc":
        await fs.list(f"/{directory}")
    assert list(fs._plain_listed) == [str(fs_root / "b"), str(fs_root / "c")]
    # One larger than the bound is still known, alone.
    await fs.list("/d")
    assert list(fs._plain_listed) == [str(fs_root / "d")]
    assert fs._plain_listed_dirs == 12


async def test_fs_a_walked_listing_of_another_shape_is_kept_on_its_own(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the shapes numbered beside the parent, a listing is kept as any other is.
    monkeypatch.setattr(filesystem_module, "PLAIN_DIRS_SEEDED", 2)
    monkeypatch.setattr(fs._walked_shapes, "_limit", 1)
    monkeypatch.setattr(filesystem_module, "SETTLED_AFTER_NS", 100_000_000)
    shapes = {"a": ["_manifests"], "b": ["_manifests"], "c": ["_layers", "_manifests"]}
    for name, held in shapes.items():
        for directory in held:
            (fs_root / "many" / name / directory).mkdir(parents=True)
    await asyncio.sleep(0.15)
    assert await fs.list("/many") == ["a", "b", "c"]
    for name, held in shapes.items():
        assert await fs.list(f"/many/{name}") == held
    assert fs._walked_shapes._names == [("_manifests",)]
    assert list(fs._small_listings._kept) == ["/many", "/many/c"]
    read = record_reads(monkeypatch)
    for name, held in shapes.items():
        assert await fs.list(f"/many/{name}") == held
    assert read == []


async def test_fs_a_large_listing_leaves_its_names_uninterned(
    fs: FilesystemDriver, fs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interning 10,000 tag names would grow the interpreter's table of interned strings
    # for good; only small directories' names (shared by thousands of them) are.
    monkeypatch.setattr(filesystem_module, "SETTLED_AFTER_NS", 100_000_000)
    prefix = uuid.uuid4().hex
    tags = fs_root / "tags"
    for number in range(1000):
        (tags / f"{prefix}-{number:04d}").mkdir(parents=True)
    assert os.stat(tags).st_size > SMALL_DIRECTORY
    await asyncio.sleep(0.15)
    names = await fs.list("/tags")
    assert fs._listings.get(str(tags), os.stat(tags)) == names
    kept = (await fs.list("/tags"))[0]
    assert sys.intern("".join([prefix, "-0000"])) is not kept


async def failures_beside(
    churn: Callable[[threading.Event], None],
    operations: Callable[[], Awaitable[None]],
    rounds: int,
) -> list[StorageError]:
    """Run ``operations`` ``rounds`` times while ``churn`` changes the tree in a thread
    (until its event is set); the storage errors other than a missing path."""
    stop = threading.Event()
    thread = threading.Thread(target=churn, args=(stop,))
    thread.start()
    failures = []
    try:
        for _ in range(rounds):
            try:
                await operations()
            except PathNotFoundError:
                pass
            except StorageError as error:
                failures.append(error)
    finally:
        stop.set()
        thread.join()
    return failures


async def test_fs_removals_racing_a_directory_come_and_go_never_fail(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    # A collection clearing a link directory while a client's DELETE removes it, or
    # the other way round: whichever comes second finds it gone, which is no error.
    (fs_root / "a").mkdir()

    def come_and_go(stop: threading.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(FileExistsError):
                (fs_root / "a" / "d").mkdir()
            with contextlib.suppress(FileNotFoundError):
                (fs_root / "a" / "d").rmdir()

    async def remove() -> None:
        with contextlib.suppress(PathNotFoundError):
            await fs.remove_empty("/a/d")
        await fs.delete("/a/d")

    assert await failures_beside(come_and_go, remove, 10_000) == []


async def test_fs_deleting_a_tree_removes_its_symlinks_not_what_they_point_to(
    fs: FilesystemDriver, fs_root: Path, outside: Path
) -> None:
    await fs.write("/tag/current/link", b"sha256:ab")
    (fs_root / "tag" / "current" / "escape").symlink_to(outside)
    (fs_root / "tag" / "escape-file").symlink_to(outside / "secret")
    await fs.delete("/tag")
    assert not (fs_root / "tag").exists()
    assert (outside / "secret").read_bytes() == b"secret"


async def test_fs_deleting_a_tree_while_a_writer_adds_to_it_removes_it(
    fs: FilesystemDriver, fs_root: Path
) -> None:
    # A collection removing a repository's reverse tag index while a tag push adds an
    # entry to it: the entry goes with the tree, and the delete does not fail, even
    # when the writer adds entries and recreates the tree as fast as it can.
    def add_entries(stop: threading.Event) -> None:
        number = 0
        while not stop.is_set():
            directory = fs_root / "t" / "index" / f"{number % 7}"
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                directory.mkdir(parents=True, exist_ok=True)
                (directory / f"{number}").write_bytes(b"x")
            number += 1

    assert await failures_beside(add_entries, lambda: fs.delete("/t"), 1_000) == []
    # What was moved aside to be removed is gone too.
    assert [path.name for path in fs_root.iterdir() if path.name != "t"] == []


async def test_fs_a_store_at_the_filesystem_root_resolves_its_paths(tmp_path: Path) -> None:
    # Nobody should store a registry in "/", but its paths must still be the right ones.
    root = FilesystemDriver("/")
    assert root._resolve("/tmp") == "/tmp"
    assert root._resolve(f"{tmp_path}/x") == f"{tmp_path}/x"
    (tmp_path / "x").mkdir()
    assert await root.list(str(tmp_path)) == ["x"]


def test_fs_a_file_that_changed_size_since_its_stat_is_read_whole(tmp_path: Path) -> None:
    # The size from the stat only sizes the first read: a link replaced by a longer one
    # (another digest algorithm) or a shorter one meanwhile is still read to its end.
    path = tmp_path / "f"
    content = os.urandom(3 * MiB + 7)
    path.write_bytes(content)
    assert _read_file(str(path), 10) == content
    assert _read_file(str(path), 10 * MiB) == content
    assert _read_file(str(path), len(content)) == content
    path.write_bytes(b"")
    assert _read_file(str(path), 0) == b""
