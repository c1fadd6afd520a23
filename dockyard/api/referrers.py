"""``/v2/<name>/referrers/<digest>`` (OCI 1.1)."""

from __future__ import annotations

import json

from aiohttp import web

from dockyard.api.context import registry_of
from dockyard.registry.digest import Digest
from dockyard.registry.manifests import OCI_INDEX


async def list_referrers(request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
    repo = registry_of(request).repository(name)
    subject = Digest.parse(digest_text)
    artifact_type = request.query.get("artifactType") or None
    descriptors = await repo.referrers.list(subject, artifact_type)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor.to_json() for descriptor in descriptors],
    }
    headers = {"Content-Type": OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)
