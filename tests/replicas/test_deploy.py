"""compose.yaml's scale-out profile is wired together consistently.

Docker is not run here; compose.yaml is read with PyYAML (anchors and merge keys as
Compose reads them), ``${VAR:-default}`` taken at its default, and each piece checked
against the others: nginx's upstream names the replica services on the port their
configuration listens on, the replicas' configuration (deploy/registry.yml, read by
Dockyard's own loader with the service's environment) points at the redis and minio
services and the bucket the profile creates, and the default ``docker compose up`` is
untouched. The same two deploy files run on real processes in the other tests here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.config.load import load_config
from tests.replicas.harness import NGINX_CONF, REGISTRY_CONF, ROOT, placeholders, render

COMPOSE = ROOT / "compose.yaml"
PROFILE = "scale-out"
CONFIG_MOUNT = "/etc/docker/registry/config.yml"
TEMPLATES = "/etc/nginx/templates/"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}``, with every variable unset; ``$$`` is one ``$``."""
    if isinstance(value, str):
        text = INTERPOLATION.sub(lambda m: m.group(2) or "", value)
        return text.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return interpolate(document)  # type: ignore[no-any-return]


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def in_profile(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services(compose).items()
        if PROFILE in service.get("profiles", [])
    }


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        found[container] = host
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {key: str(value) for key, value in env.items()}


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run deploy/registry.yml."""
    return {
        name: service
        for name, service in in_profile(compose).items()
        if mounts(service).get(CONFIG_MOUNT) == "./deploy/registry.yml"
    }


def balancer(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [
        (name, service)
        for name, service in in_profile(compose).items()
        if any(path.startswith(TEMPLATES) for path in mounts(service))
    ]
    assert len(found) == 1, found
    return found[0]


def option(command: list[str], flag: str, default: str) -> str:
    return command[command.index(flag) + 1] if flag in command else default


def test_default_up_is_registry_and_ui_only(compose: dict[str, Any]) -> None:
    default = {name for name, s in services(compose).items() if not s.get("profiles")}
    assert default == {"registry", "ui"}
    assert services(compose)["registry"]["ports"] == ["5000:5000"]
    assert services(compose)["ui"]["ports"] == ["8080:8080"]
    # The scale-out profile's published ports do not collide with the default ones.
    published = {
        port.split(":")[0]
        for service in services(compose).values()
        for port in service.get("ports", [])
    }
    count = sum(len(service.get("ports", [])) for service in services(compose).values())
    assert len(published) == count


def test_profile_has_replicas_redis_s3_and_nginx(compose: dict[str, Any]) -> None:
    profile = in_profile(compose)
    assert len(replicas(compose)) >= 2
    images = {name: service.get("image", "") for name, service in profile.items()}
    assert any("redis" in image for image in images.values())
    assert any("minio/minio" in image for image in images.values())
    assert "nginx" in balancer(compose)[1]["image"]
    for name in replicas(compose):
        assert images[name] == "dockyard:latest"
        assert profile[name]["build"] == "."


def test_nginx_upstream_names_the_replica_services(compose: dict[str, Any]) -> None:
    name, lb = balancer(compose)
    template_path = next(p for p in mounts(lb) if p.startswith(TEMPLATES))
    assert mounts(lb)[template_path] == "./deploy/nginx.conf"
    assert template_path.endswith(".conf.template")
    env = environment(lb)
    template = NGINX_CONF.read_text()
    names = placeholders(template)
    assert set(names) <= set(env), f"{set(names) - set(env)} not set for {name}"
    # The image substitutes only variables matching NGINX_ENVSUBST_FILTER: all of ours,
    # and none of nginx's own $variables (lower case) can be an environment variable.
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], n) for n in names)
    nginx_variables = nginx_variables_of(template)
    assert nginx_variables and all(v == v.lower() for v in nginx_variables), nginx_variables
    assert not nginx_variables & set(env)

    upstream = sorted(env[n] for n in names if n.startswith("DOCKYARD_REPLICA_"))
    replica_names = replicas(compose)
    expected = []
    for replica, service in replica_names.items():
        config = load_replica(service)
        port = config.http.addr.rpartition(":")[2]
        expected.append(f"{replica}:{port}")
    assert upstream == sorted(expected)
    # nginx starts once every replica is healthy (it resolves the names at start).
    for replica in replica_names:
        assert lb["depends_on"][replica] == {"condition": "service_healthy"}
    # What clients reach: the published port is the one the server listens on.
    listen = env["DOCKYARD_LISTEN"]
    assert [port.split(":")[1] for port in lb["ports"]] == [listen]
    rendered = render(template, env)
    for address in expected:
        assert f"server {address} " in rendered


def nginx_variables_of(template: str) -> set[str]:
    """nginx's own ``$variables`` in the template (comments and placeholders aside)."""
    without_comments = "\n".join(line.split("#", 1)[0] for line in template.splitlines())
    directives = re.sub(r"\$\{DOCKYARD_[A-Z0-9_]+\}", "", without_comments)
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", directives))


def load_replica(service: dict[str, Any]) -> Any:
    """deploy/registry.yml as Dockyard reads it inside that service's container."""
    loaded = load_config(str(REGISTRY_CONF), environ=environment(service))
    assert loaded.warnings == []
    return loaded.config


def test_replicas_point_at_the_redis_and_s3_services(compose: dict[str, Any]) -> None:
    profile = in_profile(compose)
    redis_name = next(n for n, s in profile.items() if "redis" in s.get("image", ""))
    minio_name = next(n for n, s in profile.items() if "minio/minio" in s.get("image", ""))
    redis_port = option(profile[redis_name]["command"], "--port", "6379")
    minio_port = option(profile[minio_name]["command"], "--address", ":9000").rpartition(":")[2]
    minio_env = environment(profile[minio_name])
    bucket_makers = [
        (name, service)
        for name, service in profile.items()
        if "mc mb" in " ".join(service.get("command", []))
    ]
    assert len(bucket_makers) == 1
    maker_name, maker = bucket_makers[0]
    script = " ".join(maker["command"])
    alias = re.search(r"mc alias set (\S+) (\S+)", script)
    assert alias is not None, script
    assert alias.group(2) == f"http://{minio_name}:{minio_port}"
    made = re.search(r"mc mb (?:--ignore-existing )?(\S+)", script)
    assert made is not None and made.group(1).startswith(alias.group(1) + "/")
    bucket = made.group(1).split("/", 1)[1]
    assert maker["depends_on"][minio_name] == {"condition": "service_healthy"}
    # The credentials the bucket is made with are the store's own.
    words = shlex.split(script.replace("&&", ";"))
    user, password = words[words.index(alias.group(2)) + 1 : words.index(alias.group(2)) + 3]
    maker_env = environment(maker)
    assert maker_env[user.lstrip("$")] == minio_env["MINIO_ROOT_USER"]
    assert maker_env[password.lstrip("$")] == minio_env["MINIO_ROOT_PASSWORD"]

    collecting = []
    for name, service in replicas(compose).items():
        config = load_replica(service)
        s3 = config.storage.s3
        assert config.storage.driver_name == "s3", name
        assert s3.regionendpoint == f"http://{minio_name}:{minio_port}", name
        assert s3.bucket == bucket, name
        assert s3.accesskey == minio_env["MINIO_ROOT_USER"], name
        assert s3.secretkey == minio_env["MINIO_ROOT_PASSWORD"], name
        # Clients outside Compose cannot reach minio:9000, so no pre-signed redirects.
        assert config.storage.redirect.disable, name
        assert config.storage.delete.enabled, name
        assert config.storage.cache.blobdescriptor == "redis", name
        assert config.redis is not None, name
        assert (config.redis.host, str(config.redis.port)) == (redis_name, redis_port), name
        assert config.http.addr == ":5000", name
        if config.dockyard.gc.enabled:
            collecting.append(name)
        assert service["depends_on"][redis_name] == {"condition": "service_healthy"}, name
        assert service["depends_on"][maker_name] == {
            "condition": "service_completed_successfully"
        }, name
    # Scheduled collection on exactly one replica.
    assert len(collecting) == 1, collecting
    # Every replica has the same shared secret (what registry:2 replicas need).
    secrets = {environment(s).get("REGISTRY_HTTP_SECRET") for s in replicas(compose).values()}
    assert len(secrets) == 1 and None not in secrets


def test_envsubst_renders_the_template_as_the_tests_do(tmp_path: Path) -> None:
    """What the nginx image (and the README's command) does with deploy/nginx.conf is
    what the tests' own rendering does."""
    template = NGINX_CONF.read_text()
    names = placeholders(template)
    values = {name: f"value-of-{name.lower()}" for name in names}
    result = subprocess.run(
        ["envsubst", " ".join(f"${{{name}}}" for name in names)],
        input=template,
        capture_output=True,
        text=True,
        env={**values, "PATH": "/usr/bin:/bin", "host": "not-an-nginx-variable"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render(template, values)
    assert "$http_host" in result.stdout and "${" not in result.stdout
