"""Run the registry: one listening socket, one or more worker processes sharing it.

The parent binds the address, then forks the workers; each listens on its own
SO_REUSEPORT socket and the kernel spreads connections among them. Everything a request
needs that must be shared (upload sessions, tags, blobs) lives in storage, so any worker
can serve any request. Only the first worker runs the periodic maintenance jobs. Once the
workers are forked, the parent becomes the small program of :mod:`dockyard.supervisor`,
which replaces any worker that dies.

With metrics on (``http.debug``), the parent also binds the debug address; with
several workers it forks one more process that serves the metrics of all of them (see
:mod:`dockyard.metrics`). On SIGTERM or SIGINT every worker stops accepting, lets the
requests in flight finish for up to ``http.draintimeout`` and exits; the parent exits
0 once they all have, killing any that outlives the bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import signal
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from dockyard import metrics
from dockyard.config import Config
from dockyard.logs import setup_logging
from dockyard.memory import limit_malloc_arenas
from dockyard.supervisor import (
    METRICS_PROCESS,
    STOP_SIGNALS,
    Replacement,
    Supervisor,
    WorkerPlan,
    package_root,
)
from dockyard.tls import server_ssl_context

if TYPE_CHECKING:
    from aiohttp.abc import AbstractAccessLogger

    from dockyard.api.observe import Activity

log = logging.getLogger("dockyard")

# Seconds requests in flight get to finish after SIGTERM without http.draintimeout.
DEFAULT_DRAIN_TIMEOUT = 5.0


def parse_addr(addr: str) -> tuple[str | None, int]:
    """Go's listen address: ``:5000`` (every interface), ``host:port``, ``[v6]:port``."""
    match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*)):(?P<port>\d+)", addr.strip())
    if not match:
        raise ValueError(f"http.addr {addr!r} is not host:port")
    host = match.group("v6") or match.group("host") or None
    return host, int(match.group("port"))


def bind(config: Config, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """The listening socket; with ``reuse_port`` each worker can bind its own."""
    if config.http.net == "unix":
        path = config.http.addr
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        sock = _tcp_socket(config.http.addr, reuse_port)
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_debug(config: Config) -> socket.socket | None:
    """The debug address's socket when metrics are on (``http.debug``), else None."""
    if not metrics.enabled(config):
        if config.http.debug.addr:
            log.warning(
                "http.debug.addr is set without http.debug.prometheus.enabled: Dockyard's "
                "debug address serves only Prometheus metrics, so it is not opened"
            )
        elif config.http.debug.prometheus.enabled:
            log.warning(
                "http.debug.prometheus.enabled needs http.debug.addr, the address the "
                "metrics are served on; no metrics are served"
            )
        return None
    address = config.http.debug.addr or ""
    try:
        sock = _tcp_socket(address, reuse_port=False)
    except (ValueError, OSError) as error:
        raise OSError(f"http.debug.addr {address}: {error}") from error
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _tcp_socket(addr: str, reuse_port: bool) -> socket.socket:
    host, port = parse_addr(addr)
    if host is None:
        # Go's ":5000" listens on every address, IPv6 and IPv4 alike.
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address: tuple[str, int] = ("::", port)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("0.0.0.0", port)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (host, port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def drain_timeout(config: Config) -> float:
    """Seconds requests in flight get after SIGTERM (``http.draintimeout``)."""
    drain = config.http.draintimeout
    if drain is None:
        return DEFAULT_DRAIN_TIMEOUT
    return max(drain.total_seconds(), 0.0)


def run_worker(
    config: Config,
    sock: socket.socket,
    index: int,
    debug_sock: socket.socket | None = None,
    metrics_dir: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain. ``debug_sock``: also serve this process's
    metrics there (one worker); ``metrics_dir``: write them for the metrics process."""
    from dockyard.api import observe
    from dockyard.api.app import create_app

    process_metrics = metrics.activate(metrics_dir) if metrics.enabled(config) else None
    app = create_app(config, background=index == 0)
    if debug_sock is not None and process_metrics is not None:
        debug = metrics.debug_app(
            metrics.metrics_path(config), metrics.collector_for(process_metrics)
        )
        app.cleanup_ctx.append(_debug_site(debug_sock, debug))
    prefix = "/" + config.http.prefix.strip("/") if config.http.prefix.strip("/") else ""
    activity = app[observe.ACTIVITY]
    # Called when each response has been sent: the access line (unless disabled), the
    # request's metrics, and the end of its activity, which draining waits for.
    logger_class = observe.request_logger(
        prefix, not config.log.accesslog.disabled, process_metrics, activity
    )
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config)) as runner:
            runner.run(
                _serve(
                    app,
                    sock,
                    # http.tls: each worker loads the certificate itself (None: plain HTTP).
                    server_ssl_context(config.http.tls),
                    logger_class,
                    activity,
                    drain_timeout(config),
                )
            )
    finally:
        # Lines logged in the loop's last turn are still waiting (TurnBatchingHandler),
        # and a worker ends with os._exit, which skips logging's own flush at exit.
        for handler in logging.getLogger().handlers:
            handler.flush()


async def _serve(
    app: web.Application,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    logger_class: type[AbstractAccessLogger],
    activity: Activity,
    drain: float,
) -> None:
    from dockyard.api import observe

    runner = web.AppRunner(
        app,
        handle_signals=False,
        # By the time aiohttp's own shutdown runs, the drain is over: what is left is
        # idle keep-alive connections, or requests that overran the drain.
        shutdown_timeout=1.0,
        access_log=observe.access_logger(),
        access_log_class=logger_class,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ssl_context, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await site.start()
        await stop.wait()
        # No new connections; the requests in flight (an upload still receiving its
        # body included) get up to the drain timeout to finish.
        await site.stop()
        if not await activity.wait_idle(drain):
            log.warning(
                "%d request(s) still in flight after draining for %.1fs; cancelling",
                activity.count,
                drain,
            )
    finally:
        await runner.cleanup()


def _debug_site(
    sock: socket.socket, debug: web.Application
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The debug listener inside a worker's event loop (when there is one worker)."""

    async def site(_app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(debug, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield
        await runner.cleanup()

    return site


def run_metrics_process(config: Config, sock: socket.socket, directory: str) -> None:
    """Serve the sum of every worker's metrics on the debug address."""
    collect = metrics.multiprocess_collector(directory)
    web.run_app(
        metrics.debug_app(metrics.metrics_path(config), collect),
        sock=sock,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
    )


def event_loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop each worker runs (``dockyard.eventloop``)."""
    if config.dockyard.eventloop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def worker_count(config: Config) -> int:
    return max(config.dockyard.workers or os.cpu_count() or 1, 1)


def serve(config: Config) -> None:
    workers = worker_count(config)
    # Before any thread exists, so every worker inherits the limit.
    limit_malloc_arenas()
    # Several TCP workers each listen on their own SO_REUSEPORT socket, so the kernel
    # spreads connections evenly; one shared socket would let the busiest worker win
    # most accepts. The parent's socket is bound but never listens: it only holds the
    # port and reports a bad address before any worker starts.
    shared = workers == 1 or config.http.net == "unix"
    if not shared:
        # SO_REUSEPORT lets any process of the same user bind the port too: a second
        # server started on it would silently take part of the connections. A plain bind
        # first refuses a taken port, as Distribution's does.
        bind(config, listen=False).close()
    sock = bind(config, reuse_port=not shared, listen=shared)
    debug_sock = bind_debug(config)
    log.info(
        "listening on %s with %d worker%s",
        config.http.addr,
        workers,
        "" if workers == 1 else "s",
    )
    if debug_sock is not None:
        log.info("metrics on %s%s", config.http.debug.addr, metrics.metrics_path(config))
    if workers == 1:
        run_worker(config, sock, 0, debug_sock=debug_sock)
        log.info("stopped")
        return
    supervise(config, sock, workers, debug_sock)


def supervise(
    config: Config, sock: socket.socket, workers: int, debug_sock: socket.socket | None
) -> None:
    """Fork the workers, then become their small parent (see :mod:`dockyard.supervisor`)."""
    # Each worker writes its metrics to files here; the metrics process sums them.
    metrics_dir = tempfile.mkdtemp(prefix="dockyard-metrics-") if debug_sock else None
    config_fd = os.memfd_create("dockyard-config", 0)
    os.write(config_fd, pickle.dumps(config))
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    children: dict[int, int] = {}
    indexes = list(range(workers)) + ([METRICS_PROCESS] if debug_sock is not None else [])
    for index in indexes:
        pid = os.fork()
        if pid == 0:
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                os.close(config_fd)
                start_worker(config, index, sock, debug_sock, metrics_dir)
            finally:
                os._exit(0)
        children[pid] = index
    plan = WorkerPlan(
        children=children,
        listen_fd=sock.fileno(),
        debug_fd=None if debug_sock is None else debug_sock.fileno(),
        metrics_dir=metrics_dir,
        config_fd=config_fd,
        drain=drain_timeout(config),
        log_settings=(config.log.level, config.log.formatter, dict(config.log.fields)),
    )
    supervisor = Supervisor(plan, package_root())
    supervisor.become_small()
    supervisor.run()


def start_worker(
    config: Config,
    index: int,
    listener: socket.socket,
    debug_sock: socket.socket | None,
    metrics_dir: str | None,
) -> None:
    """Serve as worker ``index`` (or the metrics process) until stopped."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    if index == METRICS_PROCESS:
        listener.close()
        assert debug_sock is not None and metrics_dir is not None
        run_metrics_process(config, debug_sock, metrics_dir)
        return
    if debug_sock is not None:
        debug_sock.close()
    sock = listener
    if config.http.net != "unix":
        listener.close()
        sock = bind(config, reuse_port=True)
    run_worker(config, sock, index, metrics_dir=metrics_dir)


def run_replacement(encoded: str) -> None:
    """A worker started by the parent in place of one that died."""
    limit_malloc_arenas()
    replacement = Replacement.decode(encoded)
    plan = replacement.plan
    size = os.fstat(plan.config_fd).st_size
    config: Config = pickle.loads(os.pread(plan.config_fd, size, 0))
    os.close(plan.config_fd)
    setup_logging(config.log.level, config.log.formatter, dict(config.log.fields))
    if plan.metrics_dir is not None and replacement.index != METRICS_PROCESS:
        # The dead worker's share of the live gauges goes (its counters stay).
        metrics.forget_process(plan.metrics_dir, replacement.predecessor)
    listener = socket.socket(fileno=plan.listen_fd)
    debug_sock = None if plan.debug_fd is None else socket.socket(fileno=plan.debug_fd)
    try:
        start_worker(config, replacement.index, listener, debug_sock, plan.metrics_dir)
    finally:
        os._exit(0)
