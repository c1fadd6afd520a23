"""The referrers API (OCI 1.1): manifests whose ``subject`` is a given digest."""

from __future__ import annotations

import builtins

from dockyard.errors import ManifestInvalid, ManifestUnknown
from dockyard.registry import layout
from dockyard.registry.digest import Digest
from dockyard.registry.manifest_store import ManifestStore
from dockyard.registry.manifests import Descriptor, parse_stored
from dockyard.storage.driver import PathNotFoundError, StorageDriver


class ReferrerIndex:
    def __init__(self, name: str, driver: StorageDriver, manifests: ManifestStore) -> None:
        self.name = name
        self.driver = driver
        self.manifests = manifests

    async def list(
        self, subject: Digest, artifact_type: str | None = None
    ) -> builtins.list[Descriptor]:
        """Descriptors of the subject's referrers, oldest digest order, optionally filtered.

        An entry whose manifest has gone (deleted by another tool) is skipped, so the
        list never names a manifest that cannot be fetched.
        """
        base = layout.referrers(self.name, subject)
        found: builtins.list[Descriptor] = []
        try:
            algorithms = await self.driver.list(base)
        except PathNotFoundError:
            return found
        for algorithm in algorithms:
            try:
                encodings = await self.driver.list(f"{base}/{algorithm}")
            except PathNotFoundError:
                continue
            for encoded in encodings:
                text = f"{algorithm}:{encoded}"
                if not Digest.is_valid(text):
                    continue
                digest = Digest.parse(text)
                try:
                    stored = await self.manifests.get(digest)
                    manifest = parse_stored(stored.data, digest)
                except (ManifestUnknown, ManifestInvalid):
                    # Deleted since it was indexed, or not a manifest this registry reads.
                    continue
                if manifest.subject is None or manifest.subject.digest != subject:
                    continue
                descriptor = manifest.referrer_descriptor()
                if artifact_type is None or descriptor.artifact_type == artifact_type:
                    found.append(descriptor)
        return found
