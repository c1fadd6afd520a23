"""Pushing over HTTP the way docker does, retrying what a collection may legitimately refuse.

docker (and containerd, skopeo) ask ``HEAD /v2/<name>/blobs/<digest>`` for each layer
and skip the upload when the registry has it, optionally try a cross-repository mount,
then ``PUT`` the manifest. A collection running meanwhile may remove a layer between
the HEAD and the PUT; the registry then refuses the manifest with
``MANIFEST_BLOB_UNKNOWN`` (or ``UNAVAILABLE`` when holding its references took too
long) and the client pushes again. Anything else is a failure of the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from tests.support.gc_images import error_code
from tests.support.images import Blob, Image, ImageIndex, with_digest

RETRYABLE = {(400, "MANIFEST_BLOB_UNKNOWN"), (503, "UNAVAILABLE")}


class PushFailed(AssertionError):
    """The registry answered a push with something no collection explains."""


class ServerError(PushFailed):
    """A 5xx other than UNAVAILABLE: a registry bug, though a client would retry it."""


@dataclass
class PushStats:
    pushes: int = 0
    uploads: int = 0  # blobs sent
    skipped: int = 0  # blobs the HEAD found
    mounted: int = 0  # blobs a cross-repository mount linked
    retried_blob_unknown: int = 0
    retried_unavailable: int = 0
    # 5xx answers retried as a client would, each described: bugs, reported by the caller.
    server_errors: list[str] = field(default_factory=list)

    def add(self, other: PushStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _absolute(base_url: str, location: str) -> str:
    return location if location.startswith("http") else base_url + location


def _fail(what: str, response: httpx.Response) -> PushFailed:
    kind = ServerError if response.status_code >= 500 else PushFailed
    return kind(f"{what}: {response.status_code} {response.text[:300]}")


def _upload(client: httpx.Client, base_url: str, location: str, blob: Blob) -> None:
    # with_digest appends to the query: httpx's params= would drop the session's own
    # query parameters (Distribution's signed _state).
    response = client.put(
        with_digest(_absolute(base_url, location), blob.digest),
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    if response.status_code != 201:
        raise _fail(f"PUT upload of {blob.digest}", response)


def ensure_blob(
    client: httpx.Client,
    base_url: str,
    repository: str,
    blob: Blob,
    stats: PushStats,
    mount_from: str | None = None,
) -> None:
    """HEAD, and upload (or mount) only when the repository does not have the blob."""
    head = client.head(f"{base_url}/v2/{repository}/blobs/{blob.digest}")
    if head.status_code == 200:
        stats.skipped += 1
        return
    if head.status_code != 404:
        raise _fail(f"HEAD {repository}@{blob.digest}", head)
    params = {"mount": blob.digest, "from": mount_from} if mount_from else None
    start = client.post(f"{base_url}/v2/{repository}/blobs/uploads/", params=params)
    if start.status_code == 201 and mount_from:
        stats.mounted += 1
        return
    if start.status_code != 202:
        raise _fail(f"POST upload {repository}", start)
    _upload(client, base_url, start.headers["Location"], blob)
    stats.uploads += 1


def put_manifest(
    client: httpx.Client, base_url: str, repository: str, reference: str, manifest: Blob
) -> httpx.Response:
    return client.put(
        f"{base_url}/v2/{repository}/manifests/{reference}",
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )


def push_retrying(
    client: httpx.Client,
    base_url: str,
    repository: str,
    reference: str,
    artifact: Image | ImageIndex,
    mount_from: str | None = None,
    attempts: int = 20,
) -> PushStats:
    """Push an image or index (children by digest first) until the registry accepts it.

    Refusals a collection explains are retried and counted; 5xx answers are retried too
    (docker does) but recorded in ``server_errors``; anything else raises.
    """
    stats = PushStats()
    for _ in range(attempts):
        try:
            if isinstance(artifact, ImageIndex):
                for image in artifact.images:
                    stats.add(
                        push_retrying(client, base_url, repository, image.digest, image, mount_from)
                    )
            else:
                for blob in artifact.blobs:
                    ensure_blob(client, base_url, repository, blob, stats, mount_from)
            response = put_manifest(client, base_url, repository, reference, artifact.manifest)
            if response.status_code == 201:
                if response.headers.get("Docker-Content-Digest") != artifact.digest:
                    raise PushFailed(f"PUT manifest answered digest {response.headers}")
                stats.pushes += 1
                return stats
            outcome = (response.status_code, error_code(response))
            if outcome not in RETRYABLE:
                raise _fail(f"PUT {repository}:{reference}", response)
        except ServerError as error:
            stats.server_errors.append(str(error))
            continue
        if outcome[1] == "MANIFEST_BLOB_UNKNOWN":
            stats.retried_blob_unknown += 1
        else:
            stats.retried_unavailable += 1
    raise PushFailed(f"{repository}:{reference} refused {attempts} times")
