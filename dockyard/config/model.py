"""Distribution's ``config.yml`` as pydantic models, with Distribution's key names.

Only the shape and defaults live here; reading the file, environment overrides and
warnings about keys Dockyard does not act on live in ``load``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(value: Any) -> timedelta:
    """Go's ``time.Duration`` as YAML gives it: ``"1h30m"``, ``"10s"``, or nanoseconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as 10s or 1h30m")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, int | float):
        return timedelta(seconds=value / 1e9)
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as 10s or 1h30m")  # noqa: TRY004 - pydantic reports ValueError
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return timedelta(0)
    position = 0
    seconds = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 10s, 5m, 1h30m)")
    return timedelta(seconds=sign * seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_go_duration)]


class Section(BaseModel):
    # Unknown keys are reported by the loader with their line, not rejected here.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AccessLog(Section):
    disabled: bool = False


class Log(Section):
    level: str = "info"
    formatter: str = "text"
    fields: dict[str, Any] = Field(default_factory=dict)
    accesslog: AccessLog = Field(default_factory=AccessLog)
    reportcaller: bool = False

    @model_validator(mode="after")
    def _check(self) -> Log:
        if self.level.lower() not in (
            "error",
            "warn",
            "warning",
            "info",
            "debug",
            "panic",
            "fatal",
        ):
            raise ValueError(f"unknown log level {self.level!r}")
        if self.formatter not in ("text", "json", "logstash"):
            raise ValueError(f"unknown log formatter {self.formatter!r}")
        return self


class Delete(Section):
    enabled: bool = False


class Cache(Section):
    blobdescriptor: str | None = None
    blobdescriptorsize: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Cache:
        if self.blobdescriptor not in (None, "", "inmemory", "redis"):
            raise ValueError(f"unknown blobdescriptor cache {self.blobdescriptor!r}")
        return self


class Redirect(Section):
    disable: bool = False


class UploadPurging(Section):
    enabled: bool = True
    age: Duration = timedelta(hours=168)
    interval: Duration = timedelta(hours=24)
    dryrun: bool = False


class ReadOnly(Section):
    enabled: bool = False


class Maintenance(Section):
    uploadpurging: UploadPurging = Field(default_factory=UploadPurging)
    readonly: ReadOnly = Field(default_factory=ReadOnly)


class TagOptions(Section):
    concurrencylimit: int | None = None


STORAGE_DRIVERS = ("filesystem", "inmemory", "s3", "gcs", "azure", "swift", "oss")
STORAGE_OPTIONS = ("delete", "cache", "redirect", "maintenance", "tag")


class Storage(Section):
    delete: Delete = Field(default_factory=Delete)
    cache: Cache = Field(default_factory=Cache)
    redirect: Redirect = Field(default_factory=Redirect)
    maintenance: Maintenance = Field(default_factory=Maintenance)
    tag: TagOptions = Field(default_factory=TagOptions)
    driver_name: str = "filesystem"
    driver_params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _pick_driver(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        drivers = [key for key in data if key in STORAGE_DRIVERS]
        if len(drivers) > 1:
            raise ValueError(f"storage must have exactly one driver, found {', '.join(drivers)}")
        if not drivers:
            raise ValueError(f"storage needs a driver: one of {', '.join(STORAGE_DRIVERS)}")
        params = data[drivers[0]] or {}
        if not isinstance(params, dict):
            raise ValueError(f"storage.{drivers[0]} must be a mapping")  # noqa: TRY004 - as above
        rest = {key: value for key, value in data.items() if key != drivers[0]}
        return {**rest, "driver_name": drivers[0], "driver_params": params}


class TLS(Section):
    certificate: str | None = None
    key: str | None = None
    clientcas: list[str] = Field(default_factory=list)
    minimumtls: str | None = None
    ciphersuites: list[str] = Field(default_factory=list)
    letsencrypt: dict[str, Any] | None = None


class HtpasswdAuth(Section):
    realm: str | None = None
    path: str | None = None


class TokenAuth(Section):
    realm: str | None = None
    service: str | None = None
    issuer: str | None = None
    rootcertbundle: str | None = None
    jwks: str | None = None
    autoredirect: bool = False
    autoredirectpath: str | None = None
    signingalgorithms: list[str] = Field(default_factory=list)


class SillyAuth(Section):
    realm: str | None = None
    service: str | None = None


class Auth(Section):
    """Distribution's ``auth``: one of htpasswd, token or silly."""

    htpasswd: HtpasswdAuth | None = None
    token: TokenAuth | None = None
    silly: SillyAuth | None = None

    @model_validator(mode="after")
    def _check(self) -> Auth:
        # An auth type Dockyard does not know must stop start-up: serving without the
        # access control the operator asked for would be worse than not serving.
        unknown = sorted(self.model_extra or {})
        if unknown:
            raise ValueError(f"unknown auth type {', '.join(unknown)} (htpasswd, token or silly)")
        configured = [n for n in ("htpasswd", "token", "silly") if getattr(self, n) is not None]
        if len(configured) > 1:
            raise ValueError(f"auth must name exactly one type, not {', '.join(configured)}")
        return self


class Prometheus(Section):
    enabled: bool = False
    path: str = "/metrics"


class Debug(Section):
    addr: str | None = None
    prometheus: Prometheus = Field(default_factory=Prometheus)


class HTTP2(Section):
    disabled: bool = False


class HTTP(Section):
    addr: str = ":5000"
    net: str = "tcp"
    prefix: str = ""
    host: str | None = None
    secret: str | None = None
    relativeurls: bool = False
    draintimeout: Duration | None = None
    headers: dict[str, list[str]] = Field(default_factory=dict)
    tls: TLS = Field(default_factory=TLS)
    debug: Debug = Field(default_factory=Debug)
    http2: HTTP2 = Field(default_factory=HTTP2)

    @model_validator(mode="after")
    def _check(self) -> HTTP:
        if self.net not in ("tcp", "unix"):
            raise ValueError(f"http.net must be tcp or unix, not {self.net!r}")
        return self


class StorageDriverHealth(Section):
    enabled: bool = False
    interval: Duration = timedelta(seconds=10)
    threshold: int = 3


class Health(Section):
    storagedriver: StorageDriverHealth = Field(default_factory=StorageDriverHealth)
    file: list[dict[str, Any]] = Field(default_factory=list)
    http: list[dict[str, Any]] = Field(default_factory=list)
    tcp: list[dict[str, Any]] = Field(default_factory=list)


class Catalog(Section):
    maxentries: int = 1000


class GarbageCollection(Section):
    """Dockyard's collector; ``enabled`` runs it inside ``dockyard serve`` every ``interval``."""

    enabled: bool = False
    interval: Duration = timedelta(hours=24)
    delay: Duration = timedelta(hours=1)
    settle: Duration = timedelta(seconds=10)
    deleteuntagged: bool = False


class UI(Section):
    """The web UI under ``/ui`` (``dockyard.ui``)."""

    enabled: bool = True
    # No delete buttons nor garbage collection from the page (the API is unaffected).
    readonly: bool = False
    # host[:port] shown in ``docker pull`` commands; unset: http.host, else the host the
    # browser used to reach the page.
    name: str | None = None
    pagesize: int = Field(default=50, ge=5, le=500)


class AccessRule(BaseModel):
    """One ``dockyard.auth.access`` entry; a misspelt key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")
    repositories: list[str]
    users: list[str] = Field(default_factory=list)
    anonymous: bool = False
    actions: list[str]


class TokenService(Section):
    """Dockyard's built-in token server (``/auth/token``)."""

    enabled: bool = False
    key: str | None = None
    certificate: str | None = None
    issuer: str | None = None
    services: list[str] = Field(default_factory=list)
    expiration: Duration = timedelta(minutes=5)


class LoginBackoff(Section):
    free: int = 5
    initial: Duration = timedelta(milliseconds=500)
    maximum: Duration = timedelta(seconds=10)
    window: Duration = timedelta(minutes=15)


class DockyardAuth(Section):
    """Users, access rules and the token service (``dockyard.auth``)."""

    users: str | None = None
    admins: list[str] = Field(default_factory=list)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    access: list[AccessRule] | None = None
    tokenservice: TokenService = Field(default_factory=TokenService)
    backoff: LoginBackoff = Field(default_factory=LoginBackoff)


class Dockyard(Section):
    """Settings Distribution does not have."""

    ui: UI = Field(default_factory=UI)
    auth: DockyardAuth = Field(default_factory=DockyardAuth)
    workers: int | None = None
    gc: GarbageCollection = Field(default_factory=GarbageCollection)


class Config(Section):
    version: str = "0.1"
    log: Log = Field(default_factory=Log)
    storage: Storage = Field(
        default_factory=lambda: Storage.model_validate(
            {"filesystem": {"rootdirectory": "/var/lib/registry"}}
        )
    )
    auth: Auth | None = None
    middleware: dict[str, Any] | None = None
    http: HTTP = Field(default_factory=HTTP)
    notifications: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None
    health: Health = Field(default_factory=Health)
    proxy: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    catalog: Catalog = Field(default_factory=Catalog)
    dockyard: Dockyard = Field(default_factory=Dockyard)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.version != "0.1":
            raise ValueError(f"version must be 0.1, not {self.version!r}")
        return self
