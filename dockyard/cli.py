"""The ``dockyard`` command: ``serve`` and the operator tools."""

from __future__ import annotations

import logging
import re
import sys

import click
from aiohttp import web

from dockyard import __version__
from dockyard.config import ConfigError, load_config
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

    try:
        loaded = load_config(config_path)
    except ConfigError as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    config = loaded.config
    setup_logging(config.log.level, config.log.formatter, dict(config.log.fields))
    for warning in loaded.warnings:
        log.warning(warning)
    app = create_app(config)
    access_log = None if config.log.accesslog.disabled else logging.getLogger("dockyard.access")
    listen = config.http.addr
    if config.http.net == "unix":
        log.info("listening on unix socket %s", listen)
        web.run_app(app, path=listen, access_log=access_log, access_log_class=AccessLogger, print=None)
        return
    host, port = parse_addr(listen)
    log.info("listening on %s", listen, extra={"fields": {"version": __version__}})
    web.run_app(
        app, host=host, port=port, access_log=access_log, access_log_class=AccessLogger, print=None
    )
