"""The ``dockyard`` command: ``serve`` and the operator tools."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import click
from aiohttp import web

from dockyard import __version__
from dockyard.config import Config, ConfigError, load_config
from dockyard.logs import AccessLogger, setup_logging

log = logging.getLogger("dockyard")


def parse_addr(addr: str) -> tuple[str | None, int]:
    """Go's listen address: ``:5000`` (every interface), ``host:port``, ``[v6]:port``."""
    match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*)):(?P<port>\d+)", addr.strip())
    if not match:
        raise click.BadParameter(f"http.addr {addr!r} is not host:port")
    host = match.group("v6") or match.group("host") or None
    return host, int(match.group("port"))


@click.group()
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """Dockyard, a private container image registry."""


@main.command()
@click.argument("config_path", metavar="[CONFIG]", required=False)
def serve(config_path: str | None) -> None:
    """Serve the registry API (config.yml as registry:2 reads it)."""
    from dockyard.api.app import create_app

    config = _load_or_exit(config_path)
    app = create_app(config)
    access_log = None if config.log.accesslog.disabled else logging.getLogger("dockyard.access")
    listen = config.http.addr
    if config.http.net == "unix":
        log.info("listening on unix socket %s", listen)
        web.run_app(
            app, path=listen, access_log=access_log, access_log_class=AccessLogger, print=None
        )
        return
    host, port = parse_addr(listen)
    log.info("listening on %s", listen, extra={"fields": {"version": __version__}})
    web.run_app(
        app, host=host, port=port, access_log=access_log, access_log_class=AccessLogger, print=None
    )


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
