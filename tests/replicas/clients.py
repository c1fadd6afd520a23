"""Clients of the replica group: skopeo for images, httpx for what skopeo never does.

``ResumableUpload`` is a chunked blob upload as the OCI distribution spec lets a client
recover one: when a ``PATCH`` fails (the replica died, nginx answered 502, the
connection broke), ask ``GET <upload URL>`` for the ``Range`` the registry holds and
continue from its end; when the session itself is gone, start again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.images import (
    Artifact,
    ImageIndex,
    read_oci_layout,
    sha256_digest,
    skopeo,
    with_digest,
    write_oci_layout,
)

PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"


def push_skopeo(host: str, artifact: Artifact, reference: str, workdir: Path) -> None:
    """``skopeo copy [--all] oci:... docker://host/reference``."""
    source = write_oci_layout(workdir, {"v1": artifact})
    every = ["--all"] if isinstance(artifact, ImageIndex) else []
    skopeo("copy", *every, PUSH, f"oci:{source}:v1", f"docker://{host}/{reference}")


def assert_pulls(host: str, artifact: Artifact, reference: str, workdir: Path) -> None:
    """skopeo pulls ``reference`` (every platform of an index) and gets exactly the
    manifests and blobs that were pushed, byte for byte."""
    every = ["--all"] if isinstance(artifact, ImageIndex) else []
    workdir.parent.mkdir(parents=True, exist_ok=True)
    skopeo("copy", *every, PULL, f"docker://{host}/{reference}", f"oci:{workdir}:v1")
    pulled = read_oci_layout(workdir)
    assert pulled.tags == {"v1": artifact.digest}, (host, reference)
    assert set(pulled.blobs) == artifact.all_digests, (host, reference)
    expected = {artifact.manifest.digest: artifact.manifest.data}
    images = artifact.images if isinstance(artifact, ImageIndex) else (artifact,)
    for image in images:
        expected[image.manifest.digest] = image.manifest.data
        expected.update({blob.digest: blob.data for blob in image.blobs})
    for digest, data in expected.items():
        assert pulled.blobs[digest] == data, (host, reference, digest)


def absolute(base_url: str, location: str) -> str:
    return location if location.startswith("http") else base_url + location


class UploadGone(Exception):
    """The registry no longer knows the upload session: the client starts again."""


@dataclass
class ResumableUpload:
    """A chunked upload through ``base_url`` that survives a replica dying under it."""

    client: httpx.Client
    base_url: str
    repository: str
    data: bytes
    chunk_size: int
    url: str = ""
    # What happened, for the test to look at: each failed PATCH and its recovery.
    failures: list[str] = field(default_factory=list)
    restarts: int = 0
    # The end of the last Range a PATCH was acknowledged with, plus one.
    acknowledged: int = 0

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def start(self) -> str:
        response = self._retry(lambda: self.client.post(
            f"{self.base_url}/v2/{self.repository}/blobs/uploads/"
        ))
        assert response.status_code == 202, (response.status_code, response.text)
        self.url = absolute(self.base_url, response.headers["Location"])
        return self.url

    def offset(self) -> int:
        """The next byte the registry wants: the end of ``GET``'s ``Range``, plus one."""
        response = self._retry(lambda: self.client.get(self.url))
        if response.status_code == 404:
            raise UploadGone(response.text)
        assert response.status_code == 204, (response.status_code, response.text)
        if "Location" in response.headers:
            self.url = absolute(self.base_url, response.headers["Location"])
        # Distribution (and Dockyard, and the spec's examples) say "0-0" for an empty
        # upload as for one byte: only what was acknowledged tells them apart.
        text = response.headers.get("Range", "")
        if not text or (text == "0-0" and self.acknowledged == 0):
            return 0
        start, _, end = text.partition("-")
        assert start == "0", text
        return int(end) + 1

    def patch(self, offset: int, body: bytes | Iterator[bytes], length: int) -> bool:
        """One ``PATCH`` of ``length`` bytes from ``offset``; False if it did not land."""
        try:
            response = self.client.patch(
                self.url,
                content=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + length - 1}",
                    "Content-Length": str(length),
                },
            )
        except httpx.TransportError as error:
            self.failures.append(f"PATCH {offset}: {type(error).__name__}: {error}")
            return False
        if response.status_code != 202:
            self.failures.append(f"PATCH {offset}: {response.status_code} {response.text[:200]}")
            return False
        assert response.headers["Range"] == f"0-{offset + length - 1}", response.headers
        self.url = absolute(self.base_url, response.headers["Location"])
        self.acknowledged = offset + length
        return True

    def send(
        self,
        until: int | None = None,
        body_for: Callable[[int, bytes], bytes | Iterator[bytes]] | None = None,
    ) -> int:
        """PATCH chunks up to byte ``until`` (default: all), resuming after failures.

        ``body_for(offset, chunk)`` may turn a chunk into a generator, to act in the
        middle of its body. Returns the offset reached.
        """
        end = len(self.data) if until is None else until
        offset = self.offset() if self.url else 0
        if not self.url:
            self.start()
        attempts = 0
        while offset < end:
            chunk = self.data[offset : min(offset + self.chunk_size, end)]
            body = body_for(offset, chunk) if body_for else chunk
            if self.patch(offset, body, len(chunk)):
                offset += len(chunk)
                continue
            attempts += 1
            assert attempts <= 10, f"upload does not progress: {self.failures}"
            try:
                offset = self.offset()
            except UploadGone:
                self.restarts += 1
                self.start()
                self.acknowledged = offset = 0
        return offset

    def finish(self) -> httpx.Response:
        """``PUT ?digest=`` with no body: the upload becomes the blob."""
        response = self._retry(lambda: self.client.put(with_digest(self.url, self.digest)))
        return response

    def _retry(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """Requests without a body to lose: retried on a broken connection or a 502/503,
        as a client does when a replica goes away under the balancer."""
        last = ""
        for _ in range(10):
            try:
                response = send()
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
                self.failures.append(last)
                time.sleep(0.2)
                continue
            if response.status_code in (502, 503):
                last = f"{response.status_code} {response.text[:200]}"
                self.failures.append(last)
                time.sleep(0.2)
                continue
            return response
        raise AssertionError(f"no answer after 10 tries: {last}")
