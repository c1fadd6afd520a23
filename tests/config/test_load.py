"""Distribution's config.yml, read as Distribution reads it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dockyard.config import ConfigError, load_config, parse_go_duration

# The user's file from the how-to, verbatim.
SEED_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""

# Debian's /etc/docker/registry/config.yml (docker-registry 2.8.2+ds1-1).
DEBIAN_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: basic-realm
    path: /etc/docker/registry
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


def test_the_seed_config_is_accepted_as_is(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, SEED_CONFIG), environ={})
    config = loaded.config
    assert loaded.warnings == []
    assert config.version == "0.1"
    assert config.log.fields == {"service": "registry"}
    assert config.storage.driver_name == "filesystem"
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}
    assert config.storage.delete.enabled is True
    assert config.storage.cache.blobdescriptor == "inmemory"
    assert config.http.addr == ":5000"
    assert config.http.headers == {"X-Content-Type-Options": ["nosniff"]}
    assert config.health.storagedriver.enabled is True
    assert config.health.storagedriver.interval == timedelta(seconds=10)
    assert config.health.storagedriver.threshold == 3


def test_debians_config_is_accepted(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, DEBIAN_CONFIG), environ={})
    assert loaded.config.storage.driver_params["rootdirectory"] == "/var/lib/docker-registry"
    assert isinstance(loaded.warnings, list)


def test_embedded_defaults_are_registry2s_image_config() -> None:
    config = load_config(None, environ={}).config
    assert config.storage.driver_name == "filesystem"
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}
    assert config.http.addr == ":5000"
    assert config.storage.delete.enabled is False
    assert config.http.headers == {"X-Content-Type-Options": ["nosniff"]}
    assert config.storage.maintenance.uploadpurging.enabled is True
    assert config.storage.maintenance.uploadpurging.age == timedelta(hours=168)
    assert config.catalog.maxentries == 1000


def test_environment_overrides(tmp_path: Path) -> None:
    environ = {
        "REGISTRY_STORAGE_DELETE_ENABLED": "false",
        "REGISTRY_HTTP_ADDR": ":5001",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/srv/registry",
        "REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL": "1m30s",
        "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD": "5",
        "REGISTRY_LOG_LEVEL": "debug",
        "REGISTRY_HTTP_HEADERS_X-Frame-Options": "DENY",
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, SEED_CONFIG), environ=environ).config
    assert config.storage.delete.enabled is False
    assert config.http.addr == ":5001"
    assert config.storage.driver_params == {"rootdirectory": "/srv/registry"}
    assert config.health.storagedriver.interval == timedelta(seconds=90)
    assert config.health.storagedriver.threshold == 5
    assert config.log.level == "debug"
    assert config.http.headers["X-Frame-Options"] == ["DENY"]
    assert config.http.headers["X-Content-Type-Options"] == ["nosniff"]


def test_an_environment_variable_for_no_key_warns(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, SEED_CONFIG), environ={"REGISTRY_HTTP_ADRR": ":1"})
    assert loaded.warnings == ["config: environment variable REGISTRY_HTTP_ADRR names no known key"]


def test_unsupported_keys_warn_once_each_with_their_line(tmp_path: Path) -> None:
    text = SEED_CONFIG + "notifications:\n  endpoints: []\nproxy:\n  remoteurl: https://x\n"
    warnings = load_config(write(tmp_path, text), environ={}).warnings
    assert len(warnings) == 2
    assert warnings[0].startswith("config: notifications is not supported by Dockyard yet")
    assert warnings[0].endswith("config.yml:21")
    assert warnings[1].startswith("config: proxy is not supported by Dockyard yet")


def test_a_misspelt_key_warns_with_its_line(tmp_path: Path) -> None:
    text = SEED_CONFIG.replace("  delete:\n", "  delet:\n")
    warnings = load_config(write(tmp_path, text), environ={}).warnings
    assert len(warnings) == 1
    assert "unknown key storage.delet" in warnings[0] and warnings[0].endswith("config.yml:6")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 0.1\nstorage: [1\n", "config.yml:3:1:"),
        (
            SEED_CONFIG.replace("enabled: true\n  cache", "enabled: maybe\n  cache"),
            "config.yml:7: storage.delete.enabled",
        ),
        (
            SEED_CONFIG.replace("threshold: 3", "threshold: many"),
            "config.yml:20: health.storagedriver.threshold",
        ),
        (
            SEED_CONFIG.replace("interval: 10s", "interval: soon"),
            "config.yml:19: health.storagedriver.interval",
        ),
        (SEED_CONFIG.replace("version: 0.1", "version: 0.2"), "version must be 0.1"),
        (
            SEED_CONFIG.replace("  filesystem:", "  inmemory: {}\n  filesystem:"),
            "exactly one driver",
        ),
        (
            SEED_CONFIG.replace(
                "  filesystem:\n    rootdirectory: /var/lib/registry\n", "  s3:\n    bucket: b\n"
            ),
            "storage driver 's3' is not supported",
        ),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_malformed_files_stop_with_file_line_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ={})
    assert expected in str(error.value)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(str(tmp_path / "absent.yml"), environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("168h", 168 * 3600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("0", 0),
        (10_000_000_000, 10),
    ],
)
def test_go_durations(text: str | int, seconds: float) -> None:
    assert parse_go_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1h 2m", True, None])
def test_invalid_go_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)
