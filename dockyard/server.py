"""Run the registry: one listening socket, one or more worker processes sharing it.

The parent binds the address, then forks the workers; each listens on its own
SO_REUSEPORT socket and the kernel spreads connections among them. Everything a request needs that must be shared (upload
sessions, tags, blobs) lives in storage, so any worker can serve any request. Only the
first worker runs the periodic maintenance jobs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import time

from aiohttp import web

from dockyard.certs import server_ssl_context
from dockyard.config import Config
from dockyard.logs import AccessLogger

log = logging.getLogger("dockyard")


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
        host, port = parse_addr(config.http.addr)
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
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def run_worker(config: Config, sock: socket.socket, index: int) -> None:
    from dockyard.api.app import create_app

    app = create_app(config, background=index == 0)
    access_log = None if config.log.accesslog.disabled else logging.getLogger("dockyard.access")
    web.run_app(
        app,
        sock=sock,
        # http.tls: each worker loads the certificate itself (None: plain HTTP).
        ssl_context=server_ssl_context(config.http.tls),
        access_log=access_log,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=config.http.draintimeout.total_seconds()
        if config.http.draintimeout
        else 60.0,
    )


def worker_count(config: Config) -> int:
    return max(config.dockyard.workers or os.cpu_count() or 1, 1)


def serve(config: Config) -> None:
    workers = worker_count(config)
    # Several TCP workers each listen on their own SO_REUSEPORT socket, so the kernel
    # spreads connections evenly; one shared socket would let the busiest worker win
    # most accepts. The parent's socket is bound but never listens: it only holds the
    # port and reports a bad address before any worker starts.
    shared = workers == 1 or config.http.net == "unix"
    sock = bind(config, reuse_port=not shared, listen=shared)
    log.info(
        "listening on %s with %d worker%s",
        config.http.addr,
        workers,
        "" if workers == 1 else "s",
    )
    if workers == 1:
        run_worker(config, sock, 0)
        return
    Supervisor(config, sock, workers).run()


class Supervisor:
    """Forks the workers, replaces any that dies, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, config: Config, sock: socket.socket, workers: int) -> None:
        self.config = config
        self.sock = sock
        self.workers = workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                sock = self.sock
                if self.config.http.net != "unix":
                    self.sock.close()
                    sock = bind(self.config, reuse_port=True)
                run_worker(self.config, sock, index)
            finally:
                os._exit(0)
        self.children[pid] = index

    def stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.children.pop(pid, None)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(self.workers):
            self.spawn(index)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            if self.stopping:
                continue
            log.error("worker %d (pid %d) exited with status %d; restarting", index, pid, status)
            time.sleep(0.5)
            self.spawn(index)
        sys.exit(0)
