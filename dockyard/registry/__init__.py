"""The registry domain, free of HTTP: names, digests, blobs, uploads, manifests, tags."""

from dockyard.registry.registry import Registry, RegistryOptions, Repository

__all__ = ["Registry", "RegistryOptions", "Repository"]
