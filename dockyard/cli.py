"""The ``dockyard`` command: ``serve`` and the operator tools."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING

import click

from dockyard import __version__
from dockyard.config import Config, ConfigError, load_config
from dockyard.logs import setup_logging

if TYPE_CHECKING:
    from dockyard.registry.usage import StoreUsage
    from dockyard.storage import StorageDriver

log = logging.getLogger("dockyard")


@click.group()
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """Dockyard, a private container image registry."""


@main.command()
@click.argument("config_path", metavar="[CONFIG]", required=False)
def serve(config_path: str | None) -> None:
    """Serve the registry API (config.yml as registry:2 reads it)."""
    from dockyard.server import serve as run

    config = _load_or_exit(config_path)
    try:
        run(config)
    except (ValueError, OSError) as error:
        click.echo(f"dockyard: cannot listen on {config.http.addr}: {error}", err=True)
        sys.exit(1)


def _load_or_exit(config_path: str | None) -> Config:
    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    config = loaded.config
    setup_logging(config.log.level, config.log.formatter, dict(config.log.fields))
    for warning in loaded.warnings:
        log.warning(warning)
    return config


@main.command("garbage-collect")
@click.argument("config_path", metavar="CONFIG")
@click.option("--dry-run", "-d", is_flag=True, help="Report what would be deleted; change nothing.")
@click.option("--delete-untagged", "-m", is_flag=True, help="Also delete manifests no tag reaches.")
@click.option(
    "--delay",
    type=float,
    default=None,
    help="Keep links and manifests pushed less than this many seconds ago (pushes in flight).",
)
@click.option(
    "--settle",
    type=float,
    default=None,
    help="Seconds a candidate stays set aside before it is deleted.",
)
def garbage_collect(
    config_path: str,
    dry_run: bool,
    delete_untagged: bool,
    delay: float | None,
    settle: float | None,
) -> None:
    """Delete blobs and manifests nothing references; safe while the registry serves."""
    from dockyard.registry.gc import GarbageCollector, GcOptions
    from dockyard.storage import create_driver

    config = _load_or_exit(config_path)
    gc_config = config.dockyard.gc
    options = GcOptions(
        dry_run=dry_run,
        delete_untagged=delete_untagged,
        delay=gc_config.delay.total_seconds() if delay is None else delay,
        settle=gc_config.settle.total_seconds() if settle is None else settle,
    )
    driver = create_driver(config.storage.driver_name, dict(config.storage.driver_params))

    async def collect() -> None:
        try:
            report = await GarbageCollector(driver, options, emit=click.echo).run()
        finally:
            await driver.close()
        click.echo(report.summary(dry_run))

    asyncio.run(collect())


def _driver_for(config: Config) -> StorageDriver:
    from dockyard.storage import create_driver

    return create_driver(config.storage.driver_name, dict(config.storage.driver_params))


@main.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def usage(config_path: str, as_json: bool) -> None:
    """Storage used per repository, shared between them, and reclaimable now."""
    from dockyard.registry.gc import GcOptions
    from dockyard.registry.usage import compute_usage

    config = _load_or_exit(config_path)
    gc = config.dockyard.gc
    options = GcOptions(
        dry_run=True,
        delete_untagged=gc.deleteuntagged,
        delay=gc.delay.total_seconds(),
        settle=gc.settle.total_seconds(),
    )
    driver = _driver_for(config)

    async def compute() -> StoreUsage:
        try:
            return await compute_usage(driver, options)
        finally:
            await driver.close()

    result = asyncio.run(compute())
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(
        f"{'REPOSITORY':40} {'MANIFESTS':>9} {'TAGS':>6} {'REFERENCED':>12} {'SHARED':>12} {'RECLAIMABLE':>12}"
    )
    for repo in result.repositories:
        click.echo(
            f"{repo.name:40} {repo.manifests:>9} {repo.tags:>6} {_size(repo.referenced_bytes):>12} "
            f"{_size(repo.shared_bytes):>12} {_size(repo.reclaimable_bytes):>12}"
        )
    click.echo(
        f"store: {_size(result.total_bytes)} in {result.blob_count} blobs, "
        f"{_size(result.referenced_bytes)} referenced, {_size(result.reclaimable_bytes)} reclaimable"
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@main.command("delete-repository")
@click.argument("config_path", metavar="CONFIG")
@click.argument("name")
def delete_repository(config_path: str, name: str) -> None:
    """Remove a repository's manifests, tags and links; garbage-collect to free its blobs."""
    from dockyard.errors import RegistryError
    from dockyard.registry import Registry, RegistryOptions

    config = _load_or_exit(config_path)
    driver = _driver_for(config)
    registry = Registry(driver, RegistryOptions(delete_enabled=True))

    async def delete() -> None:
        try:
            await registry.delete_repository(name)
        finally:
            await driver.close()

    try:
        asyncio.run(delete())
    except RegistryError as error:
        click.echo(f"dockyard: {error.message}: {name}", err=True)
        sys.exit(1)
    click.echo(f"deleted repository {name}; run garbage-collect to free its blobs")
