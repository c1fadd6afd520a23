"""Distribution's ``config.yml`` as dataclasses, with Distribution's key names.

Only the shape, types, defaults and checks live here; pydantic applies them when a file
is read (see :mod:`dockyard.schema`), and a process that is handed a configuration
needs neither pydantic nor this module's checks. Reading the file, ``REGISTRY_*``
overrides and the warnings about keys Dockyard does not act on live in ``load``.
Distribution keys that Dockyard does not act on are still modelled (loosely, as
mappings where their inner shape does not matter to us), so that the loader can tell
"Distribution has this, Dockyard does not act on it" from "nobody has this: a typo".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from dockyard.schema import After, Before, Settings
from dockyard.storage.s3 import S3Parameters

# --- Go durations ---------------------------------------------------------------------

# Go's time.ParseDuration: an optional sign, then one or more <number><unit> runs (or a
# bare "0"). "ms" must be tried before "m" and "s" so that "5ms" is five milliseconds.
_DURATION_UNITS = "ns|us|µs|μs|ms|s|m|h"
_DURATION = re.compile(rf"(?:(?:\d+\.?\d*|\.\d+)(?:{_DURATION_UNITS}))+")
_DURATION_PART = re.compile(rf"(\d+\.?\d*|\.\d+)({_DURATION_UNITS})")
_UNIT_NANOSECONDS = MappingProxyType(
    {
        "ns": 1,
        "us": 10**3,
        "µs": 10**3,  # U+00B5 MICRO SIGN
        "μs": 10**3,  # U+03BC GREEK SMALL LETTER MU; Go accepts both
        "ms": 10**6,
        "s": 10**9,
        "m": 60 * 10**9,
        "h": 3600 * 10**9,
    }
)
# A Go Duration is an int64 count of nanoseconds; Distribution cannot hold more.
_MAX_NANOSECONDS = 2**63 - 1
_DURATION_HELP = "a number and a unit (ns, us, ms, s, m, h), e.g. 10s, 1h30m or 500ms"


def _duration_text_nanoseconds(text: str) -> Decimal:
    sign = -1 if text.startswith("-") else 1
    body = text[1:] if text[:1] in ("-", "+") else text
    if body == "0":
        return Decimal(0)
    if not _DURATION.fullmatch(body):
        raise ValueError(f"invalid duration {text!r}: expected {_DURATION_HELP}")
    total = sum(
        (
            Decimal(number) * _UNIT_NANOSECONDS[unit]
            for number, unit in _DURATION_PART.findall(body)
        ),
        Decimal(0),
    )
    return sign * total


def parse_go_duration(value: object) -> timedelta:
    """A Go ``time.Duration`` as Distribution's YAML decoder takes it.

    A string is parsed as Go's ``time.ParseDuration`` does (``"10s"``, ``"1h30m"``,
    ``"500ms"``); a bare number is a count of nanoseconds, because a Duration is an
    integer underneath and that is what the decoder stores.
    """
    if isinstance(value, timedelta):
        return value
    nanoseconds: Decimal | None = None
    if isinstance(value, str):
        nanoseconds = _duration_text_nanoseconds(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        nanoseconds = Decimal(int(value))
    if nanoseconds is None:
        # A ValueError, not a TypeError: pydantic reports only the former as invalid input.
        raise ValueError(f"invalid duration {value!r}: expected {_DURATION_HELP}")
    if abs(nanoseconds) > _MAX_NANOSECONDS:
        raise ValueError(f"duration {value!r} is out of range")
    # timedelta counts microseconds; nothing in a registry needs finer.
    return timedelta(microseconds=int(nanoseconds / 1000))


Duration = Annotated[timedelta, Before(parse_go_duration)]


# --- shared pieces ----------------------------------------------------------------------


@dataclass(kw_only=True)
class Section(Settings):
    """A mapping of Distribution's file.

    Keys nobody knows are dropped here; the loader has already warned about each one
    with its line, which pydantic could not do.
    """

    # Other names ``REGISTRY_*`` variables may use for a key: Distribution matches the
    # variables against its Go field names, which differ from the YAML key in a few
    # places (``health.file`` is the field ``FileCheckers``).
    env_aliases: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # For sections that name one choice among several (``storage`` and ``auth``),
    # Distribution also accepts the bare name (``storage: inmemory``,
    # ``REGISTRY_STORAGE=s3``): that choice with no parameters.
    choices: ClassVar[tuple[str, ...]] = ()


def expand_choice(data: Any, choices: tuple[str, ...]) -> Any:
    """``name`` or ``{name: null}`` as ``{name: {}}``, for sections with ``choices``."""
    if isinstance(data, str):
        return {data: {}}
    if isinstance(data, dict):
        return {
            key: {} if value is None and key in choices else value for key, value in data.items()
        }
    return data


def _canonical_header(name: str) -> str:
    # What Go's http.Header does to every name Distribution sends, so "x-frame-options"
    # from REGISTRY_HTTP_HEADERS_X-FRAME-OPTIONS and "X-Frame-Options" from the file
    # are one header, as they are for Distribution.
    if not name or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


# --- log ----------------------------------------------------------------------------------

LOG_LEVELS = ("panic", "fatal", "error", "warn", "warning", "info", "debug", "trace")
LOG_FORMATTERS = ("text", "json", "logstash")


def _log_level(value: Any) -> Any:
    # Distribution lower-cases the level before checking it.
    if isinstance(value, str):
        level = value.lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r} (error, warn, info or debug)")
        return level
    return value


def _log_formatter(value: str) -> str:
    if value == "":
        return "text"
    if value not in LOG_FORMATTERS:
        raise ValueError(f"unknown log formatter {value!r} (text, json or logstash)")
    return value


@dataclass(kw_only=True)
class AccessLog(Section):
    disabled: bool = False


@dataclass(kw_only=True)
class Log(Section):
    level: Annotated[str, Before(_log_level)] = "info"
    formatter: Annotated[str, After(_log_formatter)] = "text"
    fields: dict[str, Any] = field(default_factory=dict)
    accesslog: AccessLog = field(default_factory=AccessLog)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    reportcaller: bool = False


# --- storage ------------------------------------------------------------------------------

STORAGE_DRIVERS = ("filesystem", "inmemory", "s3", "gcs", "azure", "swift", "oss")
DEFAULT_ROOT_DIRECTORY = "/var/lib/registry"


def _rootdirectory(value: str) -> str:
    if not value:
        raise ValueError("rootdirectory must be a directory path")
    return value


@dataclass(kw_only=True)
class FilesystemParams(Section):
    rootdirectory: Annotated[str, After(_rootdirectory)] = DEFAULT_ROOT_DIRECTORY
    maxthreads: int | None = None


@dataclass(kw_only=True)
class Delete(Section):
    enabled: bool = False


@dataclass(kw_only=True)
class Cache(Section):
    # Any other name is accepted, as Distribution does (it logs an unknown one and caches
    # nothing). "redis" needs the top-level redis section.
    blobdescriptor: str | None = None
    blobdescriptorsize: int | None = None
    # The old name of blobdescriptor, still read by Distribution.
    layerinfo: str | None = None

    def __post_init__(self) -> None:
        if self.blobdescriptor is None and self.layerinfo is not None:
            self.blobdescriptor = self.layerinfo


@dataclass(kw_only=True)
class Redirect(Section):
    # Only object storage drivers redirect (s3: to pre-signed URLs); filesystem and
    # inmemory never do, for Distribution as for Dockyard.
    disable: bool = False


@dataclass(kw_only=True)
class S3Params(S3Parameters, Section):
    """``storage.s3``: Distribution's parameters and defaults (see dockyard.storage.s3)."""


def _positive_interval(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("interval must be positive")
    return value


@dataclass(kw_only=True)
class UploadPurging(Section):
    enabled: bool = True
    age: Duration = timedelta(hours=168)
    interval: Annotated[Duration, After(_positive_interval)] = timedelta(hours=24)
    dryrun: bool = False


@dataclass(kw_only=True)
class ReadOnly(Section):
    enabled: bool = False


@dataclass(kw_only=True)
class Maintenance(Section):
    uploadpurging: UploadPurging = field(default_factory=UploadPurging)
    readonly: ReadOnly = field(default_factory=ReadOnly)


@dataclass(kw_only=True)
class TagOptions(Section):
    concurrencylimit: int | None = None


@dataclass(kw_only=True)
class Storage(Section):
    """Exactly one driver section, plus the options every driver shares."""

    choices: ClassVar[tuple[str, ...]] = STORAGE_DRIVERS

    filesystem: FilesystemParams | None = None
    inmemory: dict[str, Any] | None = None
    s3: S3Params | None = None
    gcs: dict[str, Any] | None = None
    azure: dict[str, Any] | None = None
    swift: dict[str, Any] | None = None
    oss: dict[str, Any] | None = None
    delete: Delete = field(default_factory=Delete)
    cache: Cache = field(default_factory=Cache)
    redirect: Redirect = field(default_factory=Redirect)
    maintenance: Maintenance = field(default_factory=Maintenance)
    tag: TagOptions = field(default_factory=TagOptions)

    @classmethod
    def prepare(cls, data: Any) -> Any:
        data = expand_choice(data, cls.choices)
        if not isinstance(data, dict):
            return data
        drivers = [key for key in data if key in cls.choices]
        if len(drivers) > 1:
            raise ValueError(
                f"exactly one storage driver is allowed, found {' and '.join(drivers)}"
            )
        if not drivers:
            strangers = [str(key) for key in data if key not in cls.__dataclass_fields__]
            found = f"; {', '.join(strangers)} is not one" if strangers else ""
            raise ValueError(
                f"a storage driver is required: one of {', '.join(STORAGE_DRIVERS)}{found}"
            )
        return data

    @property
    def driver_name(self) -> str:
        """The driver section the file has (validation guarantees exactly one)."""
        for name in STORAGE_DRIVERS:
            if getattr(self, name) is not None:
                return name
        raise RuntimeError("storage has no driver; it was built without validation")

    @property
    def driver_params(self) -> dict[str, Any]:
        """The driver's parameters, with filesystem's rootdirectory default filled in.

        For s3, with its defaults, and ``redirect``: whether blob downloads are redirected
        to pre-signed URLs (``redirect.disable`` inverted).
        """
        params = getattr(self, self.driver_name)
        if isinstance(params, FilesystemParams):
            return _set_values(params)
        if isinstance(params, S3Params):
            return {**_set_values(params), "redirect": not self.redirect.disable}
        return dict(params)


def _set_values(params: Section) -> dict[str, Any]:
    return {key: value for key, value in asdict(params).items() if value is not None}


# --- auth ---------------------------------------------------------------------------------

AUTH_TYPES = ("silly", "token", "htpasswd")


@dataclass(kw_only=True)
class SillyAuth(Section):
    realm: str | None = None
    service: str | None = None


@dataclass(kw_only=True)
class TokenAuth(Section):
    realm: str | None = None
    service: str | None = None
    issuer: str | None = None
    rootcertbundle: str | None = None
    jwks: str | None = None
    autoredirect: bool = False
    autoredirectpath: str | None = None
    signingalgorithms: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class HtpasswdAuth(Section):
    realm: str | None = None
    path: str | None = None


@dataclass(kw_only=True)
class Auth(Section):
    """Distribution's ``auth``: at most one of silly, token or htpasswd."""

    choices: ClassVar[tuple[str, ...]] = AUTH_TYPES

    silly: SillyAuth | None = None
    token: TokenAuth | None = None
    htpasswd: HtpasswdAuth | None = None

    @classmethod
    def prepare(cls, data: Any) -> Any:
        # ``{htpasswd: null}`` becomes ``{htpasswd: {}}`` so that it fails for want of a
        # realm, as in Distribution, instead of reading as "no auth" and serving openly.
        data = expand_choice(data, cls.choices)
        if not isinstance(data, dict):
            return data
        # An auth type Dockyard does not know must stop start-up: serving without the
        # access control the operator asked for would be worse than not serving.
        unknown = [str(key) for key in data if key not in cls.choices]
        if unknown:
            raise ValueError(
                f"unknown auth type {', '.join(unknown)} (one of {', '.join(AUTH_TYPES)})"
            )
        if len(data) > 1:
            raise ValueError(f"exactly one auth type is allowed, found {' and '.join(data)}")
        return data


# --- http ---------------------------------------------------------------------------------

HTTP_NETWORKS = ("tcp", "tcp4", "tcp6", "unix")
TLS_CLIENT_AUTH = (
    "request-client-cert",
    "require-any-client-cert",
    "verify-client-cert-if-given",
    "require-and-verify-client-cert",
)


def _clientauth(value: str | None) -> str | None:
    if value is not None and value not in TLS_CLIENT_AUTH:
        raise ValueError(f"unknown clientauth {value!r} (one of {', '.join(TLS_CLIENT_AUTH)})")
    return value


@dataclass(kw_only=True)
class TLS(Section):
    certificate: str | None = None
    key: str | None = None
    clientcas: list[str] = field(default_factory=list)
    clientauth: Annotated[str | None, After(_clientauth)] = None
    minimumtls: str | None = None
    ciphersuites: list[str] = field(default_factory=list)
    letsencrypt: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Prometheus(Section):
    enabled: bool = False
    path: str = "/metrics"


@dataclass(kw_only=True)
class Debug(Section):
    addr: str | None = None
    prometheus: Prometheus = field(default_factory=Prometheus)


@dataclass(kw_only=True)
class HTTP2(Section):
    # Dockyard speaks HTTP/1.1 only, which is what ``disabled: true`` asks for; where
    # Distribution would offer HTTP/2 over TLS, clients fall back to HTTP/1.1.
    disabled: bool = False


@dataclass(kw_only=True)
class H2C(Section):
    enabled: bool = False


def _headers(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    headers: dict[Any, Any] = {}
    for name, values in value.items():
        # A single value is accepted for one-element lists; Distribution insists on lists.
        values = [values] if isinstance(values, str) else values
        key = _canonical_header(name) if isinstance(name, str) else name
        if key in headers and isinstance(headers[key], list) and isinstance(values, list):
            headers[key] = [*headers[key], *values]
        else:
            headers[key] = values
    return headers


def _net(value: str) -> str:
    if value == "":
        return "tcp"
    if value not in HTTP_NETWORKS:
        raise ValueError(f"unknown network {value!r} (tcp or unix)")
    return value


@dataclass(kw_only=True)
class HTTP(Section):
    addr: str = ":5000"
    net: Annotated[str, After(_net)] = "tcp"
    prefix: str = ""
    host: str | None = None
    # Distribution signs upload state it hands to clients with this; Dockyard keeps
    # upload state in storage, where every worker and replica finds it, and needs none.
    secret: str | None = None
    relativeurls: bool = False
    draintimeout: Duration | None = None
    headers: Annotated[dict[str, list[str]], Before(_headers)] = field(default_factory=dict)
    tls: TLS = field(default_factory=TLS)
    debug: Debug = field(default_factory=Debug)
    http2: HTTP2 = field(default_factory=HTTP2)
    h2c: H2C = field(default_factory=H2C)


# --- notifications ------------------------------------------------------------------------


@dataclass(kw_only=True)
class NotificationIgnore(Section):
    """``ignore``: events whose target media type or action is listed are not sent."""

    mediatypes: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class NotificationEndpoint(Section):
    """One ``notifications.endpoints`` entry, with Distribution's defaults for zeros."""

    name: str = ""
    disabled: bool = False
    url: str = ""
    headers: Annotated[dict[str, list[str]], Before(_headers)] = field(default_factory=dict)
    # Zero or unset: Distribution's defaults (1s, 10 failures, 1s).
    timeout: Duration = timedelta(0)
    threshold: int = 0
    backoff: Duration = timedelta(0)
    ignoredmediatypes: list[str] = field(default_factory=list)
    ignore: NotificationIgnore = field(default_factory=NotificationIgnore)

    def __post_init__(self) -> None:
        if not self.disabled and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(
                f"endpoint {self.name or '(unnamed)'}: url {self.url!r} is not an http(s) URL"
            )


@dataclass(kw_only=True)
class NotificationEvents(Section):
    includereferences: bool = False


@dataclass(kw_only=True)
class Notifications(Section):
    events: NotificationEvents = field(default_factory=NotificationEvents)
    endpoints: list[NotificationEndpoint] = field(default_factory=list)


# --- health -------------------------------------------------------------------------------


def _interval(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("interval must not be negative")
    # Distribution checks every 10s when the interval is zero.
    return value or timedelta(seconds=10)


def _threshold(value: int) -> int:
    if value < 0:
        raise ValueError("threshold must not be negative")
    return value


@dataclass(kw_only=True)
class StorageDriverHealth(Section):
    enabled: bool = False
    interval: Annotated[Duration, After(_interval)] = timedelta(seconds=10)
    # Distribution's documented default: one failure marks the storage unhealthy.
    threshold: Annotated[int, After(_threshold)] = 1


@dataclass(kw_only=True)
class Health(Section):
    env_aliases: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"filecheckers": "file", "httpcheckers": "http", "tcpcheckers": "tcp"}
    )

    storagedriver: StorageDriverHealth = field(default_factory=StorageDriverHealth)
    file: list[dict[str, Any]] = field(default_factory=list)
    http: list[dict[str, Any]] = field(default_factory=list)
    tcp: list[dict[str, Any]] = field(default_factory=list)


def _maxentries(value: int) -> int:
    if value < 1:
        raise ValueError("maxentries must be at least 1")
    return value


@dataclass(kw_only=True)
class Catalog(Section):
    maxentries: Annotated[int, After(_maxentries)] = 1000


# --- proxy (pull-through cache) ----------------------------------------------------------------

# Distribution's default for proxy.ttl: cached content unused this long is dropped.
PROXY_TTL = timedelta(hours=168)


@dataclass(kw_only=True)
class Proxy(Section):
    """Distribution's ``proxy``: the whole registry mirrors ``remoteurl``."""

    remoteurl: str | None = None
    username: str | None = None
    password: str | None = None
    ttl: Duration = PROXY_TTL


def _prefix(value: str) -> str:
    return value.strip("/")


@dataclass(kw_only=True)
class ProxyUpstream:
    """One ``dockyard.proxy`` entry: repositories under ``prefix`` mirror ``remoteurl``.

    ``local: true`` (and no ``remoteurl``) keeps the prefix an ordinary repository area
    that accepts pushes. ``library`` adds Docker Hub's implied ``library/`` to one-part
    names; unset, it is on for Docker Hub's addresses.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}
    prefix: Annotated[str, After(_prefix)] = ""
    remoteurl: str | None = None
    username: str | None = None
    password: str | None = None
    ttl: Duration = PROXY_TTL
    cafile: str | None = None
    insecureskipverify: bool = False
    library: bool | None = None
    local: bool = False

    def __post_init__(self) -> None:
        if self.local == (self.remoteurl is not None):
            raise ValueError("an entry needs a remoteurl, or local: true without one")


# --- Dockyard's own section -----------------------------------------------------------------


@dataclass(kw_only=True)
class GarbageCollection(Section):
    """Dockyard's collector; ``enabled`` runs it inside ``dockyard serve`` every ``interval``."""

    enabled: bool = False
    interval: Duration = timedelta(hours=24)
    delay: Duration = timedelta(hours=1)
    settle: Duration = timedelta(seconds=10)
    deleteuntagged: bool = False


def _page_size(value: int) -> int:
    if not 5 <= value <= 500:
        raise ValueError("must be between 5 and 500")
    return value


@dataclass(kw_only=True)
class UI(Section):
    """The web UI under ``/ui`` (``dockyard.ui``)."""

    enabled: bool = True
    # No delete buttons nor garbage collection from the page (the API is unaffected).
    readonly: bool = False
    # host[:port] shown in ``docker pull`` commands; unset: http.host, else the host the
    # browser used to reach the page.
    name: str | None = None
    pagesize: Annotated[int, After(_page_size)] = 50


@dataclass(kw_only=True)
class AccessRule:
    """One ``dockyard.auth.access`` entry; a misspelt key is an error, not a silent no-op."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}
    repositories: list[str]
    users: list[str] = field(default_factory=list)
    anonymous: bool = False
    actions: list[str]


@dataclass(kw_only=True)
class TokenService(Section):
    """Dockyard's built-in token server (``/auth/token``)."""

    enabled: bool = False
    key: str | None = None
    certificate: str | None = None
    issuer: str | None = None
    services: list[str] = field(default_factory=list)
    expiration: Duration = timedelta(minutes=5)


@dataclass(kw_only=True)
class LoginBackoff(Section):
    free: int = 5
    initial: Duration = timedelta(milliseconds=500)
    maximum: Duration = timedelta(seconds=10)
    window: Duration = timedelta(minutes=15)


@dataclass(kw_only=True)
class DockyardAuth(Section):
    """Users, access rules and the token service (``dockyard.auth``)."""

    users: str | None = None
    admins: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    access: list[AccessRule] | None = None
    tokenservice: TokenService = field(default_factory=TokenService)
    backoff: LoginBackoff = field(default_factory=LoginBackoff)


@dataclass(kw_only=True)
class NotificationSpool(Section):
    """Where events wait for their endpoints (``dockyard.notifications``); unset: under
    the filesystem driver's root, or a temporary directory for the other drivers."""

    spooldirectory: str | None = None


def _workers(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError("workers must be at least 1")
    return value


EVENT_LOOPS = ("uvloop", "asyncio")


def _event_loop(value: str) -> str:
    if value not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {value!r} (uvloop or asyncio)")
    return value


@dataclass(kw_only=True)
class Dockyard(Section):
    """Settings Distribution does not have; Distribution ignores this section."""

    ui: UI = field(default_factory=UI)
    workers: Annotated[int | None, After(_workers)] = None
    # What runs each worker's requests. uvloop (libuv) costs less CPU per small request;
    # asyncio's own loop reads a blob streamed from an upstream or S3 in larger pieces
    # (``dockyard.sockets``) and took chunked pushes with less CPU (README, Workers).
    eventloop: Annotated[str, After(_event_loop)] = "asyncio"
    auth: DockyardAuth = field(default_factory=DockyardAuth)
    gc: GarbageCollection = field(default_factory=GarbageCollection)
    proxy: list[ProxyUpstream] = field(default_factory=list)
    notifications: NotificationSpool = field(default_factory=lambda: NotificationSpool())


# --- redis --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RedisPool(Section):
    """Distribution 2.x's pool settings; 3.x moved them up (maxidleconns, poolsize)."""

    maxidle: int | None = None
    maxactive: int | None = None
    idletimeout: Duration | None = None


@dataclass(kw_only=True)
class RedisTLS(Section):
    enabled: bool = False
    # Distribution 3.x: a client certificate, and the CAs that sign the server's.
    certificate: str | None = None
    key: str | None = None
    clientcas: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.enabled or bool(self.certificate or self.clientcas)


@dataclass(kw_only=True)
class Redis(Section):
    """Distribution's ``redis`` section, in its 2.x form (addr, pool) or 3.x (addrs)."""

    addr: str | None = None
    addrs: list[str] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    db: int = 0
    dialtimeout: Duration | None = None
    readtimeout: Duration | None = None
    writetimeout: Duration | None = None
    pool: RedisPool = field(default_factory=RedisPool)
    poolsize: int | None = None
    maxidleconns: int | None = None
    connmaxidletime: Duration | None = None
    tls: RedisTLS = field(default_factory=RedisTLS)

    def __post_init__(self) -> None:
        addresses = [a for a in [self.addr, *self.addrs] if a]
        if not addresses:
            raise ValueError("redis needs addr (host:port)")
        if len(set(addresses)) > 1:
            raise ValueError(
                "redis: several addresses (a Redis Cluster) are not supported; give one addr"
            )
        host, _, port = addresses[0].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis addr must be host:port, not {addresses[0]!r}")

    @property
    def host(self) -> str:
        return (self.addr or self.addrs[0]).rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int((self.addr or self.addrs[0]).rpartition(":")[2])

    @property
    def max_connections(self) -> int | None:
        return self.poolsize or self.pool.maxactive or None


# --- the file -----------------------------------------------------------------------------

CONFIG_VERSION = "0.1"


def _version(value: str) -> str:
    # Distribution knows exactly one configuration format and refuses any other.
    if value != CONFIG_VERSION:
        raise ValueError(f"unsupported version {value!r}: the only version is {CONFIG_VERSION}")
    return value


@dataclass(kw_only=True)
class Config(Section):
    version: Annotated[str, After(_version)] = CONFIG_VERSION
    log: Log = field(default_factory=Log)
    # Deprecated by Distribution in favour of log.level, which wins when both are set.
    loglevel: Annotated[str | None, Before(_log_level)] = None
    storage: Storage = field(default_factory=lambda: Storage(filesystem=FilesystemParams()))
    auth: Auth | None = None
    middleware: dict[str, Any] | None = None
    reporting: dict[str, Any] | None = None
    http: HTTP = field(default_factory=HTTP)
    notifications: Notifications = field(default_factory=Notifications)
    redis: Redis | None = None
    health: Health = field(default_factory=Health)
    proxy: Proxy | None = None
    compatibility: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    catalog: Catalog = field(default_factory=Catalog)
    dockyard: Dockyard = field(default_factory=Dockyard)

    def __post_init__(self) -> None:
        if self.storage.cache.blobdescriptor == "redis" and self.redis is None:
            raise ValueError("storage.cache.blobdescriptor is redis but no redis section is set")
