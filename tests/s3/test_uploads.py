"""Upload sessions on S3, where a session's data is a multipart upload that reading the
data puts together (see dockyard.storage.s3): two registries on one bucket stand for
two workers or replicas."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from dockyard.errors import BlobUploadUnknown, DigestInvalid, RangeInvalid
from dockyard.registry import Registry, layout
from dockyard.registry.digest import Digest
from dockyard.registry.uploads import LastChunk
from dockyard.storage import PathNotFoundError, S3Driver, create_driver
from tests.s3.moto_server import MotoServer

MiB = 1 << 20


@pytest.fixture
def bucket(moto_server: MotoServer) -> Iterator[str]:
    yield moto_server.new_bucket()
    moto_server.reset()


async def body_of(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), MiB):
        yield data[offset : offset + MiB]


async def test_a_session_without_its_hash_state_reads_its_data_and_goes_on(
    moto_server: MotoServer, bucket: str
) -> None:
    """The first chunk leaves a part and a tail; its hash state is lost. The next chunk,
    on another registry, hashes the stored data again, which completes the upload the
    data was kept in: the chunk must go on from the completed object, not into the
    upload that is gone."""
    drivers = [create_driver("s3", moto_server.driver_params(bucket)) for _ in range(2)]
    assert all(isinstance(driver, S3Driver) for driver in drivers)
    first, second = (Registry(driver) for driver in drivers)
    data = os.urandom(13 * MiB)
    cut = 6 * MiB
    session = await first.uploads.start("lib/app")
    await first.uploads.append("lib/app", session.id, body_of(data[:cut]), 0)
    await drivers[0].delete(layout.upload_hash_states("lib/app", session.id, "sha256"))
    await second.uploads.append("lib/app", session.id, body_of(data[cut:]), cut)
    blob = await second.uploads.finish("lib/app", session.id, Digest.of(data), len(data))
    assert await drivers[0].read(layout.blob_data(blob.digest)) == data
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for driver in drivers:
        await driver.close()


async def test_a_monolithic_push_stores_the_blob_only_when_its_digest_matches(
    moto_server: MotoServer, bucket: str
) -> None:
    """The bytes of a one-request push go to the blob's key, seen there only once
    verified: a wrong digest or length leaves no blob, and a blob already stored is never
    written over by an upload claiming its digest."""
    driver = create_driver("s3", moto_server.driver_params(bucket))
    registry = Registry(driver)
    uploads = registry.uploads
    data = os.urandom(12 * MiB + 1)
    digest = Digest.of(data)

    wrong = await uploads.start("lib/app")
    with pytest.raises(DigestInvalid):
        await uploads.finish(
            "lib/app", wrong.id, digest, None, LastChunk(body_of(data[:-1] + b"!"))
        )
    with pytest.raises(BlobUploadUnknown):
        await uploads.get("lib/app", wrong.id)
    short = await uploads.start("lib/app")
    with pytest.raises(RangeInvalid):
        await uploads.finish(
            "lib/app", short.id, digest, None, LastChunk(body_of(data), 0, len(data))
        )
    assert (await uploads.get("lib/app", short.id)).size == 0
    with pytest.raises(PathNotFoundError):
        await driver.stat(layout.blob_data(digest))
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    session = await uploads.start("lib/app")
    blob = await uploads.finish("lib/app", session.id, digest, len(data), LastChunk(body_of(data)))
    assert (blob.digest, blob.size) == (digest, len(data))
    assert await driver.read(layout.blob_data(digest)) == data
    with pytest.raises(BlobUploadUnknown):
        await uploads.get("lib/app", session.id)

    # Stored now: an upload claiming its digest with other bytes is refused, and one with
    # the same bytes is verified in its session, the blob untouched either way.
    liar = await uploads.start("other/app")
    with pytest.raises(DigestInvalid):
        await uploads.finish(
            "other/app", liar.id, digest, None, LastChunk(body_of(os.urandom(MiB)))
        )
    again = await uploads.start("other/app")
    await uploads.finish("other/app", again.id, digest, None, LastChunk(body_of(data)))
    assert await driver.read(layout.blob_data(digest)) == data
    assert moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    await driver.close()
