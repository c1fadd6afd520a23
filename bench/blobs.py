"""Blob figures over the registry API: monolithic and chunked pushes, whole-blob pulls.

The client is aiohttp with 1 MiB pieces read by pread and a large read buffer: at the
sizes measured here its per-byte cost is a few percent of the server's (hashing and
writing), which the report shows as the client's CPU time.
"""

from __future__ import annotations

import time
from urllib.parse import urljoin

import aiohttp

from bench.payload import Blob
from bench.servers import BenchError

OCTET_STREAM = "application/octet-stream"
PULL_PIECE = 1 << 20


def session(timeout: float) -> aiohttp.ClientSession:
    # One connection at a time; read_bufsize lets a pull drain the socket in large reads.
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        read_bufsize=4 << 20,
        connector=aiohttp.TCPConnector(limit=64),
    )


async def _expect(response: aiohttp.ClientResponse, status: int, what: str) -> None:
    if response.status != status:
        body = (await response.read())[:300]
        raise BenchError(f"{what}: expected {status}, got {response.status}: {body!r}")


async def start_upload(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as response:
        await _expect(response, 202, "POST upload")
        return urljoin(base, response.headers["Location"])


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


async def put_body(
    http: aiohttp.ClientSession, url: str, blob: Blob, status: int, what: str
) -> None:
    """One PUT carrying the whole blob."""
    headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(blob.size)}
    async with http.put(url, data=blob.chunks(), headers=headers) as response:
        await _expect(response, status, what)


async def push_monolithic(http: aiohttp.ClientSession, base: str, repo: str, blob: Blob) -> float:
    """POST, then one PUT carrying the whole body; seconds from POST to the 201."""
    started = time.perf_counter()
    location = await start_upload(http, base, repo)
    await put_body(http, _with_digest(location, blob.digest), blob, 201, "PUT monolithic")
    return time.perf_counter() - started


async def push_many(http: aiohttp.ClientSession, base: str, repo: str, pushed: list[Blob]) -> float:
    """Monolithic pushes one after the other; seconds in all."""
    seconds = 0.0
    for blob in pushed:
        seconds += await push_monolithic(http, base, repo, blob)
    return seconds


async def push_chunked(
    http: aiohttp.ClientSession, base: str, repo: str, blob: Blob, piece: int
) -> float:
    """POST, a PATCH per piece with Content-Range, then the closing PUT; seconds."""
    started = time.perf_counter()
    location = await start_upload(http, base, repo)
    for start in range(0, blob.size, piece):
        end = min(start + piece, blob.size)
        headers = {
            "Content-Type": OCTET_STREAM,
            "Content-Length": str(end - start),
            "Content-Range": f"{start}-{end - 1}",
        }
        async with http.patch(location, data=blob.chunks(start, end), headers=headers) as response:
            await _expect(response, 202, f"PATCH {start}-{end - 1}")
            location = urljoin(base, response.headers["Location"])
    async with http.put(
        _with_digest(location, blob.digest), headers={"Content-Length": "0"}
    ) as response:
        await _expect(response, 201, "PUT closing a chunked upload")
    return time.perf_counter() - started


async def pull(http: aiohttp.ClientSession, url: str, size: int) -> float:
    """GET the whole body, counting and discarding it; seconds."""
    started = time.perf_counter()
    received = 0
    async with http.get(url) as response:
        await _expect(response, 200, f"GET {url}")
        async for piece in response.content.iter_chunked(PULL_PIECE):
            received += len(piece)
    elapsed = time.perf_counter() - started
    if received != size:
        raise BenchError(f"GET {url}: {received} bytes instead of {size}")
    return elapsed


async def pull_repeated(http: aiohttp.ClientSession, url: str, size: int, repeat: int) -> float:
    """``repeat`` whole GETs in a row; seconds in all."""
    seconds = 0.0
    for _ in range(repeat):
        seconds += await pull(http, url, size)
    return seconds


async def status_unfollowed(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """The status of a GET, not following a redirect, and where a redirect points."""
    async with http.get(url, allow_redirects=False) as response:
        # Read to the end: a server may log a client that leaves mid-body as an error.
        async for _ in response.content.iter_chunked(PULL_PIECE):
            pass
        return response.status, response.headers.get("Location", "")


async def blob_exists(http: aiohttp.ClientSession, base: str, repo: str, digest: str) -> bool:
    async with http.head(f"{base}/v2/{repo}/blobs/{digest}") as response:
        return response.status == 200
