"""The proxy sections as the loader reads them, and how they route repositories."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dockyard.config import ConfigError, load_config
from dockyard.proxy.routing import find_target, routes_of


def load(tmp_path: Path, text: str, **environ: str) -> tuple[object, list[str]]:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nstorage:\n  inmemory:\n" + text)
    loaded = load_config(str(path), environ=environ)
    return loaded.config, loaded.warnings


def test_distributions_proxy_section_mirrors_every_repository(tmp_path: Path) -> None:
    config, warnings = load(
        tmp_path,
        "proxy:\n  remoteurl: https://registry-1.docker.io\n  username: u\n  password: p\n",
    )
    assert warnings == []
    assert config.proxy.ttl == timedelta(hours=168)  # type: ignore[attr-defined]
    routes = routes_of(config)  # type: ignore[arg-type]
    target = find_target(routes, "library/nginx")
    assert target is not None
    # Clients of a Distribution mirror name Docker Hub's images in full already.
    assert target.remote == "library/nginx"
    assert find_target(routes, "nginx").remote == "nginx"  # type: ignore[union-attr]


def test_environment_overrides_reach_the_proxy_section(tmp_path: Path) -> None:
    config, _ = load(
        tmp_path,
        "",
        REGISTRY_PROXY_REMOTEURL="http://127.0.0.1:5001",
        REGISTRY_PROXY_TTL="30m",
    )
    assert config.proxy.remoteurl == "http://127.0.0.1:5001"  # type: ignore[attr-defined]
    assert config.proxy.ttl == timedelta(minutes=30)  # type: ignore[attr-defined]


def test_upstreams_by_prefix(tmp_path: Path) -> None:
    config, warnings = load(
        tmp_path,
        "dockyard:\n"
        "  proxy:\n"
        "    - prefix: docker.io\n"
        "      remoteurl: https://registry-1.docker.io\n"
        "      ttl: 24h\n"
        "    - prefix: docker.io/ours\n"
        "      local: true\n"
        "    - prefix: ghcr.io/\n"
        "      remoteurl: https://ghcr.io\n",
    )
    assert warnings == []
    routes = routes_of(config)  # type: ignore[arg-type]
    hub = find_target(routes, "docker.io/nginx")
    assert hub is not None and hub.remote == "library/nginx" and hub.route.ttl == 86400
    assert find_target(routes, "docker.io/bitnami/redis").remote == "bitnami/redis"  # type: ignore[union-attr]
    assert find_target(routes, "docker.io/ours/app") is None
    assert find_target(routes, "docker.iox/app") is None
    ghcr = find_target(routes, "ghcr.io/owner/tool")
    assert ghcr is not None and ghcr.remote == "owner/tool"
    assert find_target(routes, "ghcr.io/tool").remote == "tool"  # type: ignore[union-attr]
    assert find_target(routes, "elsewhere/app") is None


@pytest.mark.parametrize(
    "entry",
    [
        "    - prefix: a\n",
        "    - prefix: a\n      local: true\n      remoteurl: http://x\n",
        "    - prefix: a\n      remoteurl: http://x\n      remoteURL: http://y\n",
    ],
)
def test_an_entry_must_say_where_its_content_comes_from(tmp_path: Path, entry: str) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, "dockyard:\n  proxy:\n" + entry)
