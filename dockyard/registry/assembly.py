"""The registry a configuration describes: its storage driver, coordination and options.

Kept apart from the web application so that the command-line tools (``garbage-collect``,
``delete-repository``) get the same registry as the server without importing the HTTP
stack, which would double their start-up time.
"""

from __future__ import annotations

from collections.abc import Callable

from dockyard.config import Config
from dockyard.coordination import build_coordination
from dockyard.registry.gc import hold_limit_for
from dockyard.registry.registry import Registry, RegistryOptions
from dockyard.storage import S3Driver, create_driver
from dockyard.storage.driver import StorageDriver


def configured_driver(config: Config) -> StorageDriver:
    """The storage driver of a checked configuration."""
    storage = config.storage
    if storage.s3 is not None:
        # Checked already: the parameters need no second reading (which would load
        # pydantic into a worker that has none).
        return S3Driver(storage.s3, redirect=not storage.redirect.disable)
    return create_driver(storage.driver_name, dict(storage.driver_params))


def build_registry(
    config: Config, instrument: Callable[[StorageDriver], StorageDriver] | None = None
) -> Registry:
    """``instrument`` wraps the driver once it is coordinated (the server's metrics)."""
    coordination = build_coordination(config)
    driver = coordination.adapt(configured_driver(config))
    if instrument is not None:
        driver = instrument(driver)
    options = RegistryOptions(
        delete_enabled=config.storage.delete.enabled,
        read_only=config.storage.maintenance.readonly.enabled,
        hold_limit=hold_limit_for(config.dockyard.gc.settle.total_seconds()),
    )
    return Registry(driver, options, coordination)
