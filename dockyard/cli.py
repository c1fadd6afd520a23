"""The ``dockyard`` command: ``serve`` and the operator tools."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING

import click

from dockyard import __version__
from dockyard.config import Config, ConfigError, load_config, load_config_apart
from dockyard.logs import setup_logging

if TYPE_CHECKING:
    from dockyard.registry.usage import StoreUsage
    from dockyard.storage import StorageDriver

log = logging.getLogger("dockyard")
# Printed when a collection finds no server or other writer using the store.
ALONE_NOTICE = (
    "no server is using the store: candidates are deleted without a grace period "
    "(a server started meanwhile waits for the collection to end)"
)


@click.group()
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """Dockyard, a private container image registry."""


@main.command()
@click.argument("config_path", metavar="[CONFIG]", required=False)
def serve(config_path: str | None) -> None:
    """Serve the registry API (config.yml as registry:2 reads it)."""
    from dockyard.server import serve as run

    # Read apart: the workers forked from this process then hold no configuration
    # checker (see load_config_apart).
    config = _load_or_exit(config_path, apart=True)
    _check_security_or_exit(config)
    try:
        run(config)
    except (ValueError, OSError) as error:
        click.echo(f"dockyard: cannot listen on {config.http.addr}: {error}", err=True)
        sys.exit(1)


def _check_security_or_exit(config: Config) -> None:
    """TLS files and auth settings are checked once, before any worker starts."""
    from dockyard.auth import check_security

    try:
        check_security(config)
    except ValueError as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)


def _load_or_exit(config_path: str | None, apart: bool = False) -> Config:
    try:
        loaded = load_config_apart(config_path) if apart else load_config(config_path)
    except ConfigError as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    config = loaded.config
    setup_logging(config.log.level, config.log.formatter, dict(config.log.fields))
    for warning in loaded.warnings:
        log.warning(warning)
    return config


@main.command()
@click.option(
    "--listen",
    default=":8080",
    show_default=True,
    envvar="UI_LISTEN",
    help="Address to serve the UI on, host:port or :port (env UI_LISTEN).",
)
@click.option(
    "--registry-url",
    default=None,
    help="The registry, e.g. http://host:5000/v2 (env REGISTRY_URL).",
)
@click.option(
    "--registry-name", default=None, help="host:port shown in pull commands (env REGISTRY_NAME)."
)
@click.option(
    "--read-only/--read-write",
    default=None,
    help="Hide deleting and collection (env REGISTRY_READONLY; read-only unless it is false).",
)
@click.option(
    "--trust-any-ssl",
    is_flag=True,
    default=None,
    help="Accept any TLS certificate from the registry (env REGISTRY_TRUST_ANY_SSL).",
)
def ui(
    listen: str,
    registry_url: str | None,
    registry_name: str | None,
    read_only: bool | None,
    trust_any_ssl: bool | None,
) -> None:
    """Serve the web UI alone, in front of any v2 registry (as docker-registry-web).

    Credentials come only from REGISTRY_BASIC_AUTH (base64 of user:password), never from
    the command line where other users could read them; without it, the browser asks.
    """
    from dockyard.web import run_standalone, settings_from_env
    from dockyard.web.settings import SettingsError

    setup_logging("info", "text", {})
    try:
        settings = settings_from_env(
            registry_url=registry_url,
            registry_name=registry_name,
            read_only=read_only,
            trust_any_ssl=trust_any_ssl or None,
        )
        run_standalone(settings, listen)
    except (SettingsError, ValueError, OSError) as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)


def _write_lines(lines: Sequence[str]) -> None:
    """A burst of a collection's lines to stdout in one write: print, with
    PYTHONUNBUFFERED (as container images often set it), writes each line and its
    newline apart; click.echo also asks whether stdout is a terminal, line by line."""
    if lines:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()


# Seconds a thread holding the interpreter lock keeps it while another waits, in a
# collection (Python's default is 0.005).
GC_SWITCH_INTERVAL = 0.001


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
@click.option(
    "--scan-processes",
    type=click.IntRange(min=1),
    default=None,
    help=(
        "Processes that share the scan and, with the store to itself, the deletes; this one"
        " included (default: one per usable core)."
    ),
)
def garbage_collect(
    config_path: str,
    dry_run: bool,
    delete_untagged: bool,
    delay: float | None,
    settle: float | None,
    scan_processes: int | None,
) -> None:
    """Delete blobs and manifests nothing references; safe while the registry serves."""
    from dockyard.errors import Unsupported
    from dockyard.registry.assembly import build_registry
    from dockyard.registry.gc import GarbageCollector, GcOptions
    from dockyard.registry.gc_status import CollectionStatus
    from dockyard.registry.scan_helpers import ScanHelpers, StorageSpec
    from dockyard.registry.store_use import store_alone

    config = _load_or_exit(config_path)
    gc_config = config.dockyard.gc
    options = GcOptions(
        dry_run=dry_run,
        delete_untagged=delete_untagged,
        delay=gc_config.delay.total_seconds() if delay is None else delay,
        settle=gc_config.settle.total_seconds() if settle is None else settle,
    )

    spec = StorageSpec(config.storage.driver_name, dict(config.storage.driver_params))
    processes = scan_processes or _usable_cores()
    # The event loop, the delete thread and the helpers' pool threads share this
    # process's interpreter lock, each giving it up at every system call: handed over
    # after 1 ms instead of 5, the loop waits less for it (bench/FINDINGS.md).
    sys.setswitchinterval(GC_SWITCH_INTERVAL)
    # The scan is CPU work in one thread: helpers scan beside it on the other cores.
    # Started here, before the event loop and its threads, and before any lock is taken.
    helpers = ScanHelpers(spec, processes - 1) if processes > 1 and spec.shared else None
    if helpers is not None:
        helpers.start()

    async def collect() -> None:
        # The server's coordination (the same token, fences and descriptor cache), so
        # that this runs beside serving replicas as their own collections do.
        registry = build_registry(config)

        def collector(alone: bool) -> GarbageCollector:
            return GarbageCollector(
                registry.driver,
                options,
                emit=_write_lines,
                descriptors=registry.coordination.descriptors,
                alone=alone,
                helpers=helpers,
            )

        try:
            if dry_run:
                report = await collector(alone=False).run()
            else:
                # One collection at a time, with the server's own: the same token and
                # the same record of the last run, which the UI and the API show.
                status = CollectionStatus(registry.driver, registry.coordination)
                # Replicas that share a Redis may use the store from other hosts, where a
                # lock on a shared directory is not always shared too: never alone then.
                exclusive: AbstractAsyncContextManager[bool] = (
                    store_alone(registry.driver) if config.redis is None else nullcontext(False)
                )
                async with status.collecting(), exclusive as alone:
                    if alone:
                        click.echo(ALONE_NOTICE)
                    report = await collector(alone).run()
                    await status.record(
                        {**report.to_json(dry_run=False), "finishedAt": time.time()}
                    )
        finally:
            await registry.close()
        click.echo(report.summary(dry_run))

    try:
        asyncio.run(collect())
    except Unsupported as error:
        raise click.ClickException(f"{error.message}: {error.detail}") from None
    finally:
        if helpers is not None:
            helpers.close()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _driver_for(config: Config) -> StorageDriver:
    from dockyard.registry.assembly import configured_driver

    return configured_driver(config)


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
    from dataclasses import replace

    from dockyard.errors import RegistryError
    from dockyard.registry.assembly import build_registry
    from dockyard.registry.store_use import using_store

    config = _load_or_exit(config_path)

    async def delete() -> None:
        registry = build_registry(config)
        registry.options = replace(registry.options, delete_enabled=True)
        try:
            async with using_store(registry.driver):
                await registry.delete_repository(name)
        finally:
            await registry.close()

    try:
        asyncio.run(delete())
    except RegistryError as error:
        click.echo(f"dockyard: {error.message}: {name}", err=True)
        sys.exit(1)
    click.echo(f"deleted repository {name}; run garbage-collect to free its blobs")


@main.command()
@click.option("--ip", "ips", multiple=True, help="An IP address clients use (repeatable).")
@click.option("--dns", "names", multiple=True, help="A host name clients use (repeatable).")
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write to."
)
@click.option(
    "--port", default=5000, show_default=True, help="The registry's port, for the paths printed."
)
@click.option("--days", default=825, show_default=True, help="Validity of the server certificate.")
@click.option("--ca-days", default=3650, show_default=True, help="Validity of a new CA.")
@click.option("--rsa", is_flag=True, help="RSA-3072 keys instead of ECDSA P-256.")
@click.option(
    "--client",
    "clients",
    multiple=True,
    help="Also issue a client certificate NAME.cert/NAME.key (for http.tls.clientcas).",
)
def cert(
    ips: tuple[str, ...],
    names: tuple[str, ...],
    out: str,
    port: int,
    days: int,
    ca_days: int,
    rsa: bool,
    clients: tuple[str, ...],
) -> None:
    """Make a CA and a TLS certificate for the registry, and say where clients put the CA.

    The CA in OUT is reused when present, so a new server certificate needs nothing
    new on clients that already trust it.
    """
    from dockyard.certs import create_certificates, instructions

    try:
        result = create_certificates(
            out,
            ips,
            names,
            kind="rsa" if rsa else "ec",
            days=days,
            ca_days=ca_days,
            clients=clients,
        )
    except (ValueError, OSError) as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    click.echo(instructions(result, port))


@main.command()
@click.argument("htpasswd_path", metavar="HTPASSWD")
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def passwd(htpasswd_path: str, user: str, password_stdin: bool) -> None:
    """Add a user to an htpasswd file (bcrypt), or change their password."""
    from dockyard.auth.htpasswd import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("dockyard: the password is empty", err=True)
        sys.exit(1)
    try:
        created = set_password(htpasswd_path, user, password)
    except (ValueError, OSError) as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    click.echo(f"{'added' if created else 'updated'} user {user} in {htpasswd_path}")


@main.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--user", default=None, help="The token's subject (default: anonymous).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="type:name:actions, e.g. repository:team/app:pull or registry:dockyard:admin (repeatable).",
)
@click.option("--service", default=None, help="The registry the token is for (default: this one).")
def token(config_path: str, user: str | None, scopes: tuple[str, ...], service: str | None) -> None:
    """Print a token from the built-in token service, with what the access rules grant.

    For scripts that call the API (``curl -H "Authorization: Bearer $TOKEN"``); whoever
    can read the signing key can mint tokens anyway, so no password is asked.
    """
    from dockyard.auth import build_auth

    config = _load_or_exit(config_path)
    try:
        auth = build_auth(config)
        if auth is None:
            raise ValueError("this configuration has no auth; no token is needed")
        issued = auth.mint_token(user, scopes, service)
    except ValueError as error:
        click.echo(f"dockyard: {error}", err=True)
        sys.exit(1)
    click.echo(issued.token)
