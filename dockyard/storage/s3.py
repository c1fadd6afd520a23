"""The ``s3`` driver: the registry tree as objects in an S3-compatible bucket.

Keys are ``<rootdirectory>/<path without its leading slash>``, exactly as Distribution's
s3 driver names them, so a bucket either registry wrote is served by the other.
Directories are implicit: a directory exists while some key lies below it, and vanishes
with its last file (an object store has no empty directories).

Modification times, which garbage collection depends on, are kept to the microsecond in
the object's ``x-amz-meta-mtime`` metadata by every write and copy; objects written by
other tools fall back to the store's ``Last-Modified``. A touch (a push holding a blob)
must not cost a copy of a blob of gigabytes, so it writes an empty "time object" under
``<rootdirectory>/~times/``: a file's time is the later of its own and its time
object's. No driver path can reach ``~times`` and Distribution never looks there.

A :class:`FileWriter` streams into a multipart upload in parts of ``chunksize`` and
holds at most one part in memory. :meth:`FileWriter.commit` keeps the upload open, as
Distribution's writer does, so that a chunked blob upload costs each byte once whatever
its number of chunks: the object at the file's key then holds only the bytes after the
last part (the *tail*: less than S3's 5 MiB part minimum, since a commit sends what
pending bytes can make a part as one), and its metadata names the upload and how many
parts and bytes come before it. Any replica resumes from that (listing the
upload's parts, reading the tail back); a stat counts parts and tail; the first read,
stream or move of such a *composite* file completes the upload with the tail as its
last part, after which it is a plain object. A file resumed from a plain object starts a
new upload whose first part is a server-side copy of it (or, below S3's 5 MiB part
minimum, its bytes read back into the pending part). Parts of a process that died are
aborted when their upload directory is deleted (finish or purge), and a bucket lifecycle
rule for incomplete multipart uploads catches the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from dockyard.schema import After, Invalid, Settings, validate
from dockyard.sockets import widen_reads
from dockyard.storage.driver import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    check_path,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")
log = logging.getLogger("dockyard.storage.s3")

MiB = 1 << 20
# S3's limits on multipart uploads: every part but the last at least 5 MiB, at most
# 5 GiB, at most 10,000 parts; CopyObject copies at most 5 GiB in one request.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
CHUNK_SIZE = MiB
# The least a streamed read hands on at once, but for its last piece.
STREAMED_PIECE = 64 * 1024
# Distribution's lifetime for pre-signed blob URLs.
REDIRECT_EXPIRY = 20 * 60
# Requests in flight at once for one fan-out (ancestor checks, stats while walking,
# copying a tree).
FAN_OUT = 16
# Directories known to exist, so that writes need not check again that no file stands
# in their way; a bounded memory of recent ones.
KNOWN_DIRECTORIES = 4096
MTIME_KEY = "mtime"
# On a composite file's tail object: "<upload id> <parts> <bytes in them>".
PARTS_KEY = "dockyard-parts"
# Touches are recorded in small "time objects" below this name in the root, which no
# driver path can reach ('~' is not allowed in one) and Distribution never looks at.
TIMES = "~times"
# Below TIMES: time objects of paths too long to repeat in a key, by their hash.
HASHED_TIMES = "~hashed"
MAX_KEY_BYTES = 1024
_ADDRESSABLE = re.compile(r"[A-Za-z0-9._-]+\Z")
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# For annotations inside S3Driver, where ``list`` is the method.
_FileInfos = list[FileInfo]
_Keys = list[str]


def _required(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _part_size(value: int) -> int:
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise ValueError(f"must be between {MIN_PART_SIZE} (5 MiB) and {MAX_PART_SIZE} (5 GiB)")
    return value


def _threshold(value: int) -> int:
    if not 0 <= value <= MAX_PART_SIZE:
        raise ValueError(f"must be between 0 and {MAX_PART_SIZE} (5 GiB)")
    return value


def _concurrency(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _storage_class(value: str) -> str:
    return value.upper() or "STANDARD"


@dataclass(kw_only=True)
class S3Parameters(Settings):
    """Distribution's ``storage.s3`` parameters, with its defaults."""

    accesskey: str | None = None
    secretkey: str | None = None
    sessiontoken: str | None = None
    region: Annotated[str, After(_required)]
    regionendpoint: str | None = None
    # Distribution 2.8 addresses buckets by path whenever regionendpoint is set (MinIO,
    # Ceph RGW...), and virtual-host style on AWS; an explicit value wins.
    forcepathstyle: bool | None = None
    bucket: Annotated[str, After(_required)]
    encrypt: bool = False
    keyid: str | None = None
    secure: bool = True
    skipverify: bool = False
    v4auth: bool = True
    chunksize: Annotated[int, After(_part_size)] = 10 * MiB
    multipartcopychunksize: Annotated[int, After(_part_size)] = 32 * MiB
    multipartcopymaxconcurrency: Annotated[int, After(_concurrency)] = 100
    multipartcopythresholdsize: Annotated[int, After(_threshold)] = 32 * MiB
    rootdirectory: str = ""
    storageclass: Annotated[str, After(_storage_class)] = "STANDARD"
    objectacl: str = "private"
    useragent: str | None = None
    usedualstack: bool = False
    accelerate: bool = False
    loglevel: str | None = None

    def __post_init__(self) -> None:
        if bool(self.accesskey) != bool(self.secretkey):
            raise ValueError(
                "accesskey and secretkey go together (or neither: the AWS credential chain)"
            )

    @property
    def path_style(self) -> bool:
        if self.forcepathstyle is not None:
            return self.forcepathstyle
        return bool(self.regionendpoint)

    @property
    def endpoint_url(self) -> str | None:
        endpoint = self.regionendpoint
        if not endpoint:
            return None
        if "://" not in endpoint:
            endpoint = f"{'https' if self.secure else 'http'}://{endpoint}"
        return endpoint


def _code(error: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(error: BaseException) -> bool:
    return _code(error) in _MISSING_CODES


def _failure(path: str, error: Exception) -> StorageError:
    if _is_missing(error):
        return PathNotFoundError(path)
    return StorageError(f"{path}: s3: {_code(error) or type(error).__name__}: {error}")


def _mtime(metadata: dict[str, str] | None, last_modified: Any) -> float:
    raw = (metadata or {}).get(MTIME_KEY)
    if raw is not None:
        try:
            return float(raw)
        except ValueError:
            pass
    return float(last_modified.timestamp())


def _composite(metadata: dict[str, str] | None) -> tuple[str, int, int] | None:
    """The open upload a tail object continues, its part count and their bytes."""
    raw = (metadata or {}).get(PARTS_KEY)
    if raw is None:
        return None
    try:
        upload_id, count, size = raw.split(" ")
        return upload_id, int(count), int(size)
    except ValueError:
        return None


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")[1:-1]
    return ["/" + "/".join(parts[: index + 1]) for index in range(len(parts))]


def _copy_ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    """Byte ranges (start, end inclusive) covering ``size`` in parts S3 accepts.

    Every range is at least ``chunk`` long except when ``size`` itself is smaller, so a
    range may be followed by more parts.
    """
    # The last range takes the remainder, so it stays below twice the chunk: at most 5 GiB.
    chunk = max(min(chunk, MAX_PART_SIZE // 2), -(-size // MAX_PARTS))
    count = max(1, size // chunk)
    ranges = []
    for index in range(count):
        start = index * chunk
        end = size - 1 if index == count - 1 else start + chunk - 1
        ranges.append((start, end))
    return ranges


class S3Driver(StorageDriver):
    name = "s3"
    remote = True

    def __init__(self, params: S3Parameters, redirect: bool = True) -> None:
        self.params = params
        self.bucket = params.bucket
        root = params.rootdirectory.strip("/")
        self._prefix = f"{root}/" if root else ""
        self._redirect = redirect
        self._client: S3Client | None = None
        self._stack: AsyncExitStack | None = None
        self._client_lock: asyncio.Lock | None = None
        self._directories: OrderedDict[str, None] = OrderedDict()

    # --- plumbing ---------------------------------------------------------------------

    def key(self, path: str) -> str:
        """The object key for a driver path."""
        return self._prefix + check_path(path)[1:]

    async def client(self) -> S3Client:
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> S3Client:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        params = self.params
        s3_options: dict[str, Any] = {"addressing_style": "path" if params.path_style else "auto"}
        if params.usedualstack:
            s3_options["use_dualstack_endpoint"] = True
        if params.accelerate:
            s3_options["use_accelerate_endpoint"] = True
        config = AioConfig(
            signature_version="s3v4" if params.v4auth else "s3",
            s3=s3_options,
            user_agent_extra=params.useragent,
            max_pool_connections=max(64, params.multipartcopymaxconcurrency),
            retries={"max_attempts": 5, "mode": "standard"},
            # Checksums only when S3 requires them: S3-compatible stores (and Distribution)
            # predate the newer default of a CRC on every request.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        credentials: dict[str, Any] = {}
        if params.accesskey and params.secretkey:
            credentials = {
                "aws_access_key_id": params.accesskey,
                "aws_secret_access_key": params.secretkey,
                "aws_session_token": params.sessiontoken or None,
            }
        stack = AsyncExitStack()
        client: S3Client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                region_name=params.region,
                endpoint_url=params.endpoint_url,
                use_ssl=params.secure,
                verify=not params.skipverify,
                config=config,
                **credentials,
            )
        )
        self._stack = stack
        return client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def object_args(self, mtime: float) -> dict[str, Any]:
        """Arguments every object this driver creates carries: its time, class, encryption."""
        args: dict[str, Any] = {"Metadata": {MTIME_KEY: repr(mtime)}}
        if self.params.storageclass != "NONE":
            args["StorageClass"] = self.params.storageclass
        if self.params.encrypt:
            if self.params.keyid:
                args["ServerSideEncryption"] = "aws:kms"
                args["SSEKMSKeyId"] = self.params.keyid
            else:
                args["ServerSideEncryption"] = "AES256"
        if self.params.objectacl and self.params.objectacl != "private":
            args["ACL"] = self.params.objectacl
        return args

    async def _fan_out(
        self, calls: Iterable[Callable[[], Awaitable[T]]], limit: int = FAN_OUT
    ) -> list[T]:
        gate = asyncio.Semaphore(limit)

        async def run(call: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await call()

        return list(await asyncio.gather(*(run(call) for call in calls)))

    def time_key(self, path: str) -> str:
        """The key of the object recording the last touch of the file at ``path``.

        S3 keys end at 1024 bytes: a path near that length gets a hashed time key.
        """
        key = f"{self._prefix}{TIMES}/{check_path(path)[1:]}"
        if len(key.encode()) <= MAX_KEY_BYTES:
            return key
        return f"{self._prefix}{TIMES}/{HASHED_TIMES}/{hashlib.sha256(path.encode()).hexdigest()}"

    async def _head_key(self, path: str, key: str) -> Any:
        client = await self.client()
        try:
            return await client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _is_missing(error):
                return None
            raise _failure(path, error) from error

    async def _head(self, path: str, with_touch: bool = True) -> FileInfo | None:
        """The file at ``path``, or None when there is no object there.

        Its time is the later of the object's own and that of its time object. Taking
        the later makes a time object left from earlier content harmless: the content
        written since is newer. Only touches to a given (earlier) time, and moves, which
        carry the time in the copy, remove the time object.
        """
        key = self.key(path)
        if with_touch:
            head, touched = await asyncio.gather(
                self._head_key(path, key), self._head_key(path, self.time_key(path))
            )
        else:
            head, touched = await self._head_key(path, key), None
        if head is None:
            return None
        mtime = _mtime(head.get("Metadata"), head["LastModified"])
        if touched is not None:
            mtime = max(mtime, _mtime(touched.get("Metadata"), touched["LastModified"]))
        # A file here means directories above it (what writes check for).
        self._remember_directories(path)
        composite = _composite(head.get("Metadata"))
        before = composite[2] if composite is not None else 0
        return FileInfo(path, before + head["ContentLength"], mtime, False)

    async def _is_dir(self, path: str) -> bool:
        prefix = self.key(path) + "/"
        client = await self.client()
        try:
            found = await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except Exception as error:
            raise _failure(path, error) from error
        return bool(found.get("KeyCount") or found.get("Contents"))

    async def _keys_below(self, path: str, raw: bool = False) -> list[tuple[str, int]]:
        """Every key below the directory ``path`` with its size, in key order.

        ``raw``: ``path`` is not checked (for the time objects' namespace).
        """
        client = await self.client()
        prefix = self._prefix + path[1:] + "/" if raw else self.key(path) + "/"
        found: list[tuple[str, int]] = []
        token: str | None = None
        try:
            while True:
                extra: dict[str, Any] = {"ContinuationToken": token} if token else {}
                page = await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **extra)
                found.extend((item["Key"], item["Size"]) for item in page.get("Contents", []))
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    return found
        except Exception as error:
            raise _failure(path, error) from error

    async def _children(self, path: str) -> tuple[bool, dict[str, tuple[bool, int]]]:
        """Whether anything is below ``path``, and its addressable children: name -> (is_dir, size)."""
        client = await self.client()
        prefix = self.key(path) + "/"
        children: dict[str, tuple[bool, int]] = {}
        anything = False
        token: str | None = None
        try:
            while True:
                extra: dict[str, Any] = {"ContinuationToken": token} if token else {}
                page = await client.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/", **extra
                )
                for common in page.get("CommonPrefixes", []):
                    anything = True
                    name = common["Prefix"][len(prefix) : -1]
                    if _ADDRESSABLE.match(name) and name not in (".", ".."):
                        children[name] = (True, 0)
                for item in page.get("Contents", []):
                    anything = True
                    name = item["Key"][len(prefix) :]
                    if (
                        _ADDRESSABLE.match(name)
                        and name not in (".", "..")
                        and name not in children
                    ):
                        children[name] = (False, item["Size"])
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    return anything, children
        except Exception as error:
            raise _failure(path, error) from error

    def _remember_directories(self, path: str, is_dir: bool = False) -> None:
        """``path`` was just written (or, ``is_dir``, made a directory): so were its parents."""
        for directory in [*_ancestors(path), *([path] if is_dir else [])]:
            self._directories[directory] = None
            self._directories.move_to_end(directory)
        while len(self._directories) > KNOWN_DIRECTORIES:
            self._directories.popitem(last=False)
        if not is_dir:
            self._directories.pop(path, None)

    async def check_writable(self, path: str, directory_ok: bool = False) -> None:
        """Refuse to put a file where a directory is, or below a file, as a filesystem does.

        One listing for ``path`` and one HEAD per ancestor not already known to be a
        directory, all at once.
        """
        unknown = [d for d in _ancestors(path) if d not in self._directories]
        checks: list[Callable[[], Awaitable[bool]]] = (
            [] if directory_ok else [lambda: self._is_dir(path)]
        )
        checks += [lambda d=d: self._is_file(d) for d in unknown]  # type: ignore[misc]
        results = await self._fan_out(checks)
        if not directory_ok and results[0]:
            raise StorageError(f"{path}: is a directory")
        for directory, is_file in zip(unknown, results[0 if directory_ok else 1 :], strict=True):
            if is_file:
                raise StorageError(f"{directory}: not a directory")

    async def _is_file(self, path: str) -> bool:
        return await self._head(path, with_touch=False) is not None

    async def copy_object(self, source_key: str, dest_key: str, size: int, mtime: float) -> None:
        """Copy on the server, as one request or, above the threshold, a multipart copy."""
        client = await self.client()
        source = {"Bucket": self.bucket, "Key": source_key}
        if size <= self.params.multipartcopythresholdsize or size == 0:
            await client.copy_object(
                Bucket=self.bucket,
                Key=dest_key,
                CopySource=source,  # type: ignore[arg-type]
                MetadataDirective="REPLACE",
                **self.object_args(mtime),
            )
            return
        upload = await client.create_multipart_upload(
            Bucket=self.bucket, Key=dest_key, **self.object_args(mtime)
        )
        upload_id = upload["UploadId"]
        try:
            ranges = _copy_ranges(size, self.params.multipartcopychunksize)

            async def part(number: int, start: int, end: int) -> dict[str, Any]:
                copied = await client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=dest_key,
                    CopySource=source,  # type: ignore[arg-type]
                    CopySourceRange=f"bytes={start}-{end}",
                    PartNumber=number,
                    UploadId=upload_id,
                )
                return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}

            parts = await self._fan_out(
                [
                    lambda n=n, s=s, e=e: part(n, s, e)  # type: ignore[misc]
                    for n, (s, e) in enumerate(ranges, start=1)
                ],
                limit=self.params.multipartcopymaxconcurrency,
            )
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=dest_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except BaseException:
            await self._abort(dest_key, upload_id)
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        client = await self.client()
        try:
            await asyncio.shield(
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            )
        except Exception as error:  # noqa: BLE001 - best effort; a lifecycle rule is the backstop
            log.warning("s3: could not abort the multipart upload of %s: %s", key, error)

    async def _abort_uploads_below(self, path: str) -> None:
        """Abort multipart uploads under a directory being deleted (a dead writer's parts)."""
        client = await self.client()
        prefix = self.key(path) + "/"
        try:
            listing = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        except Exception:  # noqa: BLE001 - not every S3-compatible store lists uploads
            return
        for upload in listing.get("Uploads", []):
            if "Key" in upload and "UploadId" in upload:
                await self._abort(upload["Key"], upload["UploadId"])

    # --- the interface ------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        key = self.key(path)
        client = await self.client()
        for _ in range(2):
            try:
                response = await client.get_object(Bucket=self.bucket, Key=key)
                async with response["Body"] as body:
                    if _composite(response.get("Metadata")) is None:
                        return await body.read()
            except Exception as error:
                raise _failure(path, error) from error
            await self.complete_parts(path)
        raise StorageError(f"{path}: still composite after completing its upload")

    async def complete_parts(self, path: str) -> None:
        """Make a composite file (see the module's description) a plain object."""
        key = self.key(path)
        head = await self._head_key(path, key)
        if head is None:
            raise PathNotFoundError(path)
        composite = _composite(head.get("Metadata"))
        if composite is None:
            return
        upload_id, count, _ = composite
        client = await self.client()
        try:
            parts = await self._listed_parts(key, upload_id, count)
            tail = await self._tail(key, head["ContentLength"])
            if tail or not parts:
                uploaded = await client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    Body=tail,
                    PartNumber=count + 1,
                    UploadId=upload_id,
                )
                parts.append({"PartNumber": count + 1, "ETag": uploaded["ETag"]})
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except Exception as error:
            # Completed by another replica meanwhile: the object is plain now.
            head = await self._head_key(path, key)
            if head is not None and _composite(head.get("Metadata")) is None:
                return
            raise _failure(path, error) from error

    async def _tail(self, key: str, tail_size: int) -> bytes:
        """The tail's bytes (``tail_size`` from the HEAD before)."""
        if not tail_size:
            # A chunk that ended as a whole part left an empty tail: nothing to read.
            return b""
        client = await self.client()
        response = await client.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            return await body.read()

    async def _listed_parts(self, key: str, upload_id: str, count: int) -> list[dict[str, Any]]:
        """The first ``count`` parts of an open upload, as completing it names them."""
        client = await self.client()
        parts: list[dict[str, Any]] = []
        marker = 0
        while len(parts) < count:
            listing = await client.list_parts(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            for part in listing.get("Parts", []):
                if len(parts) < count:
                    parts.append({"PartNumber": part["PartNumber"], "ETag": part["ETag"]})
            if not listing.get("IsTruncated"):
                break
            marker = listing["NextPartNumberMarker"]
        if [part["PartNumber"] for part in parts] != list(range(1, count + 1)):
            raise StorageError(f"{key}: parts of upload {upload_id} are missing")
        return parts

    async def write(self, path: str, data: bytes, durable: bool = True) -> None:
        """Put the object, record its time as a touch does, and check it is still there.

        Link files are what garbage collection sets aside, and a rewrite of one must not
        be lost to a collection deleting the previous version at that moment: like a
        touch, the write leaves a time object the collection looks for after its delete
        (see :meth:`move_unless_touched`), and is done again if the delete won. A file
        that is only a cache (``durable=False``, an upload's hash state) is not a link and
        may be lost: one PUT.
        """
        key = self.key(path)
        await self.check_writable(path)
        client = await self.client()
        if not durable:
            try:
                await client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, **self.object_args(time.time())
                )
            except Exception as error:
                raise _failure(path, error) from error
            self._remember_directories(path)
            return
        for _ in range(3):
            now = time.time()
            try:
                await asyncio.gather(
                    client.put_object(
                        Bucket=self.bucket, Key=key, Body=data, **self.object_args(now)
                    ),
                    self._put_time(path, now),
                )
            except Exception as error:
                raise _failure(path, error) from error
            if await self._head_key(path, key) is not None:
                break
        else:
            raise StorageError(f"{path}: deleted as soon as written, three times over")
        self._remember_directories(path)

    def stream(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        check_path(path)
        if length is not None and length < 0:
            raise ValueError(f"negative length {length}")
        return self._stream(path, offset, length)

    async def _stream(self, path: str, offset: int, length: int | None) -> AsyncIterator[bytes]:
        key = self.key(path)
        if offset < 0:
            raise InvalidOffsetError(path, offset)
        if length == 0:
            info = await self._head(path)
            if info is None:
                raise PathNotFoundError(path)
            if offset > info.size:
                raise InvalidOffsetError(path, offset)
            return
        extra: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{end}"
        client = await self.client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=key, **extra)
            if _composite(response.get("Metadata")) is not None:
                response["Body"].close()
                await self.complete_parts(path)
                response = await client.get_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as error:
            if isinstance(error, StorageError):
                raise
            if _code(error) != "InvalidRange":
                raise _failure(path, error) from error
            head = await self._head_key(path, key)
            if head is not None and _composite(head.get("Metadata")) is not None:
                # Past the tail only: the range lies in the upload's parts.
                await self.complete_parts(path)
                async for piece in self._stream(path, offset, length):
                    yield piece
                return
            # Past the last byte: at the very end is an empty read, beyond it an error.
            info = await self._head(path)
            if info is None:
                raise PathNotFoundError(path) from error
            if offset != info.size:
                raise InvalidOffsetError(path, offset) from error
            return
        body = response["Body"]
        # aiobotocore's body wraps the aiohttp response of the GET.
        widen_reads(getattr(body, "_raw_stream", None))
        try:
            # The body arrives in pieces of whatever the socket had (the HTTP client
            # joins those buffered meanwhile, up to CHUNK_SIZE). A large piece goes out
            # as it is: copying it into a bigger chunk would cost more than the extra
            # write. Small ones are gathered first, so no write carries a few bytes.
            pending: list[bytes] = []
            pending_size = 0
            while True:
                try:
                    piece = await body.read(CHUNK_SIZE)
                except Exception as error:
                    raise _failure(path, error) from error
                if not piece:
                    break
                if len(piece) >= STREAMED_PIECE:
                    if pending:
                        yield b"".join(pending)
                        pending, pending_size = [], 0
                    yield piece
                    continue
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= STREAMED_PIECE:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
            if pending:
                yield b"".join(pending)
        finally:
            body.close()

    async def writer(self, path: str, resume_at: int | None = None) -> FileWriter:
        key = self.key(path)
        if resume_at is None:
            # Created (or emptied) at once, as opening a file with O_TRUNC does.
            await self.check_writable(path)
            client = await self.client()
            try:
                await client.put_object(
                    Bucket=self.bucket, Key=key, Body=b"", **self.object_args(time.time())
                )
            except Exception as error:
                raise _failure(path, error) from error
            self._remember_directories(path)
            return S3Writer(self, path, 0)
        return await self._reopen(path, resume_at)

    async def staged_writer(self, path: str) -> FileWriter:
        """A new file that appears whole when sealed, written where it will stay: an
        upload finished this way is not copied to its place afterwards, which on an
        object store is a second pass over every byte."""
        await self.check_writable(path)
        return S3Writer(self, path, 0, staged=True)

    async def writer_at_end(self, path: str) -> FileWriter:
        return await self._reopen(path, None)

    async def _reopen(self, path: str, resume_at: int | None) -> FileWriter:
        """A writer of the existing file, cut to ``resume_at`` or (None) at its end."""
        # One HEAD gives the size and the open upload: a writer needs no time, so the
        # time object is not asked for (a chunk of an upload is one of these).
        head = await self._head_key(path, self.key(path))
        if head is None:
            raise PathNotFoundError(path)
        self._remember_directories(path)
        composite = _composite(head.get("Metadata"))
        size = (composite[2] if composite is not None else 0) + head["ContentLength"]
        if resume_at is None:
            resume_at = size
        elif not 0 <= resume_at <= size:
            raise InvalidOffsetError(path, resume_at)
        resumed = await self._resume_parts(path, resume_at, composite, head["ContentLength"])
        writer = S3Writer(self, path, resume_at, resumed)
        if resume_at < size:
            await writer.truncate()
        return writer

    async def _resume_parts(
        self, path: str, resume_at: int, composite: tuple[str, int, int] | None, tail_size: int
    ) -> OpenParts | None:
        """The open upload a composite file continues, to write on from ``resume_at``.

        None for a plain object, and for a composite one cut back into its parts, which
        is completed first and then continued as a plain one. The parts are not listed:
        only completing the upload needs their ETags, and a chunk that does not finish
        it is spared the request.
        """
        if composite is None:
            return None
        upload_id, count, before = composite
        if resume_at < before:
            await self.complete_parts(path)
            return None
        tail = b""
        if resume_at > before:
            try:
                tail = await self._tail(self.key(path), tail_size)
            except Exception as error:
                raise _failure(path, error) from error
        return OpenParts(upload_id, count, before, tail[: resume_at - before])

    async def stat(self, path: str) -> FileInfo:
        check_path(path)
        info = await self._head(path)
        if info is not None:
            return info
        if await self._is_dir(path):
            # A prefix has no time of its own (Distribution's s3 driver reports zero).
            return FileInfo(path, 0, 0.0, True)
        raise PathNotFoundError(path)

    async def touch(self, path: str, mtime: float | None = None) -> None:
        """To now: a small time object beside the content, whatever the content's size.

        To a given time (which may be earlier): the object is copied onto itself with
        that time and the time object removed.
        """
        key = self.key(path)
        client = await self.client()
        if mtime is not None:
            # A copy of a composite file onto itself would keep only its tail.
            await self.complete_parts(path)
            info = await self._head(path, with_touch=False)
            if info is None:
                raise PathNotFoundError(path)
            try:
                await self.copy_object(key, key, info.size, mtime)
                await client.delete_object(Bucket=self.bucket, Key=self.time_key(path))
            except Exception as error:
                raise _failure(path, error) from error
            return
        try:
            await self._put_time(path, time.time())
        except Exception as error:
            raise _failure(path, error) from error
        # Still there after the time was recorded: a collection that moves it from now on
        # finds the time object (see move_unless_touched). A time object left for nothing
        # is harmless (see _head).
        if await self._head_key(path, key) is None:
            raise PathNotFoundError(path)

    async def _put_time(self, path: str, mtime: float) -> None:
        client = await self.client()
        await client.put_object(
            Bucket=self.bucket, Key=self.time_key(path), Body=b"", Metadata={MTIME_KEY: repr(mtime)}
        )

    async def list(self, path: str) -> list[str]:
        check_path(path)
        anything, children = await self._children(path)
        if not anything:
            raise PathNotFoundError(path)
        self._remember_directories(path, is_dir=True)
        return sorted(children)

    async def move(self, source: str, dest: str) -> None:
        await self._move(source, dest, None)

    async def move_unless_touched(self, source: str, dest: str, since: float) -> bool:
        """Check, copy, check again, delete the source, and look for a late touch.

        A touch writes its time object and then checks that the content is still there.
        So one that reported success either landed before the second check (nothing
        moves) or before the delete, and then its time object is found after the delete
        and the content is put back: missing for that moment, as with the default.
        """
        check_path(source)
        check_path(dest)
        if dest == source or dest.startswith(source + "/"):
            raise StorageError(f"cannot move {source} onto or into itself ({dest})")
        try:
            return await self._move(source, dest, since)
        except PathNotFoundError:
            return False

    async def _move(
        self,
        source: str,
        dest: str,
        since: float | None,
    ) -> bool:
        """Move; with ``since``, only if no file was modified at ``since`` or later."""

        async def untouched(files: _FileInfos) -> bool:
            now = await self._fan_out([lambda f=f: self._head(f.path) for f in files])  # type: ignore[misc]
            return all(
                info is not None and since is not None and info.mtime < since for info in now
            )

        source_key = self.key(source)
        dest_key = self.key(dest)
        top = await self.stat(source)
        if not top.is_dir:
            # A composite file (an upload's data) moves as the whole of it.
            await self.complete_parts(source)
        if dest == source:
            return True
        if dest.startswith(source + "/"):
            raise StorageError(f"cannot move {source} into itself ({dest})")
        if top.is_dir:
            if await self._is_file(dest):
                raise StorageError(f"{dest}: not a directory")
            if await self._is_dir(dest):
                raise StorageError(f"{dest}: directory not empty")
            await self.check_writable(dest, directory_ok=True)
            below = [p for p in (self._path_of(k) for k, _ in await self._keys_below(source)) if p]
            files = await self._fan_out(
                [lambda p=p: self._head(p) for p in below]  # type: ignore[misc]
            )
            present = [info for info in files if info is not None]
        else:
            await self.check_writable(dest)
            present = [top]
        if since is not None and not await untouched(present):
            return False
        moves = [
            (self.key(info.path), dest_key + self.key(info.path)[len(source_key) :], info)
            for info in present
        ]
        try:
            await self._fan_out(
                [
                    lambda s=s, d=d, i=i: self.copy_object(s, d, i.size, i.mtime)  # type: ignore[misc]
                    for s, d, i in moves
                ]
            )
        except Exception as error:
            raise _failure(source, error) from error
        if since is not None and not await untouched(present):
            await self._delete_keys(dest, [d for _, d, _ in moves])
            return False
        await self._delete_keys(source, [s for s, _, _ in moves])
        if since is not None:
            late = await self._fan_out(
                [lambda i=i: self._touched_at(i.path) for _, _, i in moves]  # type: ignore[misc]
            )
            if any(at is not None and at >= since for at in late):
                # Back where it was, with a fresh time: it is held.
                now = time.time()
                await self._fan_out(
                    [
                        lambda s=s, d=d, i=i: self.copy_object(d, s, i.size, now)  # type: ignore[misc]
                        for s, d, i in moves
                    ]
                )
                await self._delete_keys(dest, [d for _, d, _ in moves])
                return False
        # The copies carry their times; earlier touches of source and dest are spent.
        spent = [self.time_key(i.path) for _, _, i in moves]
        spent += [self.time_key(dest + i.path[len(source) :]) for _, _, i in moves]
        await self._delete_keys(source, spent)
        self._remember_directories(dest, is_dir=top.is_dir)
        return True

    async def _touched_at(self, path: str) -> float | None:
        touched = await self._head_key(path, self.time_key(path))
        if touched is None:
            return None
        return _mtime(touched.get("Metadata"), touched["LastModified"])

    def _path_of(self, key: str) -> str | None:
        """The driver path of a key below the root, if a driver path can name it."""
        path = "/" + key[len(self._prefix) :]
        try:
            return check_path(path)
        except StorageError:
            return None

    async def _delete_keys(self, path: str, keys: _Keys) -> None:
        client = await self.client()
        try:
            for start in range(0, len(keys), 1000):
                batch = keys[start : start + 1000]
                if len(batch) == 1:
                    await client.delete_object(Bucket=self.bucket, Key=batch[0])
                    continue
                result = await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
                errors = result.get("Errors", [])
                if errors:
                    raise StorageError(
                        f"{path}: s3: deleting {errors[0].get('Key')}: {errors[0].get('Code')}"
                    )
        except StorageError:
            raise
        except Exception as error:
            raise _failure(path, error) from error

    async def delete(self, path: str) -> None:
        key = self.key(path)
        if await self._is_file(path):
            await self._delete_keys(path, [key, self.time_key(path)])
            return
        below = await self._keys_below(path)
        if not below:
            raise PathNotFoundError(path)
        times_below = [k for k, _ in await self._keys_below(f"/{TIMES}{path}", raw=True)]
        hashed = [
            time_key
            for time_key in (self.time_key(p) for p in map(self._path_of, (k for k, _ in below)) if p)
            if f"/{HASHED_TIMES}/" in time_key
        ]
        await self._delete_keys(path, [k for k, _ in below] + times_below + hashed)
        await self._abort_uploads_below(path)

    async def remove_empty(self, path: str) -> bool:
        # The default (nothing to remove where directories are implicit), except that a
        # file is not an empty tree.
        if await self._is_file(path):
            return False
        return await super().remove_empty(path)

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        check_path(path)
        return self._walk(path)

    async def _entries(self, path: str) -> _FileInfos:
        """A directory's children, sorted, files with their times (one HEAD each)."""
        anything, children = await self._children(path)
        if not anything:
            raise PathNotFoundError(path)
        names = sorted(children)
        files = await self._fan_out(
            [
                lambda n=n: self._head(f"{path}/{n}")  # type: ignore[misc]
                for n in names
                if not children[n][0]
            ]
        )
        by_name = {info.path.rsplit("/", 1)[1]: info for info in files if info is not None}
        entries = []
        for name in names:
            if children[name][0]:
                entries.append(FileInfo(f"{path}/{name}", 0, 0.0, True))
            elif name in by_name:
                entries.append(by_name[name])
        return entries

    async def _walk(self, path: str) -> AsyncIterator[FileInfo]:
        # One level at a time, as a directory walk: a subtree deleted while walking is
        # not reported, and memory holds one listing per level.
        stack: list[Iterator[FileInfo]] = [iter(await self._entries(path))]
        while stack:
            info = next(stack[-1], None)
            if info is None:
                stack.pop()
                continue
            yield info
            if info.is_dir:
                try:
                    stack.append(iter(await self._entries(info.path)))
                except PathNotFoundError:
                    continue

    def local_path(self, path: str) -> str | None:
        check_path(path)
        return None

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        key = self.key(path)
        if not self._redirect or method not in ("GET", "HEAD"):
            return None
        client = await self.client()
        url: str = await client.generate_presigned_url(
            "get_object" if method == "GET" else "head_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=REDIRECT_EXPIRY,
        )
        return url


@dataclass(frozen=True, slots=True)
class OpenParts:
    """What a writer continues when it resumes a composite file: ``count`` parts of
    ``size`` bytes in all (not listed yet), then ``tail``."""

    upload_id: str
    count: int
    size: int
    tail: bytes


class S3Writer(FileWriter):
    """Appends through multipart uploads; see the module's description."""

    def __init__(
        self,
        driver: S3Driver,
        path: str,
        size: int,
        resumed: OpenParts | None = None,
        staged: bool = False,
    ) -> None:
        self._driver = driver
        # Staged (``S3Driver.staged_writer``): nothing is at the key until the seal, and
        # whatever is there meanwhile is someone else's.
        self._staged = staged
        self._path = path
        self._key = driver.key(path)
        self._size = size
        # Bytes of a plain committed object this writer continues from that the current
        # upload does not hold yet: brought in (copied or read back) when writing goes on.
        self._base = 0 if resumed is not None else size
        self._pending = bytearray(resumed.tail if resumed is not None else b"")
        self._upload_id: str | None = resumed.upload_id if resumed is not None else None
        # The upload's first parts, from earlier writers, are listed only to complete it;
        # ``_parts`` holds those this writer uploaded (or listed), numbered after them.
        self._unlisted = resumed.count if resumed is not None else 0
        self._parts: list[dict[str, Any]] = []
        self._parts_size = resumed.size if resumed is not None else 0
        # The upload a committed tail names: other writers continue it, so it stays open.
        self._kept: str | None = self._upload_id
        self._dirty = False
        self._broken = False
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def _part_count(self) -> int:
        return self._unlisted + len(self._parts)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"writer for {self._path} is closed")
        if self._broken:
            raise StorageError(
                f"{self._path}: an earlier write failed; resume from the committed size"
            )

    async def _guarded(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except BaseException as error:
            # A part that failed (or was cancelled) may or may not have landed.
            self._broken = True
            if isinstance(error, Exception) and not isinstance(error, StorageError):
                raise _failure(self._path, error) from error
            raise

    async def _start_upload(self) -> str:
        if self._upload_id is None:
            client = await self._driver.client()
            created = await client.create_multipart_upload(
                Bucket=self._driver.bucket, Key=self._key, **self._driver.object_args(time.time())
            )
            self._upload_id = created["UploadId"]
        return self._upload_id

    async def _bring_in_base(self) -> None:
        base = self._base
        if not base:
            return
        client = await self._driver.client()
        if base < MIN_PART_SIZE:
            # Too small to be a part of its own: it goes ahead of the pending bytes.
            response = await client.get_object(
                Bucket=self._driver.bucket, Key=self._key, Range=f"bytes=0-{base - 1}"
            )
            async with response["Body"] as body:
                head = await body.read()
            if len(head) != base:
                raise StorageError(f"{self._path}: changed underneath the writer")
            self._pending[:0] = head
        else:
            upload_id = await self._start_upload()
            source = {"Bucket": self._driver.bucket, "Key": self._key}
            for start, end in _copy_ranges(base, self._driver.params.multipartcopychunksize):
                number = self._part_count + 1
                copied = await client.upload_part_copy(
                    Bucket=self._driver.bucket,
                    Key=self._key,
                    CopySource=source,  # type: ignore[arg-type]
                    CopySourceRange=f"bytes={start}-{end}",
                    PartNumber=number,
                    UploadId=upload_id,
                )
                self._parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
                self._parts_size += end - start + 1
        self._base = 0

    async def _upload_part(self, data: bytes) -> None:
        if self._part_count >= MAX_PARTS:
            raise StorageError(f"{self._path}: more than {MAX_PARTS} parts; raise chunksize")
        upload_id = await self._start_upload()
        client = await self._driver.client()
        number = self._part_count + 1
        uploaded = await client.upload_part(
            Bucket=self._driver.bucket,
            Key=self._key,
            Body=data,
            PartNumber=number,
            UploadId=upload_id,
        )
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})
        self._parts_size += len(data)

    async def write(self, data: bytes) -> None:
        self._check_open()
        if self._base:
            await self._guarded(self._bring_in_base())
        self._pending += data
        self._size += len(data)
        self._dirty = True
        chunk = self._driver.params.chunksize
        while len(self._pending) >= chunk:
            part = bytes(self._pending[:chunk])
            await self._guarded(self._upload_part(part))
            del self._pending[:chunk]

    async def truncate(self) -> None:
        """Cut the committed file to this writer's size at once."""
        self._dirty = True
        await self._guarded(self._bring_in_base())
        await self.commit()

    async def commit(self) -> None:
        self._check_open()
        if self._staged:
            # A staged file is only ever stored whole.
            await self.seal()
            return
        if not self._dirty:
            return
        await self._guarded(self._save_tail())
        self._dirty = False

    async def _save_tail(self) -> None:
        """The pending bytes as the object at the key, naming the parts before them.

        Pending bytes enough for a part of their own (S3's minimum) go up as one, as
        Distribution's writer does, and the tail saved is empty: the next chunk, on
        whichever replica, then reads nothing back and sends nothing twice. Past half
        the part limit they stay in the tail instead, so that the other half of the
        parts are full ``chunksize`` ones however small the chunks. Bytes kept in the
        tail stay pending for what is written next; the upload stays open.
        """
        if len(self._pending) >= MIN_PART_SIZE and self._part_count < MAX_PARTS // 2:
            await self._upload_part(bytes(self._pending))
            self._pending.clear()
        client = await self._driver.client()
        args = self._driver.object_args(time.time())
        if self._upload_id is not None:
            args["Metadata"][PARTS_KEY] = (
                f"{self._upload_id} {self._part_count} {self._parts_size}"
            )
        await client.put_object(
            Bucket=self._driver.bucket, Key=self._key, Body=bytes(self._pending), **args
        )
        self._kept = self._upload_id

    async def seal(self) -> None:
        self._check_open()
        if self._staged:
            await self._guarded(self._publish_staged())
            return
        if self._upload_id is None:
            # All of it is pending, or a plain object already: a commit stores it whole.
            await self.commit()
            return
        await self._guarded(self._complete())

    async def _publish_staged(self) -> None:
        """The staged file at its key: one plain object, never a composite one. A
        completed upload's own time is when it began, so the time object first says now:
        from the moment the object is there, a collection finds it new."""
        if self._upload_id is not None:
            await self._driver._put_time(self._path, time.time())
            await self._complete()
        else:
            client = await self._driver.client()
            await client.put_object(
                Bucket=self._driver.bucket,
                Key=self._key,
                Body=bytes(self._pending),
                **self._driver.object_args(time.time()),
            )
            self._base = self._size
            self._pending.clear()
            self._dirty = False
        self._staged = False
        # A file here now means directories above it (what writes check for).
        self._driver._remember_directories(self._path)

    async def _complete(self) -> None:
        """The pending bytes as the upload's last part (which may be small), and the
        upload completed: the object at the key is then plain, as ``complete_parts``
        would make it after reading the tail back from a commit."""
        if self._pending or not self._part_count:
            await self._upload_part(bytes(self._pending))
        upload_id = self._upload_id
        assert upload_id is not None
        if self._unlisted:
            listed = await self._driver._listed_parts(self._key, upload_id, self._unlisted)
            self._parts[:0] = listed
            self._unlisted = 0
        client = await self._driver.client()
        await client.complete_multipart_upload(
            Bucket=self._driver.bucket,
            Key=self._key,
            UploadId=upload_id,
            MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
        )
        # A plain object of the whole size, as a new writer on it would start.
        self._base = self._size
        self._pending.clear()
        self._parts = []
        self._parts_size = 0
        self._upload_id = self._kept = None
        self._dirty = False

    async def cancel(self) -> None:
        staged = self._staged
        await self.close()
        if staged:
            return  # nothing of this writer's is at the key
        await self._driver._delete_keys(self._path, [self._key, self._driver.time_key(self._path)])
        if self._kept is not None:
            await self._driver._abort(self._key, self._kept)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None and upload_id != self._kept:
            await self._driver._abort(self._key, upload_id)


def create_s3_driver(params: dict[str, Any], redirect: bool = True) -> S3Driver:
    try:
        parsed = validate(S3Parameters, params)
    except Invalid as error:
        problems = "; ".join(
            f"storage.s3.{'.'.join(path)}: {reason}" for path, reason in error.problems
        )
        raise ValueError(problems) from None
    return S3Driver(parsed, redirect=redirect)
