"""Events in Distribution's notification format.

An endpoint receives ``POST`` requests of type :data:`EVENTS_MEDIA_TYPE` whose body is
an envelope ``{"events": [...]}``; each event has an ``id``, a ``timestamp``, an
``action`` (push, pull, mount, delete), the ``target`` it is about, the ``request``
that caused it, the ``actor`` (the authenticated user) and the ``source`` (this
registry instance). Empty fields are left out, as Distribution's JSON leaves them out.
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dockyard.errors import RegistryError
from dockyard.registry.blobs import OCTET_STREAM
from dockyard.registry.digest import Digest
from dockyard.registry.manifests import parse_stored

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"

PUSH = "push"
PULL = "pull"
MOUNT = "mount"
DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Source:
    """The registry node that generates the events: host:port and this process's id."""

    addr: str
    instance_id: str

    @classmethod
    def for_address(cls, listen: str) -> Source:
        # Like Distribution: the host name, with the port of http.addr when it has one.
        port = listen.rsplit(":", 1)[1] if ":" in listen else ""
        host = socket.gethostname()
        addr = f"{host}:{port}" if host and port.isdigit() else (host or listen)
        return cls(addr, str(uuid.uuid4()))

    def to_json(self) -> dict[str, str]:
        return {"addr": self.addr, "instanceID": self.instance_id}


@dataclass(frozen=True, slots=True)
class RequestRecord:
    id: str
    addr: str
    host: str
    method: str
    useragent: str

    def to_json(self) -> dict[str, str]:
        record = {"id": self.id, "method": self.method, "useragent": self.useragent}
        if self.addr:
            record["addr"] = self.addr
        if self.host:
            record["host"] = self.host
        return record


def timestamp() -> str:
    """RFC 3339 with nanoseconds' digits, in UTC, as Go writes a time."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"


def _compact(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value not in (None, "", 0, [])}


def event(
    action: str,
    target: dict[str, Any],
    request: RequestRecord,
    actor: str | None,
    source: Source,
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": timestamp(),
        "action": action,
        "target": _compact(target),
        "request": request.to_json(),
        "actor": {"name": actor} if actor else {},
        "source": source.to_json(),
    }


def manifest_target(
    repository: str,
    digest: Digest,
    media_type: str,
    data: bytes,
    url: str,
    tag: str | None,
    include_references: bool,
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "mediaType": media_type,
        "size": len(data),
        "digest": str(digest),
        "length": len(data),
        "repository": repository,
        "url": url,
        "tag": tag,
    }
    if include_references:
        target["references"] = references(data, digest)
    return target


def references(data: bytes, digest: Digest) -> list[dict[str, Any]]:
    """What a manifest points at: its config and layers, or an index's manifests."""
    try:
        manifest = parse_stored(data, digest)
    except (RegistryError, ValueError):
        return []
    descriptors = [manifest.config] if manifest.config is not None else []
    descriptors.extend(manifest.layers)
    descriptors.extend(manifest.children)
    found: list[dict[str, Any]] = []
    for descriptor in descriptors:
        body = descriptor.to_json()
        if descriptor.urls:
            body["urls"] = list(descriptor.urls)
        found.append(body)
    return found


def blob_target(
    repository: str,
    digest: Digest,
    size: int | None,
    url: str,
    from_repository: str | None = None,
) -> dict[str, Any]:
    return {
        "mediaType": OCTET_STREAM,
        "size": size,
        "digest": str(digest),
        "length": size,
        "repository": repository,
        "fromRepository": from_repository,
        "url": url,
    }


def deleted_target(
    repository: str, digest: Digest | None = None, tag: str | None = None
) -> dict[str, Any]:
    """A deleted manifest or blob (digest), tag (tag) or repository (neither)."""
    return {"digest": str(digest) if digest else None, "repository": repository, "tag": tag}


def envelope(lines: list[bytes]) -> bytes:
    """The request body for events already serialised with :func:`serialise`."""
    return b'{"events":[' + b",".join(lines) + b"]}"


def serialise(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
