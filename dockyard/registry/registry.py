"""The registry domain's entry point: one object that owns the stores over one driver."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dockyard.coordination import Coordination, local_coordination
from dockyard.errors import NameUnknown, Unsupported
from dockyard.registry import layout
from dockyard.registry.blobs import BlobStore, RepositoryBlobs
from dockyard.registry.cache import DigestCache
from dockyard.registry.catalog import Catalog
from dockyard.registry.deferred import DeferredWork
from dockyard.registry.hashstate import sha256_states
from dockyard.registry.links import delete_if_exists
from dockyard.registry.manifest_store import ManifestStore, StoredManifest
from dockyard.registry.names import check_name
from dockyard.registry.referrers import ReferrerIndex
from dockyard.registry.tags import TagStore
from dockyard.registry.uploads import RunningHashes, UploadStore
from dockyard.storage.driver import StorageDriver

# Repositories whose store objects a registry keeps between requests: building them
# (and validating the name) is a few percent of a manifest GET.
REPOSITORIES_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    delete_enabled: bool = False
    read_only: bool = False
    # How long a manifest push may take from checking its references to committing;
    # garbage collection waits longer than twice this before it removes anything.
    hold_limit: float = 4.0


class Repository:
    """Everything about one repository. It holds no state of its own (that is in storage
    and the registry's caches), so one object serves every request for the name."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.name = check_name(name)
        driver = registry.driver
        self.blobs = RepositoryBlobs(self.name, registry.blobs)
        self.tags = TagStore(self.name, driver, registry.coordination.locks, registry.deferred)
        self.manifests = ManifestStore(
            self.name,
            driver,
            registry.blobs,
            self.blobs,
            self.tags,
            registry.options.hold_limit,
            registry.manifest_cache,
        )
        self.referrers = ReferrerIndex(self.name, driver, self.manifests)


class Registry:
    def __init__(
        self,
        driver: StorageDriver,
        options: RegistryOptions | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        self.coordination = coordination or local_coordination()
        self.driver = driver
        self.options = options or RegistryOptions()
        self.blobs = BlobStore(driver, self.coordination.descriptors)
        self.uploads = UploadStore(
            driver, self.blobs, RunningHashes(), self.coordination.locks, sha256_states()
        )
        self.catalog = Catalog(driver)
        self.manifest_cache: DigestCache[StoredManifest] = DigestCache(64 << 20)
        self._repositories: OrderedDict[str, Repository] = OrderedDict()
        self.deferred = DeferredWork()

    def repository(self, name: str) -> Repository:
        repository = self._repositories.get(name)
        if repository is None:
            repository = Repository(self, name)  # refuses an invalid name
            self._repositories[name] = repository
            if len(self._repositories) > REPOSITORIES_REMEMBERED:
                self._repositories.popitem(last=False)
        else:
            self._repositories.move_to_end(name)
        return repository

    def check_writable(self) -> None:
        if self.options.read_only:
            raise Unsupported("the registry is in read-only mode")

    def check_deletable(self) -> None:
        self.check_writable()
        if not self.options.delete_enabled:
            raise Unsupported("deletes are disabled (storage.delete.enabled is false)")

    async def delete_repository(self, name: str) -> None:
        """Remove a repository's manifests, tags, links and uploads; blobs stay for GC."""
        self.check_deletable()
        repo = self.repository(name)
        removed = False
        for path in (
            layout.manifests(repo.name),
            layout.layers(repo.name),
            layout.uploads(repo.name),
        ):
            removed = await delete_if_exists(self.driver, path) or removed
        await self.coordination.descriptors.forget_repository(repo.name)
        if not removed:
            raise NameUnknown(detail={"name": repo.name})

    async def close(self) -> None:
        await self.deferred.close()
        await self.driver.close()
        await self.coordination.close()
