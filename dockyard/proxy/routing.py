"""Which upstream a repository mirrors: by the longest matching name prefix."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from dockyard.config import Config
from dockyard.config.model import ProxyUpstream
from dockyard.proxy.upstream import UpstreamClient

DOCKER_HUB_HOSTS = (
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
)


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    client: UpstreamClient | None  # None: a local area that takes pushes
    ttl: float  # seconds; 0 or less: never expires, tags re-validated on every pull
    library: bool


@dataclass(frozen=True, slots=True)
class Target:
    """A repository served from an upstream: its local and its upstream name."""

    route: Route
    name: str
    remote: str

    @property
    def client(self) -> UpstreamClient:
        assert self.route.client is not None
        return self.route.client


def _is_docker_hub(url: str) -> bool:
    return (urlsplit(url).hostname or "") in DOCKER_HUB_HOSTS


def routes_of(config: Config) -> list[Route]:
    entries = list(config.dockyard.proxy)
    if config.proxy is not None and config.proxy.remoteurl:
        # Distribution's single section: every repository, under its own name.
        entries.append(
            ProxyUpstream(
                prefix="",
                remoteurl=config.proxy.remoteurl,
                username=config.proxy.username,
                password=config.proxy.password,
                ttl=config.proxy.ttl,
                library=False,
            )
        )
    routes = []
    seen: set[str] = set()
    for entry in entries:
        if entry.prefix in seen:
            continue  # the first entry for a prefix wins
        seen.add(entry.prefix)
        client = None
        if entry.remoteurl is not None:
            client = UpstreamClient(
                entry.remoteurl,
                entry.username,
                entry.password,
                entry.cafile,
                entry.insecureskipverify,
            )
        library = entry.library
        if library is None:
            library = entry.remoteurl is not None and _is_docker_hub(entry.remoteurl)
        routes.append(Route(entry.prefix, client, entry.ttl.total_seconds(), library))
    # Longest prefix first, so "docker.io/library" wins over "docker.io" and over "".
    routes.sort(key=lambda route: len(route.prefix), reverse=True)
    return routes


def find_target(routes: list[Route], name: str) -> Target | None:
    for route in routes:
        if route.prefix == "":
            rest = name
        elif name.startswith(route.prefix + "/"):
            rest = name[len(route.prefix) + 1 :]
        else:
            continue
        if route.client is None:
            return None
        if route.library and "/" not in rest:
            rest = f"library/{rest}"
        return Target(route, name, rest)
    return None
