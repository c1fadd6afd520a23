"""Distribution's config.yml, read as Distribution reads it."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from dockyard.config import Config, ConfigError, load_config, load_config_apart, parse_go_duration
from dockyard.config.load import UNSUPPORTED_KEYS
from dockyard.config.model import Section
from dockyard.schema import field_types

# The user's file from the how-to (seed/000_4a7e8e7f0e51b337.txt), verbatim.
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

# Debian's /etc/docker/registry/config.yml (package docker-registry 2.8.2), verbatim.
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

MINIMAL = "version: 0.1\nstorage:\n  inmemory:\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str, **environ: str) -> tuple[Config, list[str]]:
    loaded = load_config(write(tmp_path, text), environ=environ)
    return loaded.config, loaded.warnings


def load_error(tmp_path: Path, text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ=environ)
    return str(error.value)


# --- the files users have ---------------------------------------------------------------


def test_the_seed_config_is_accepted_as_is(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, SEED_CONFIG)
    assert warnings == []
    assert config.version == "0.1"
    assert config.log.level == "info"
    assert config.log.formatter == "text"
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
    assert config.auth is None


def test_debians_config_is_accepted(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, DEBIAN_CONFIG)
    assert warnings == []
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/docker-registry"}
    assert config.storage.delete.enabled is True
    assert config.auth is not None and config.auth.htpasswd is not None
    assert config.auth.htpasswd.realm == "basic-realm"
    assert config.auth.htpasswd.path == "/etc/docker/registry"
    assert config.auth.token is None and config.auth.silly is None


def test_embedded_defaults_are_the_registry2_images_config() -> None:
    loaded = load_config(None, environ={})
    config = loaded.config
    assert loaded.warnings == []
    assert config.version == "0.1"
    assert config.storage.driver_name == "filesystem"
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}
    assert config.storage.delete.enabled is False
    assert config.storage.cache.blobdescriptor == "inmemory"
    assert config.http.addr == ":5000"
    assert config.http.net == "tcp"
    assert config.http.prefix == ""
    assert config.http.headers == {"X-Content-Type-Options": ["nosniff"]}
    assert config.log.fields == {"service": "registry"}
    assert config.log.level == "info"
    assert config.health.storagedriver.enabled is True
    assert config.health.storagedriver.interval == timedelta(seconds=10)
    assert config.health.storagedriver.threshold == 3
    purging = config.storage.maintenance.uploadpurging
    assert (purging.enabled, purging.age, purging.interval, purging.dryrun) == (
        True,
        timedelta(hours=168),
        timedelta(hours=24),
        False,
    )
    assert config.storage.maintenance.readonly.enabled is False
    assert config.catalog.maxentries == 1000
    assert config.auth is None
    assert config.dockyard.ui.enabled is True
    assert config.dockyard.workers is None
    assert config.dockyard.eventloop == "asyncio"


def test_distributions_defaults_for_what_a_file_leaves_out(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, "version: 0.1\nstorage:\n  filesystem:\n")
    assert warnings == []
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}
    assert config.storage.delete.enabled is False
    assert config.storage.cache.blobdescriptor is None
    assert config.storage.redirect.disable is False
    assert config.storage.tag.concurrencylimit is None
    assert config.http.addr == ":5000"
    assert config.http.headers == {}
    assert config.http.relativeurls is False
    assert config.http.draintimeout is None
    assert config.http.tls.certificate is None and config.http.tls.clientcas == []
    assert config.http.debug.prometheus.path == "/metrics"
    assert config.http.http2.disabled is False
    assert config.log.accesslog.disabled is False
    assert config.health.storagedriver.enabled is False
    assert config.health.storagedriver.threshold == 1  # one failure, Distribution's default
    assert config.health.file == [] and config.health.http == [] and config.health.tcp == []
    assert config.storage.maintenance.uploadpurging.enabled is True


def test_a_config_built_in_code_has_the_embedded_storage() -> None:
    config = Config()
    assert config.storage.driver_name == "filesystem"
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}


def test_registry_configuration_path_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(None, environ={"REGISTRY_CONFIGURATION_PATH": path}).config
    assert config.storage.driver_name == "inmemory"


def test_shorthands_and_empty_sections(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, "version: 0.1\nstorage: inmemory\nhttp:\nlog:\nauth:\n")
    assert warnings == []
    assert config.storage.driver_name == "inmemory"
    assert config.storage.driver_params == {}
    assert config.http.addr == ":5000"
    assert config.auth is None


def test_string_fields_keep_the_text_as_distribution_reads_it(tmp_path: Path) -> None:
    text = MINIMAL + "http:\n  secret: 0123\n  headers:\n    X-Version: [1.10]\n"
    config, _ = load(tmp_path, text)
    assert config.http.secret == "0123"
    assert config.http.headers == {"X-Version": ["1.10"]}


def test_header_names_are_canonical_as_go_sends_them(tmp_path: Path) -> None:
    text = MINIMAL + "http:\n  headers:\n    x-frame-options: DENY\n"
    config, _ = load(tmp_path, text)
    assert config.http.headers == {"X-Frame-Options": ["DENY"]}


def test_log_level_and_formatter(tmp_path: Path) -> None:
    config, _ = load(tmp_path, MINIMAL + "log:\n  level: DEBUG\n  formatter: json\n")
    assert (config.log.level, config.log.formatter) == ("debug", "json")
    assert "log.level: unknown log level 'loud'" in load_error(
        tmp_path, MINIMAL + "log:\n  level: loud\n"
    )
    assert "config.yml:5: log.formatter: unknown log formatter 'xml'" in load_error(
        tmp_path, MINIMAL + "log:\n  formatter: xml\n"
    )


def test_deprecated_names_still_work_and_warn(tmp_path: Path) -> None:
    text = (
        "version: 0.1\nloglevel: debug\nstorage:\n  inmemory:\n  cache:\n    layerinfo: inmemory\n"
    )
    config, warnings = load(tmp_path, text)
    assert config.log.level == "debug"
    assert config.storage.cache.blobdescriptor == "inmemory"
    assert warnings == [
        "config: loglevel is deprecated; use log.level (line 2)",
        "config: storage.cache.layerinfo is deprecated; use storage.cache.blobdescriptor (line 6)",
    ]
    config, _ = load(
        tmp_path, "version: 0.1\nloglevel: debug\nlog:\n  level: error\n" + MINIMAL[13:]
    )
    assert config.log.level == "error"


def test_a_null_auth_type_is_not_an_open_registry(tmp_path: Path) -> None:
    config, _ = load(tmp_path, MINIMAL + "auth:\n  htpasswd:\n")
    assert config.auth is not None and config.auth.htpasswd is not None
    assert config.auth.htpasswd.realm is None  # so that auth set-up refuses it


def test_a_zero_health_interval_is_distributions_ten_seconds(tmp_path: Path) -> None:
    config, _ = load(tmp_path, MINIMAL + "health:\n  storagedriver:\n    interval: 0\n")
    assert config.health.storagedriver.interval == timedelta(seconds=10)


# --- environment overrides ----------------------------------------------------------------


def test_environment_overrides_of_every_kind(tmp_path: Path) -> None:
    config, warnings = load(
        tmp_path,
        SEED_CONFIG,
        REGISTRY_STORAGE_DELETE_ENABLED="false",
        REGISTRY_HTTP_ADDR=":5001",
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="/srv/registry",
        REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL="1m30s",
        REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD="5",
        REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE="1h30m",
        REGISTRY_HTTP_DRAINTIMEOUT="30000000000",
        REGISTRY_LOG_LEVEL="debug",
        REGISTRY_LOG_FIELDS_ENVIRONMENT="staging",
        REGISTRY_CATALOG_MAXENTRIES="50",
        REGISTRY_HTTP_TLS_CLIENTCAS_0="/etc/ca-a.pem",
        REGISTRY_HTTP_TLS_CLIENTCAS_1="/etc/ca-b.pem",
        REGISTRY_DOCKYARD_WORKERS="4",
        UNRELATED="x",
    )
    assert warnings == []
    assert config.storage.delete.enabled is False
    assert config.http.addr == ":5001"
    assert config.storage.driver_params == {"rootdirectory": "/srv/registry"}
    assert config.health.storagedriver.interval == timedelta(seconds=90)
    assert config.health.storagedriver.threshold == 5
    assert config.storage.maintenance.uploadpurging.age == timedelta(minutes=90)
    assert config.http.draintimeout == timedelta(seconds=30)
    assert config.log.level == "debug"
    assert config.log.fields == {"service": "registry", "environment": "staging"}
    assert config.catalog.maxentries == 50
    assert config.http.tls.clientcas == ["/etc/ca-a.pem", "/etc/ca-b.pem"]
    assert config.dockyard.workers == 4


def test_environment_overrides_of_headers(tmp_path: Path) -> None:
    config, _ = load(
        tmp_path,
        SEED_CONFIG,
        **{
            "REGISTRY_HTTP_HEADERS_X-FRAME-OPTIONS": "DENY",
            "REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS": "[nosniff, other]",
        },
    )
    assert config.http.headers == {
        "X-Content-Type-Options": ["nosniff", "other"],
        "X-Frame-Options": ["DENY"],
    }


def test_a_string_field_takes_the_variables_text(tmp_path: Path) -> None:
    config, _ = load(tmp_path, SEED_CONFIG, REGISTRY_HTTP_SECRET="yes", REGISTRY_HTTP_HOST="0x10")
    assert config.http.secret == "yes"
    assert config.http.host == "0x10"


def test_an_empty_variable_restores_the_default(tmp_path: Path) -> None:
    config, _ = load(tmp_path, SEED_CONFIG, REGISTRY_STORAGE_DELETE_ENABLED="")
    assert config.storage.delete.enabled is False


def test_registry_storage_switches_the_driver_as_distribution_does(tmp_path: Path) -> None:
    # Distribution replaces the whole storage section with the named driver, then applies
    # the more specific variables, which sort after it.
    config, _ = load(tmp_path, SEED_CONFIG, REGISTRY_STORAGE="inmemory")
    assert config.storage.driver_name == "inmemory"
    assert config.storage.delete.enabled is False
    config, _ = load(
        tmp_path,
        SEED_CONFIG,
        REGISTRY_STORAGE="filesystem",
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="/data",
        REGISTRY_STORAGE_DELETE_ENABLED="true",
    )
    assert config.storage.driver_params == {"rootdirectory": "/data"}
    assert config.storage.delete.enabled is True


def test_switching_to_a_driver_dockyard_lacks_is_an_error_naming_the_variable(
    tmp_path: Path,
) -> None:
    message = load_error(tmp_path, SEED_CONFIG, REGISTRY_STORAGE="gcs")
    assert message.startswith("environment variable REGISTRY_STORAGE: storage.gcs:")
    assert "not supported by Dockyard yet" in message


def test_an_environment_variable_for_no_key_warns(tmp_path: Path) -> None:
    _, warnings = load(tmp_path, SEED_CONFIG, REGISTRY_HTTP_ADRR=":1", REGISTRY_HTTP_ADDR_PORT="1")
    assert warnings == [
        (
            "config: environment variable REGISTRY_HTTP_ADDR_PORT names no configuration key "
            "and is ignored"
        ),
        "config: environment variable REGISTRY_HTTP_ADRR names no configuration key and is ignored",
    ]


def test_variables_that_are_not_overrides_are_left_alone(tmp_path: Path) -> None:
    # docker-registry-web's settings, which the seed passes to its UI container.
    _, warnings = load(
        tmp_path,
        SEED_CONFIG,
        REGISTRY_URL="http://172.16.1.31:5000/v2",
        REGISTRY_TRUST_ANY_SSL="true",
        REGISTRY_BASIC_AUTH="YWRtaW46YWRtaW4=",
        REGISTRY_NAME="10.0.0.31:5000",
    )
    assert warnings == []


def test_the_version_cannot_be_overridden(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, SEED_CONFIG, REGISTRY_VERSION="0.2")
    assert config.version == "0.1"
    assert warnings == [
        (
            "config: environment variable REGISTRY_VERSION cannot change the configuration "
            "version and is ignored"
        )
    ]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "REGISTRY_STORAGE_DELETE_ENABLED",
            "maybe",
            (
                "environment variable REGISTRY_STORAGE_DELETE_ENABLED: storage.delete.enabled: "
                "Input should be a valid boolean"
            ),
        ),
        (
            "REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL",
            "soon",
            (
                "environment variable REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL: "
                "health.storagedriver.interval: invalid duration 'soon'"
            ),
        ),
        (
            "REGISTRY_CATALOG_MAXENTRIES",
            "[1",
            "environment variable REGISTRY_CATALOG_MAXENTRIES: not a YAML value",
        ),
        (
            "REGISTRY_HTTP_TLS_CLIENTCAS_2",
            "/ca.pem",
            "environment variable REGISTRY_HTTP_TLS_CLIENTCAS_2: index 2 is past the end",
        ),
    ],
)
def test_bad_environment_values_are_errors_naming_the_variable(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    assert expected in load_error(tmp_path, SEED_CONFIG, **{variable: value})


def test_http_debug_metrics_are_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = (
        "version: 0.1\nstorage:\n  inmemory:\nhttp:\n  debug:\n    addr: 127.0.0.1:5001\n"
        "    prometheus:\n      enabled: true\n"
    )
    config, warnings = load(tmp_path, text)
    assert warnings == []
    assert config.http.debug.addr == "127.0.0.1:5001"
    assert config.http.debug.prometheus.enabled is True
    assert config.http.debug.prometheus.path == "/metrics"
    config, warnings = load(
        tmp_path,
        "version: 0.1\nstorage:\n  inmemory:\n",
        REGISTRY_HTTP_DEBUG_ADDR=":5001",
        REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED="true",
        REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH="/m",
        REGISTRY_HTTP_DRAINTIMEOUT="15s",
    )
    assert warnings == []
    assert config.http.debug.addr == ":5001"
    assert config.http.debug.prometheus.enabled is True
    assert config.http.debug.prometheus.path == "/m"
    assert config.http.draintimeout is not None
    assert config.http.draintimeout.total_seconds() == 15


# --- keys Dockyard does not act on, and keys nobody knows ------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key", "line"),
    [
        ("middleware:\n  registry:\n    - name: x\n", "middleware", 2),
        ("validation:\n  disabled: true\n", "validation", 2),
        ("http:\n  tls:\n    letsencrypt:\n      email: a@b.example\n", "http.tls.letsencrypt", 4),
        ("http:\n  h2c:\n    enabled: true\n", "http.h2c", 3),
        ("health:\n  file:\n    - file: /tmp/down\n", "health.file", 3),
        ("health:\n  http:\n    - uri: http://x\n", "health.http", 3),
        ("health:\n  tcp:\n    - addr: x:6379\n", "health.tcp", 3),
        ("log:\n  hooks:\n    - type: mail\n", "log.hooks", 3),
        ("storage:\n  inmemory:\n  tag:\n    concurrencylimit: 8\n", "storage.tag", 4),
        ("storage:\n  filesystem:\n    maxthreads: 50\n", "storage.filesystem.maxthreads", 4),
    ],
)
def test_unsupported_keys_warn_once_each(tmp_path: Path, snippet: str, key: str, line: int) -> None:
    text = "version: 0.1\n" + snippet
    if "storage:" not in snippet:
        text += "storage:\n  inmemory:\n"
    _, warnings = load(tmp_path, text)
    assert warnings == [
        f"config: {key} is not supported by Dockyard yet and is ignored (line {line})"
    ]


def test_a_redis_descriptor_cache_needs_the_redis_section(tmp_path: Path) -> None:
    text = MINIMAL + "  cache:\n    blobdescriptor: redis\n"
    assert "no redis section" in load_error(tmp_path, text)


def test_the_redis_section_as_distribution_2_writes_it(tmp_path: Path) -> None:
    text = MINIMAL + (
        "  cache:\n    blobdescriptor: redis\n    blobdescriptorsize: 500\n"
        "redis:\n  addr: redis.example:6380\n  db: 3\n  dialtimeout: 10ms\n"
        "  readtimeout: 10ms\n  writetimeout: 10ms\n"
        "  pool:\n    maxidle: 16\n    maxactive: 64\n    idletimeout: 300s\n"
        "  tls:\n    enabled: true\n"
    )
    config, warnings = load(tmp_path, text, REGISTRY_REDIS_PASSWORD="secret")
    assert warnings == []
    redis = config.redis
    assert redis is not None
    assert (redis.host, redis.port, redis.db, redis.password) == (
        "redis.example",
        6380,
        3,
        "secret",
    )
    assert redis.max_connections == 64
    assert redis.tls.active
    assert config.storage.cache.blobdescriptorsize == 500


def test_the_redis_section_as_distribution_3_writes_it(tmp_path: Path) -> None:
    text = MINIMAL + "redis:\n  addrs: [127.0.0.1:6379]\n  username: u\n  poolsize: 8\n"
    config, _ = load(tmp_path, text)
    assert config.redis is not None
    assert (config.redis.host, config.redis.port) == ("127.0.0.1", 6379)
    assert config.redis.max_connections == 8
    assert not config.redis.tls.active


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("redis:\n  db: 1\n", "needs addr"),
        ("redis:\n  addrs: [a:1, b:2]\n", "several addresses"),
        ("redis:\n  addr: nohost\n", "host:port"),
    ],
)
def test_a_redis_section_without_one_address_is_an_error(
    tmp_path: Path, section: str, problem: str
) -> None:
    assert problem in load_error(tmp_path, MINIMAL + section)


def test_unsupported_keys_that_ask_for_nothing_need_no_warning(tmp_path: Path) -> None:
    text = MINIMAL + (
        "  tag:\n    concurrencylimit: 0\n"
        "http:\n  h2c:\n    enabled: false\n  debug:\n    prometheus:\n      enabled: false\n"
        "health:\n  file: []\nlog:\n  reportcaller: false\n"
    )
    _, warnings = load(tmp_path, text)
    assert warnings == []


def test_an_unsupported_key_in_the_file_and_the_environment_warns_once(tmp_path: Path) -> None:
    text = MINIMAL + "validation:\n  disabled: true\n"
    _, warnings = load(tmp_path, text, REGISTRY_VALIDATION_DISABLED="true")
    assert warnings == [
        "config: validation is not supported by Dockyard yet and is ignored (line 4)"
    ]
    _, warnings = load(tmp_path, MINIMAL, REGISTRY_VALIDATION_DISABLED="true")
    assert warnings == [
        "config: validation is not supported by Dockyard yet and is ignored"
        " (set by REGISTRY_VALIDATION_DISABLED)"
    ]


def test_the_event_loop_is_uvloop_or_asyncio(tmp_path: Path) -> None:
    config, _ = load(tmp_path, MINIMAL + "dockyard:\n  eventloop: uvloop\n")
    assert config.dockyard.eventloop == "uvloop"
    error = load_error(tmp_path, MINIMAL + "dockyard:\n  eventloop: trio\n")
    assert "unknown event loop 'trio' (uvloop or asyncio)" in error
    assert "dockyard.eventloop" in error


def test_a_storage_driver_dockyard_lacks_is_an_error(tmp_path: Path) -> None:
    text = "version: 0.1\nstorage:\n  gcs:\n    bucket: images\n"
    message = load_error(tmp_path, text)
    assert message.endswith(
        "config.yml:3: storage.gcs: the gcs storage driver is not supported by Dockyard yet "
        "(use filesystem or inmemory or s3)"
    )


def test_every_unsupported_key_is_a_key_distribution_has() -> None:
    for entry in UNSUPPORTED_KEYS:
        model: type[Section] | None = Config
        for part in entry.partition("=")[0].split("."):
            assert model is not None and part in field_types(model), entry
            annotation = field_types(model)[part]
            candidates = [annotation, *getattr(annotation, "__args__", ())]
            model = next(
                (c for c in candidates if isinstance(c, type) and issubclass(c, Section)), None
            )


def test_a_misspelt_key_warns_with_its_line(tmp_path: Path) -> None:
    text = SEED_CONFIG.replace("  delete:\n", "  delet:\n").replace("    threshold", "    treshold")
    config, warnings = load(tmp_path, text + "htpp:\n  addr: :5001\n")
    assert warnings == [
        "config: unknown key storage.delet at line 6",
        "config: unknown key health.storagedriver.treshold at line 20",
        "config: unknown key htpp at line 21",
    ]
    assert config.storage.delete.enabled is False


def test_a_misspelt_driver_parameter_warns(tmp_path: Path) -> None:
    text = "version: 0.1\nstorage:\n  filesystem:\n    rootdir: /srv\n"
    config, warnings = load(tmp_path, text)
    assert warnings == ["config: unknown key storage.filesystem.rootdir at line 4"]
    assert config.storage.driver_params == {"rootdirectory": "/var/lib/registry"}


def test_a_misspelt_driver_is_an_error_naming_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, "version: 0.1\nstorage:\n  filesytem:\n    rootdirectory: /x\n")
    assert "config.yml:2: storage: a storage driver is required" in message
    assert "filesytem is not one" in message


def test_a_key_set_twice_warns(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, SEED_CONFIG + "http:\n  addr: :6000\n")
    assert warnings == ["config: http is set twice, at lines 12 and 21; the second is used"]
    assert config.http.addr == ":6000"


# --- malformed files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 0.1\nstorage: [1\n",
            "config.yml:3:1: expected ',' or ']', but got '<stream end>'",
        ),
        ("version: 0.1\nstorage:\n\tinmemory: {}\n", "config.yml:3:1: found character '\\t'"),
        (
            SEED_CONFIG.replace("enabled: true\n  cache", "enabled: maybe\n  cache"),
            "config.yml:7: storage.delete.enabled: Input should be a valid boolean",
        ),
        (
            SEED_CONFIG.replace("threshold: 3", "threshold: many"),
            "config.yml:20: health.storagedriver.threshold: Input should be a valid integer",
        ),
        (
            SEED_CONFIG.replace("interval: 10s", "interval: soon"),
            "config.yml:19: health.storagedriver.interval: invalid duration 'soon'",
        ),
        (
            SEED_CONFIG.replace("[nosniff]", "{nosniff: true}"),
            "config.yml:15: http.headers.X-Content-Type-Options: Input should be a valid list",
        ),
        (
            SEED_CONFIG.replace("addr: :5000", "addr: :5000\n  net: udp"),
            "config.yml:14: http.net: unknown network 'udp'",
        ),
        (
            SEED_CONFIG.replace("version: 0.1", "version: 0.2"),
            "config.yml:1: version: unsupported version '0.2'",
        ),
        (
            SEED_CONFIG.replace("version: 0.1", "version: 0.10"),
            "config.yml:1: version: unsupported version '0.10'",
        ),
        (SEED_CONFIG.replace("version: 0.1\n", ""), "config.yml: version: missing"),
        ("version: 0.1\nhttp:\n  addr: :5000\n", "config.yml: storage: missing"),
        (
            SEED_CONFIG.replace("  filesystem:", "  inmemory: {}\n  filesystem:"),
            (
                "config.yml:5: storage: exactly one storage driver is allowed, "
                "found inmemory and filesystem"
            ),
        ),
        (
            MINIMAL + "auth:\n  htpasswd: {realm: r, path: /p}\n  silly: {}\n",
            "config.yml:4: auth: exactly one auth type is allowed, found htpasswd and silly",
        ),
        (MINIMAL + "auth:\n  ldap: {}\n", "config.yml:4: auth: unknown auth type ldap"),
        (
            MINIMAL + "  maintenance:\n    uploadpurging: false\n",
            "storage.maintenance.uploadpurging: Input should be a valid dictionary",
        ),
        ("- a\n- b\n", "config.yml: the configuration must be a mapping"),
    ],
)
def test_malformed_files_stop_with_file_line_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = load_error(tmp_path, text)
    assert expected in message
    assert message.startswith(str(tmp_path / "config.yml"))


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = SEED_CONFIG.replace("enabled: true\n  cache", "enabled: maybe\n  cache").replace(
        "threshold: 3", "threshold: many"
    )
    lines = load_error(tmp_path, text).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "storage.delete.enabled",
        "health.storagedriver.threshold",
    ]


def test_a_quoted_version_is_the_same_version(tmp_path: Path) -> None:
    config, _ = load(tmp_path, SEED_CONFIG.replace("version: 0.1", 'version: "0.1"'))
    assert config.version == "0.1"


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absent.yml: No such file"):
        load_config(str(tmp_path / "absent.yml"), environ={})


# --- Go durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("168h", timedelta(hours=168)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        (".5s", timedelta(milliseconds=500)),
        ("2us", timedelta(microseconds=2)),
        ("3µs", timedelta(microseconds=3)),
        ("1m0.5s", timedelta(seconds=60.5)),
        ("-1m", timedelta(minutes=-1)),
        ("+5s", timedelta(seconds=5)),
        ("0", timedelta(0)),
        (10_000_000_000, timedelta(seconds=10)),
        (0, timedelta(0)),
    ],
)
def test_go_durations(value: str | int, expected: timedelta) -> None:
    assert parse_go_duration(value) == expected


@pytest.mark.parametrize(
    "value", ["", "10", "s", "1x", "1h 2m", "1hm", ".s", "10 s", "1d", "9999999999h", True, None]
)
def test_invalid_go_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_go_duration(value)


def test_a_duration_in_the_file_may_be_nanoseconds(tmp_path: Path) -> None:
    config, _ = load(tmp_path, MINIMAL + "http:\n  draintimeout: 5000000000\n")
    assert config.http.draintimeout == timedelta(seconds=5)


def test_list_items_by_index_and_distributions_go_field_names(tmp_path: Path) -> None:
    # Distribution matches variables against its Go field names: health.file is the
    # field FileCheckers, so REGISTRY_HEALTH_FILECHECKERS_0_FILE is how it is set.
    config, warnings = load(
        tmp_path,
        MINIMAL,
        REGISTRY_HEALTH_FILECHECKERS_0_FILE="/tmp/down",
        REGISTRY_HEALTH_FILE_1_FILE="/tmp/gone",
    )
    assert config.health.file == [{"file": "/tmp/down"}, {"file": "/tmp/gone"}]
    assert warnings == [
        (
            "config: health.file is not supported by Dockyard yet and is ignored "
            "(set by REGISTRY_HEALTH_FILECHECKERS_0_FILE)"
        )
    ]


def test_driver_parameters_with_underscores_can_be_overridden(tmp_path: Path) -> None:
    text = "version: 0.1\nstorage:\n  inmemory:\n    max_retries: 1\n"
    config, _ = load(tmp_path, text, REGISTRY_STORAGE_INMEMORY_MAX_RETRIES="5")
    assert config.storage.driver_params == {"max_retries": 5}


# --- read apart, for the serving process ------------------------------------------------

READ_APART = """
import sys
from dockyard.config import ConfigError, load_config_apart
try:
    loaded = load_config_apart(sys.argv[1])
    print(repr(loaded.config.http.addr), loaded.warnings)
except ConfigError as error:
    print("refused:", error)
print(sorted(m for m in ("pydantic", "yaml") if m in sys.modules))
"""


def read_apart(path: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", READ_APART, path], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_read_apart_the_configuration_and_its_warnings_come_back(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_CONFIG + "colour: blue\n")
    assert load_config_apart(path) == load_config(path)
    # The process that asked holds neither the checker nor the YAML reader.
    assert read_apart(path) == [
        "':5000' ['config: unknown key colour at line 21']",
        "[]",
    ]


def test_read_apart_a_bad_file_is_refused_with_the_same_message(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "http:\n  net: udp\n")
    with pytest.raises(ConfigError) as error:
        load_config_apart(path)
    assert str(error.value) == load_error(tmp_path, MINIMAL + "http:\n  net: udp\n")
    assert read_apart(path) == [
        "refused: " + str(error.value),
        "[]",
    ]
