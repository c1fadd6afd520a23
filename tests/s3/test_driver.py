"""What only the s3 driver has: keys in the bucket, multipart uploads, server-side
copies, resuming from another process, redirects. Against the session's moto server,
looked at from outside with a plain boto3 client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.sockets import SOCKET_READ
from dockyard.storage import PathNotFoundError, S3Driver, create_driver
from dockyard.storage.s3 import PARTS_KEY
from tests.s3.moto_server import MotoServer

MiB = 1 << 20


@pytest.fixture
def bucket(moto_server: MotoServer) -> Iterator[str]:
    yield moto_server.new_bucket()
    moto_server.reset()


def make(moto_server: MotoServer, bucket: str, **extra: Any) -> S3Driver:
    driver = create_driver("s3", moto_server.driver_params(bucket, **extra))
    assert isinstance(driver, S3Driver)
    return driver


@pytest.fixture
async def s3(moto_server: MotoServer, bucket: str) -> AsyncIterator[S3Driver]:
    driver = make(moto_server, bucket, rootdirectory="/registry/root/")
    yield driver
    await driver.close()


def keys(moto_server: MotoServer, bucket: str) -> dict[str, int]:
    client = moto_server.client()
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.update((item["Key"], item["Size"]) for item in page.get("Contents", []))
    return found


def uploads_in_progress(moto_server: MotoServer, bucket: str) -> list[dict[str, Any]]:
    result = moto_server.client().list_multipart_uploads(Bucket=bucket)
    return list(result.get("Uploads", []))


async def test_keys_are_the_paths_below_the_root_directory(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    await s3.write("/docker/registry/v2/blobs/sha256/ab/abcd/data", b"blob")
    writer = await s3.writer("/docker/registry/v2/repositories/r/_uploads/u/data")
    await writer.write(b"up")
    await writer.commit()
    await writer.close()
    # Besides the time object a write leaves (see test_a_touch_writes_a_time_object...).
    assert keys(moto_server, bucket) == {
        "registry/root/~times/docker/registry/v2/blobs/sha256/ab/abcd/data": 0,
        "registry/root/docker/registry/v2/blobs/sha256/ab/abcd/data": 4,
        "registry/root/docker/registry/v2/repositories/r/_uploads/u/data": 2,
    }


async def test_objects_written_by_others_are_read_with_their_store_times(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    # As Distribution writes them: no metadata of ours.
    moto_server.client().put_object(
        Bucket=bucket, Key="registry/root/docker/registry/v2/x/link", Body=b"sha256:x"
    )
    info = await s3.stat("/docker/registry/v2/x/link")
    assert abs(info.mtime - time.time()) < 5
    assert await s3.list("/docker/registry/v2/x") == ["link"]
    # Keys no driver path can name (a console's directory marker) are not listed.
    moto_server.client().put_object(Bucket=bucket, Key="registry/root/docker/odd name", Body=b"")
    assert await s3.list("/docker") == ["registry"]


async def test_a_writer_streams_parts_and_keeps_at_most_one_in_memory(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    content = os.urandom(17 * MiB + 3)
    writer = await s3.writer("/u/data")
    for start in range(0, len(content), MiB):
        await writer.write(content[start : start + MiB])
    # Three 5 MiB parts are on the server before anything is committed.
    (upload,) = uploads_in_progress(moto_server, bucket)
    parts = moto_server.client().list_parts(
        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    )
    assert [part["Size"] for part in parts["Parts"]] == [5 * MiB] * 3
    assert len(writer._pending) == 2 * MiB + 3
    await writer.commit()
    await writer.close()
    assert await s3.read("/u/data") == content
    assert uploads_in_progress(moto_server, bucket) == []


async def test_resume_in_another_process_continues_the_committed_object(
    moto_server: MotoServer, bucket: str
) -> None:
    """A chunked upload whose chunks land on different replicas (or a restarted one)."""
    expected = hashlib.sha256()
    size = 0
    # Chunks below and above the part size, so each resume starts from a small object
    # read back or from a server-side copy of a large one.
    for index, chunk_size in enumerate([MiB, 3 * MiB, 6 * MiB, 1, 5 * MiB + 1, 2]):
        replica = make(moto_server, bucket)
        writer = await (
            replica.writer("/u/data") if index == 0 else replica.writer("/u/data", resume_at=size)
        )
        assert writer.size == size
        chunk = os.urandom(chunk_size)
        await writer.write(chunk)
        await writer.commit()
        await writer.close()
        await replica.close()
        expected.update(chunk)
        size += chunk_size
        assert (await make(moto_server, bucket).stat("/u/data")).size == size
    reader = make(moto_server, bucket)
    streamed = hashlib.sha256()
    async for piece in reader.stream("/u/data"):
        streamed.update(piece)
    assert streamed.hexdigest() == expected.hexdigest()
    assert uploads_in_progress(moto_server, bucket) == []
    await reader.close()


async def _append_on_a_new_replica(
    moto_server: MotoServer, bucket: str, path: str, at: int, chunk: bytes, **extra: Any
) -> None:
    replica = make(moto_server, bucket, **extra)
    writer = await (replica.writer(path) if at == 0 else replica.writer(path, resume_at=at))
    await writer.write(chunk)
    await writer.commit()
    await writer.close()
    await replica.close()


async def test_chunks_resumed_anywhere_go_on_in_one_open_upload(
    moto_server: MotoServer, bucket: str
) -> None:
    """Each chunk is sent once: resuming continues the same multipart upload, and the
    object at the key holds only the tail after its last part."""
    content = b""
    upload_ids = set()
    for index in range(5):
        chunk = os.urandom(3 * MiB + index)
        await _append_on_a_new_replica(moto_server, bucket, "/u/data", len(content), chunk)
        content += chunk
        if index:  # the first 3 MiB are below a part: one plain object
            (upload,) = uploads_in_progress(moto_server, bucket)
            upload_ids.add(upload["UploadId"])
        stored = keys(moto_server, bucket)["u/data"]
        assert stored == len(content) % (5 * MiB)
        assert (await make(moto_server, bucket).stat("/u/data")).size == len(content)
    assert len(upload_ids) == 1
    # Reading it (or moving it) completes the upload: a plain object from then on.
    reader = make(moto_server, bucket)
    assert await reader.read("/u/data") == content
    assert uploads_in_progress(moto_server, bucket) == []
    assert keys(moto_server, bucket)["u/data"] == len(content)
    await reader.close()


def parts_of(moto_server: MotoServer, bucket: str, key: str) -> list[int]:
    (upload,) = uploads_in_progress(moto_server, bucket)
    listing = moto_server.client().list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    return [part["Size"] for part in listing.get("Parts", [])]


async def test_a_chunk_of_a_part_or_more_goes_up_whole_and_leaves_no_tail(
    moto_server: MotoServer, bucket: str
) -> None:
    """Chunks below ``chunksize`` but at or above S3's part minimum become parts of their
    own at commit: the tail stays empty, so the next chunk reads nothing back."""
    params = {"chunksize": 10 * MiB}
    content = b""
    # (chunk size, parts after it, tail after it)
    steps = [
        (6 * MiB, [6 * MiB], 0),
        (5 * MiB, [6 * MiB, 5 * MiB], 0),
        (3 * MiB, [6 * MiB, 5 * MiB], 3 * MiB),  # below the minimum: kept as the tail
        (4 * MiB, [6 * MiB, 5 * MiB, 7 * MiB], 0),  # with the tail, a part again
        (12 * MiB, [6 * MiB, 5 * MiB, 7 * MiB, 10 * MiB], 2 * MiB),
    ]
    for size, parts, tail in steps:
        chunk = os.urandom(size)
        await _append_on_a_new_replica(
            moto_server, bucket, "/u/data", len(content), chunk, **params
        )
        content += chunk
        assert parts_of(moto_server, bucket, "u/data") == parts
        assert keys(moto_server, bucket)["u/data"] == tail
        assert (await make(moto_server, bucket).stat("/u/data")).size == len(content)
    # Cut back into the parts, then read: completed from parts of unequal sizes.
    reader = make(moto_server, bucket, **params)
    writer = await reader.writer("/u/data", resume_at=20 * MiB)
    await writer.close()
    assert await reader.read("/u/data") == content[: 20 * MiB]
    assert uploads_in_progress(moto_server, bucket) == []
    await reader.close()


def is_composite(moto_server: MotoServer, bucket: str, key: str) -> bool:
    head = moto_server.client().head_object(Bucket=bucket, Key=key)
    return PARTS_KEY in head.get("Metadata", {})


async def test_a_sealed_file_is_one_plain_object_its_tail_sent_as_the_last_part(
    moto_server: MotoServer, bucket: str
) -> None:
    """The last chunk of an upload: the bytes short of a part go up as the upload's last
    part at once, not stored as the tail to be read back when the blob is moved."""
    content = os.urandom(12 * MiB + 3)
    driver = make(moto_server, bucket, chunksize=10 * MiB)
    writer = await driver.writer("/u/data")
    await writer.write(content)
    assert parts_of(moto_server, bucket, "u/data") == [10 * MiB]
    await writer.seal()
    # Completed: nothing in progress, nothing composite, and no tail was ever stored.
    assert uploads_in_progress(moto_server, bucket) == []
    assert not is_composite(moto_server, bucket, "u/data")
    assert keys(moto_server, bucket)["u/data"] == len(content)
    # The writer goes on from the whole file.
    await writer.write(b"more")
    await writer.commit()
    await writer.close()
    assert await driver.read("/u/data") == content + b"more"
    await driver.close()


async def test_sealing_a_committed_upload_resumed_on_another_replica_completes_it(
    moto_server: MotoServer, bucket: str
) -> None:
    first, last = os.urandom(7 * MiB), os.urandom(2 * MiB)
    await _append_on_a_new_replica(moto_server, bucket, "/u/data", 0, first, chunksize=10 * MiB)
    assert is_composite(moto_server, bucket, "u/data")
    driver = make(moto_server, bucket, chunksize=10 * MiB)
    writer = await driver.writer("/u/data", resume_at=len(first))
    await writer.write(last)
    await writer.seal()
    await writer.close()
    assert uploads_in_progress(moto_server, bucket) == []
    assert not is_composite(moto_server, bucket, "u/data")
    assert await driver.read("/u/data") == first + last
    # Sealed with nothing written since the commit: the committed tail is the last part.
    whole = os.urandom(12 * MiB)
    await _append_on_a_new_replica(moto_server, bucket, "/v/data", 0, whole, chunksize=10 * MiB)
    assert is_composite(moto_server, bucket, "v/data")
    assert keys(moto_server, bucket)["v/data"] == 2 * MiB
    resumed = await driver.writer("/v/data", resume_at=len(whole))
    await resumed.seal()
    await resumed.close()
    assert not is_composite(moto_server, bucket, "v/data")
    assert await driver.read("/v/data") == whole
    await driver.close()


async def test_past_half_the_part_limit_chunks_wait_in_the_tail_for_a_full_part(
    moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.storage import s3 as s3_module

    monkeypatch.setattr(s3_module, "MAX_PARTS", 4)
    params = {"chunksize": 10 * MiB}
    content = b""
    for _ in range(4):
        chunk = os.urandom(6 * MiB)
        await _append_on_a_new_replica(
            moto_server, bucket, "/u/data", len(content), chunk, **params
        )
        content += chunk
    # Two 6 MiB parts reach half the limit; then the tail fills up to a 10 MiB part.
    assert parts_of(moto_server, bucket, "u/data") == [6 * MiB, 6 * MiB, 10 * MiB]
    assert keys(moto_server, bucket)["u/data"] == 2 * MiB
    reader = make(moto_server, bucket, **params)
    assert await reader.read("/u/data") == content
    await reader.close()


async def test_a_composite_file_resumed_inside_its_parts_or_its_tail(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    content = os.urandom(12 * MiB)
    writer = await s3.writer("/u/data")
    await writer.write(content)
    await writer.commit()
    await writer.close()
    # Back into the tail: only the tail is cut.
    writer = await s3.writer("/u/data", resume_at=11 * MiB)
    await writer.close()
    assert (await s3.stat("/u/data")).size == 11 * MiB
    # Back into the parts: completed, then continued as a plain object.
    writer = await s3.writer("/u/data", resume_at=3 * MiB)
    await writer.write(b"end")
    await writer.commit()
    await writer.close()
    assert await s3.read("/u/data") == content[: 3 * MiB] + b"end"
    got = b"".join([piece async for piece in s3.stream("/u/data", 3 * MiB - 2, 5)])
    assert got == content[3 * MiB - 2 : 3 * MiB] + b"end"
    # A range read of a composite file past its tail's own length.
    writer = await s3.writer("/v/data")
    await writer.write(content)
    await writer.commit()
    await writer.close()
    got = b"".join([piece async for piece in s3.stream("/v/data", 10 * MiB + 1, 4)])
    assert got == content[10 * MiB + 1 : 10 * MiB + 5]


async def test_uncommitted_parts_are_aborted_on_close_and_on_delete(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    writer = await s3.writer("/r/_uploads/a/data")
    await writer.write(os.urandom(6 * MiB))
    assert len(uploads_in_progress(moto_server, bucket)) == 1
    await writer.close()
    assert uploads_in_progress(moto_server, bucket) == []
    assert (await s3.stat("/r/_uploads/a/data")).size == 0

    # A writer that never closes (its process died): deleting the upload directory
    # (finishing or purging the upload) aborts its parts.
    orphan = await s3.writer("/r/_uploads/b/data")
    await orphan.write(os.urandom(6 * MiB))
    await s3.delete("/r/_uploads/b")
    assert uploads_in_progress(moto_server, bucket) == []


@pytest.mark.parametrize("size", [3 * MiB + 5, 23 * MiB + 7], ids=["one-object", "multipart"])
async def test_a_staged_file_appears_whole_and_plain_only_when_sealed(
    moto_server: MotoServer, bucket: str, size: int
) -> None:
    """Until its seal the key keeps what it had; then one plain object with every byte
    and the time of the seal, though a multipart upload began well before."""
    driver = make(moto_server, bucket, chunksize=10 * MiB)
    await driver.write("/b/data", b"what was here")
    content = os.urandom(size)
    staged = await driver.staged_writer("/b/data")
    assert staged is not None
    await staged.write(content[: size // 2])
    await asyncio.sleep(1.2)
    await staged.write(content[size // 2 :])
    assert await driver.read("/b/data") == b"what was here"
    sealed_at = time.time()
    await staged.seal()
    await staged.close()
    assert uploads_in_progress(moto_server, bucket) == []
    assert not is_composite(moto_server, bucket, "b/data")
    assert keys(moto_server, bucket)["b/data"] == size
    assert await driver.read("/b/data") == content
    assert (await driver.stat("/b/data")).mtime >= sealed_at - 0.01
    await driver.close()


@pytest.mark.parametrize("end", ["close", "cancel"])
async def test_a_staged_file_ended_before_its_seal_leaves_the_key_as_it_was(
    moto_server: MotoServer, bucket: str, end: str
) -> None:
    driver = make(moto_server, bucket, chunksize=10 * MiB)
    await driver.write("/b/data", b"someone else's")
    staged = await driver.staged_writer("/b/data")
    assert staged is not None
    await staged.write(os.urandom(12 * MiB))  # a part is up
    assert len(uploads_in_progress(moto_server, bucket)) == 1
    await (staged.close() if end == "close" else staged.cancel())
    assert uploads_in_progress(moto_server, bucket) == []
    assert await driver.read("/b/data") == b"someone else's"
    await driver.close()


async def test_touch_and_move_of_large_objects_copy_in_parts(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    content = os.urandom(12 * MiB + 5)
    await s3.write("/blobs/big/data", content)
    await s3.touch("/blobs/big/data", mtime=1000.0)
    assert (await s3.stat("/blobs/big/data")).mtime == 1000.0
    before = time.time()
    await s3.touch("/blobs/big/data")
    assert (await s3.stat("/blobs/big/data")).mtime >= before
    await s3.touch("/blobs/big/data", mtime=2000.0)
    await s3.move("/blobs/big", "/trash/0")
    moved = await s3.stat("/trash/0/data")
    assert (moved.size, moved.mtime) == (len(content), 2000.0)
    assert await s3.read("/trash/0/data") == content
    assert set(keys(moto_server, bucket)) == {"registry/root/trash/0/data"}
    assert uploads_in_progress(moto_server, bucket) == []


async def test_redirect_urls_are_pre_signed_and_can_be_disabled(
    moto_server: MotoServer, bucket: str
) -> None:
    driver = make(moto_server, bucket)
    await driver.write("/blobs/data", b"content")
    url = await driver.redirect_url("/blobs/data")
    assert url is not None
    assert url.startswith(f"{moto_server.endpoint}/{bucket}/blobs/data?")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"content"
    assert await driver.redirect_url("/blobs/data", "DELETE") is None
    await driver.close()
    quiet = create_driver("s3", {**moto_server.driver_params(bucket), "redirect": False})
    assert await quiet.redirect_url("/blobs/data") is None
    await quiet.close()


async def test_an_unreachable_or_missing_bucket_is_a_storage_error(
    moto_server: MotoServer,
) -> None:
    from dockyard.storage import StorageError

    driver = make(moto_server, "no-such-bucket")
    with pytest.raises(StorageError) as error:
        await driver.read("/docker/x")
    assert not isinstance(error.value, PathNotFoundError)
    assert "NoSuchBucket" in str(error.value)
    await driver.close()


async def test_a_touch_writes_a_time_object_not_the_content(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    client = moto_server.client()
    await s3.write("/blobs/ab/data", os.urandom(7 * MiB))
    content_key = "registry/root/blobs/ab/data"
    await s3.touch("/blobs/ab/data", mtime=1000.0)
    before = time.time()
    await s3.touch("/blobs/ab/data")
    # The content object is the copy the explicit touch made, untouched since.
    assert client.head_object(Bucket=bucket, Key=content_key)["Metadata"]["mtime"] == "1000.0"
    assert set(keys(moto_server, bucket)) == {content_key, "registry/root/~times/blobs/ab/data"}
    touched = await s3.stat("/blobs/ab/data")
    assert touched.mtime >= before
    # Walks and listings see the file, never the time object.
    assert [info.path async for info in s3.walk("/blobs")] == ["/blobs/ab", "/blobs/ab/data"]
    assert (await anext(aiter(s3.walk("/blobs/ab")))).mtime == touched.mtime

    # New content starts afresh: an old touch of other content does not apply to it.
    await s3.touch("/blobs/ab/data")
    await s3.write("/blobs/ab/data", b"new")
    await s3.touch("/blobs/ab/data", mtime=2000.0)
    assert (await s3.stat("/blobs/ab/data")).mtime == 2000.0
    # Deleting the file takes its time object along.
    await s3.touch("/blobs/ab/data")
    await s3.delete("/blobs/ab/data")
    assert keys(moto_server, bucket) == {}
    await s3.write("/blobs/cd/data", b"x")
    await s3.touch("/blobs/cd/data")
    await s3.delete("/blobs")
    assert keys(moto_server, bucket) == {}


class TouchBeforeDelete(S3Driver):
    """Lands a touch of ``victim`` in the one window left: after the collector's second
    check, right before it deletes the source."""

    victim: str = ""
    rewrite: bytes | None = None
    touched: bool = False

    async def _delete_keys(self, path: str, keys: list[str]) -> None:
        if not self.touched and self.victim and self.key(self.victim) in keys:
            self.touched = True
            if self.rewrite is None:
                await self.touch(self.victim)
            else:
                await self.write(self.victim, self.rewrite)
        await super()._delete_keys(path, keys)


async def test_a_touch_landing_just_before_the_delete_puts_the_content_back(
    moto_server: MotoServer, bucket: str
) -> None:
    base = make(moto_server, bucket)
    driver = TouchBeforeDelete(base.params)
    await driver.write("/blobs/ab/data", b"held")
    await driver.touch("/blobs/ab/data", mtime=1000.0)
    driver.victim = "/blobs/ab/data"
    since = time.time() - 1
    assert await driver.move_unless_touched("/blobs/ab", "/trash/0", since) is False
    assert driver.touched
    assert await driver.read("/blobs/ab/data") == b"held"
    assert (await driver.stat("/blobs/ab/data")).mtime >= since
    assert set(keys(moto_server, bucket)) == {"blobs/ab/data", "~times/blobs/ab/data"}
    # Untouched, it goes.
    driver.victim = ""
    assert await driver.move_unless_touched("/blobs/ab", "/trash/0", time.time() + 60) is True
    assert set(keys(moto_server, bucket)) == {"trash/0/data"}
    await driver.close()
    await base.close()


async def test_a_link_rewritten_just_before_the_delete_is_put_back(
    moto_server: MotoServer, bucket: str
) -> None:
    """A manifest pushed again rewrites its revision link as the collector takes it."""
    base = make(moto_server, bucket)
    driver = TouchBeforeDelete(base.params)
    link = "/r/_manifests/revisions/sha256/ab/link"
    await driver.write(link, b"sha256:ab")
    await driver.touch(link, mtime=1000.0)
    driver.victim, driver.rewrite = link, b"sha256:ab"
    since = time.time() - 1
    assert await driver.move_unless_touched(link.rsplit("/", 1)[0], "/trash/0", since) is False
    assert driver.touched
    assert await driver.read(link) == b"sha256:ab"
    assert (await driver.stat(link)).mtime >= since
    with pytest.raises(PathNotFoundError):
        await driver.stat("/trash/0")
    await driver.close()
    await base.close()


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (40 * MiB, 32 * MiB),
        (9 << 30, 5 << 30),
        (5 * MiB, 32 * MiB),
        (1, 5 * MiB),
        (100 << 30, 5 * MiB),
    ],
)
def test_copy_ranges_are_parts_s3_accepts(size: int, chunk: int) -> None:
    from dockyard.storage.s3 import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, _copy_ranges

    ranges = _copy_ranges(size, chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    assert all(a[1] + 1 == b[0] for a, b in pairwise(ranges))
    assert len(ranges) <= MAX_PARTS
    lengths = [end - start + 1 for start, end in ranges]
    assert max(lengths) <= MAX_PART_SIZE
    # Any range may be followed by more parts, so none is below the minimum part size.
    assert min(lengths) >= min(size, MIN_PART_SIZE)


async def test_credentials_from_the_environment_and_signature_version_2(
    moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No accesskey/secretkey: the AWS credential chain (here its environment variables)."""
    from tests.s3.moto_server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    params = moto_server.driver_params(bucket)
    del params["accesskey"], params["secretkey"]
    for v4auth in (True, False):
        driver = create_driver("s3", {**params, "v4auth": v4auth})
        await driver.write(f"/v4-{v4auth}", b"signed")
        assert await driver.read(f"/v4-{v4auth}") == b"signed"
        await driver.close()


async def test_a_path_near_the_key_limit_gets_a_hashed_time_key(
    s3: S3Driver, moto_server: MotoServer, bucket: str
) -> None:
    # With the fixture's root directory its key is just within the limit; its time
    # key under "~times/" would not be.
    path = "/long/" + "/".join(["d" * 200] * 4) + "/" + "e" * 190 + "/data"
    assert len(s3.key(path).encode()) <= 1024 < len(s3.key(path).encode()) + 7
    await s3.write(path, b"x")
    await s3.touch(path)
    stored = keys(moto_server, bucket)
    assert all(len(key.encode()) <= 1024 for key in stored)
    assert any("/~times/~hashed/" in key for key in stored)
    assert (await s3.stat(path)).mtime > time.time() - 60
    await s3.delete("/long")
    assert keys(moto_server, bucket) == {}


# Streams ``/big`` through a driver built from the JSON parameters in argv[1].
STREAMER = """
import asyncio, json, sys
from dockyard.storage import create_driver

async def main():
    driver = create_driver("s3", json.loads(sys.argv[1]))
    total = 0
    async for piece in driver.stream("/big"):
        total += len(piece)
    await driver.close()
    print(total)

asyncio.run(main())
"""


async def test_a_streamed_read_takes_up_to_a_mebibyte_per_receive(
    s3: S3Driver, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    body = os.urandom(8 * MiB)
    await s3.write("/big", body)
    trace = tmp_path / "recv.trace"
    params = moto_server.driver_params(bucket, rootdirectory="/registry/root/")
    done = await asyncio.to_thread(
        subprocess.run,
        [
            "strace", "-f", "-yy", "-qq", "-e", "trace=recvfrom", "-o", str(trace),
            sys.executable, "-c", STREAMER, json.dumps(params),
        ],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip() == str(len(body))
    port = moto_server.endpoint.rsplit(":", 1)[1]
    receive = re.compile(
        rf"recvfrom\(\d+<TCP:\[[^\]]*->127\.0\.0\.1:{port}\]>, .*, (\d+), \d+, NULL, NULL\) = (\d+)$"
    )
    receives = [
        (int(match[1]), int(match[2]))
        for line in trace.read_text().splitlines()
        if (match := receive.search(line))
    ]
    # Past the response's head, the body comes through receives of up to SOCKET_READ:
    # asyncio's own default would ask for 256 KiB each time.
    widened = sum(got for asked, got in receives if asked == SOCKET_READ)
    assert widened >= len(body) - 2 * MiB, receives[:8]
    assert {asked for asked, _ in receives} <= {SOCKET_READ, 256 * 1024}
