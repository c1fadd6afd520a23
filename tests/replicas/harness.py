"""Several ``dockyard serve`` replicas as one registry: real processes, nothing mocked.

One moto S3 server holds the bucket every replica uses, one ``redis-server`` is shared,
and Debian's nginx runs ``deploy/nginx.conf`` (rendered with this machine's ports, as
``envsubst`` renders it in a deployment) in front. Each replica is configured from
``deploy/registry.yml``, with only the addresses and the collector's timings replaced,
so the documented files are the tested ones.

Every replica writes its access log (one JSON line per request) to its own file: that
is how a test tells which replica answered which request.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.s3.moto_server import MotoServer
from tests.support.redis_server import RedisServer
from tests.support.servers import ServerProcess, free_port, stop_group

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
README = ROOT / "README.md"
REGISTRY_CONF = ROOT / "deploy" / "registry.yml"
NGINX = "/usr/sbin/nginx"
V2 = "docker/registry/v2"

# What envsubst fills in: ${NAME} for the DOCKYARD_* names the file documents.
PLACEHOLDER = re.compile(r"\$\{(DOCKYARD_[A-Z0-9_]+)\}")
REPLICA_PLACEHOLDER = re.compile(r"^DOCKYARD_REPLICA_(\d+)$")


# --- deploy/nginx.conf ----------------------------------------------------------------


def placeholders(text: str) -> list[str]:
    """The ``${DOCKYARD_...}`` names in a template, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in PLACEHOLDER.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def replica_slots(text: str) -> int:
    """How many replicas the template's upstream block names (DOCKYARD_REPLICA_1..N)."""
    numbers = sorted(
        int(m.group(1)) for name in placeholders(text) if (m := REPLICA_PLACEHOLDER.match(name))
    )
    assert numbers == list(range(1, len(numbers) + 1)), f"replica placeholders: {numbers}"
    return len(numbers)


def render(text: str, values: Mapping[str, str]) -> str:
    """``envsubst '${A} ${B} ...'``: every placeholder must have a value."""
    missing = set(placeholders(text)) - set(values)
    if missing:
        raise KeyError(f"no value for {sorted(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


LISTEN_LINE = "    listen ${DOCKYARD_LISTEN};\n"


def readme_tls_lines(certificates: Path) -> list[str]:
    """The README's ``listen 443 ssl`` snippet (TLS at nginx), with the port a
    placeholder again and its certificate paths in ``certificates``."""
    text = README.read_text()
    start = text.index("**TLS at nginx.**")
    block = text[text.index("```nginx\n", start) + len("```nginx\n") :]
    block = block[: block.index("```")]
    lines = []
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.replace("listen 443 ssl;", "listen ${DOCKYARD_LISTEN} ssl;")
        line = line.replace("registry.example.com", "127.0.0.1")
        line = line.replace("/etc/nginx/tls", str(certificates))
        lines.append(line)
    return lines


def with_tls(template: str, certificates: Path) -> str:
    """deploy/nginx.conf changed as the README says to terminate TLS."""
    assert template.count(LISTEN_LINE) == 1, "deploy/nginx.conf: no single listen line"
    lines = "".join(f"    {line}\n" for line in readme_tls_lines(certificates))
    return template.replace(LISTEN_LINE, lines)


def nginx_values(listen: int, replicas: Iterable[str]) -> dict[str, str]:
    values = {"DOCKYARD_LISTEN": f"127.0.0.1:{listen}"}
    for number, address in enumerate(replicas, start=1):
        values[f"DOCKYARD_REPLICA_{number}"] = address
    return values


# --- processes --------------------------------------------------------------------------


def _wait(what: str, process: subprocess.Popen[bytes], ready: Any, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{_tail(log)}")
        try:
            if ready():
                return
        except (OSError, httpx.TransportError):
            pass
        time.sleep(0.05)
    stop_group(process)
    raise RuntimeError(f"{what} did not start within {timeout}s:\n{_tail(log)}")


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


class NginxServer:
    """``nginx -p DIR -c nginx.conf -g 'daemon off;'`` with ``deploy/nginx.conf`` rendered
    into DIR and included from a main file that only puts nginx's own files in DIR.

    The main file stands in for Debian's /etc/nginx/nginx.conf; it says nothing about
    proxying. Root or not, nothing outside DIR is written, and the port is a free one.
    """

    def __init__(self, workdir: Path, replicas: list[str], tls: Path | None = None) -> None:
        # tls: a directory `dockyard cert` wrote (ca.crt, server.crt, server.key).
        self.tls = tls
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.replicas = replicas
        self.log_path = workdir / "error.log"
        self.access_log = workdir / "access.log"
        self.process: subprocess.Popen[bytes] | None = None
        template = NGINX_CONF.read_text()
        if tls is not None:
            template = with_tls(template, tls)
        slots = replica_slots(template)
        assert len(replicas) == slots, f"deploy/nginx.conf names {slots} replicas"
        self.site = workdir / "dockyard.conf"
        self.site.write_text(render(template, nginx_values(self.port, replicas)))
        temp = workdir / "temp"
        temp.mkdir(exist_ok=True)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.main = workdir / "nginx.conf"
        self.main.write_text(
            f"""worker_processes auto;
pid {workdir / "nginx.pid"};
error_log {self.log_path} notice;
events {{
    worker_connections 1024;
}}
http {{
    access_log {self.access_log};
{temp_paths}
    include {self.site};
}}
"""
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx needs to trust this nginx."""
        if self.tls is None:
            return True
        return ssl.create_default_context(cafile=str(self.tls / "ca.crt"))

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.workdir), "-c", str(self.main), "-e", str(self.log_path), *extra]

    def check(self) -> None:
        """``nginx -t`` on the rendered configuration."""
        result = subprocess.run(
            self.command("-t"), capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr

    def start(self, timeout: float = 20.0) -> None:
        with open(self.workdir / "nginx.out", "ab") as out:
            self.process = subprocess.Popen(
                self.command("-g", "daemon off;"),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        _wait(
            "nginx",
            process,
            lambda: httpx.get(self.url + "/v2/", timeout=2.0, verify=self.verify()).status_code
            == 200,
            self.log_path,
            timeout,
        )

    def log(self) -> str:
        return _tail(self.log_path)

    def stop(self) -> None:
        stop_group(self.process)


# --- replicas -----------------------------------------------------------------------------


def replica_config(
    moto: MotoServer, bucket: str, redis: RedisServer, port: int, debug_port: int
) -> dict[str, Any]:
    """``deploy/registry.yml`` with this machine's addresses.

    Replaced: the bucket (moto's, with its small part sizes), Redis's and the replica's
    own address. Added: one worker (a replica is the unit here), JSON access lines for
    the tests to read, metrics on a debug address (which replica has an upload in
    flight), and a collector that deletes at once.
    """
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(REGISTRY_CONF.read_text()))
    config["storage"]["s3"] = moto.driver_params(bucket)
    config["redis"]["addr"] = redis.addr
    config["http"]["addr"] = f"127.0.0.1:{port}"
    config["http"]["debug"] = {
        "addr": f"127.0.0.1:{debug_port}",
        "prometheus": {"enabled": True, "path": "/metrics"},
    }
    config["log"]["formatter"] = "json"
    config["dockyard"]["workers"] = 1
    # A short settle keeps the collection tests quick; its hold limit (0.4 of it) must
    # still cover a push's reference checks on moto on a loaded 2-core machine, where
    # 1s (0.4 s) once refused a skopeo manifest PUT with 503.
    config["dockyard"]["gc"].update({"delay": "0s", "settle": "3s"})
    return config


class Replica(ServerProcess):
    """One ``dockyard serve`` of the group, its config written from :func:`replica_config`."""

    def __init__(
        self, number: int, workdir: Path, moto: MotoServer, bucket: str, redis: RedisServer
    ) -> None:
        super().__init__("dockyard", workdir)
        self.number = number
        self.debug_port = free_port()
        self.config = replica_config(moto, bucket, redis, self.port, self.debug_port)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def access(self) -> list[AccessLine]:
        """Every access line this replica has written so far (across restarts)."""
        lines = []
        for text in self.log().splitlines():
            if not text.startswith("{"):
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if "http.request.method" in record and "http.response.status" in record:
                lines.append(
                    AccessLine(
                        replica=self.number,
                        method=record["http.request.method"],
                        uri=record["http.request.uri"],
                        status=int(record["http.response.status"]),
                        logged_at=str(record.get("time", "")),
                    )
                )
        return lines

    def metric(self, sample: str) -> float:
        """One sample (name with its labels, as exposed) of the replica's own metrics."""
        response = httpx.get(f"http://127.0.0.1:{self.debug_port}/metrics", timeout=5)
        response.raise_for_status()
        for line in response.text.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
        return 0.0

    def uploads_in_flight(self) -> float:
        return self.metric("registry_blob_uploads_in_flight")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(frozen=True)
class AccessLine:
    replica: int
    method: str
    uri: str
    status: int
    # When the line was written (ISO 8601, to the millisecond): orders lines of
    # different replicas.
    logged_at: str


@dataclass
class Cluster:
    """The replicas, nginx in front, and what they share."""

    moto: MotoServer
    bucket: str
    redis: RedisServer
    replicas: list[Replica]
    nginx: NginxServer
    workdir: Path

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def host(self) -> str:
        return self.nginx.host

    def alive(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.alive()]

    def access(self) -> list[AccessLine]:
        return [line for replica in self.replicas for line in replica.access()]

    def access_matching(
        self, wanted: Callable[[AccessLine], bool], count: int, timeout: float = 10.0
    ) -> list[AccessLine]:
        """The access lines ``wanted`` picks, once there are ``count`` of them.

        A replica writes a request's line after the response has gone out, so the
        client may be a moment ahead of the log; this waits for the lines (never for
        longer than ``timeout``) and returns what there is.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.access() if wanted(line)]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def keys(self, prefix: str = "") -> set[str]:
        """Every key in the bucket under ``prefix``, read with a plain boto3 client."""
        client = self.moto.client()
        keys: set[str] = set()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    def blob_keys(self, digest: str) -> set[str]:
        """What the bucket holds under ``blobs/`` for one digest (its data file)."""
        hex_digest = digest.removeprefix("sha256:")
        return self.keys(f"{V2}/blobs/sha256/{hex_digest[:2]}/{hex_digest}")

    def logs(self) -> str:
        """The tail of every process's log, for a failing assertion's message."""
        parts = [f"--- replica {r.number} ---\n{r.log()[-3000:]}" for r in self.replicas]
        parts.append(f"--- nginx ---\n{self.nginx.log()}")
        return "\n".join(parts)

    def stop(self) -> None:
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis.stop()


def start_cluster(
    moto: MotoServer, workdir: Path, replicas: int | None = None, tls: Path | None = None
) -> Cluster:
    """A bucket, Redis, the replicas (as many as deploy/nginx.conf names) and nginx
    (terminating TLS with the certificates in ``tls``, when given)."""
    count = replicas or replica_slots(NGINX_CONF.read_text())
    bucket = moto.new_bucket()
    redis = RedisServer(workdir / "redis")
    redis.start()
    started: list[Replica] = []
    try:
        for number in range(1, count + 1):
            replica = Replica(number, workdir / f"replica-{number}", moto, bucket, redis)
            replica.start(timeout=60.0)
            started.append(replica)
        nginx = NginxServer(workdir / "nginx", [replica.host for replica in started], tls)
        nginx.check()
        nginx.start()
    except BaseException:
        for replica in started:
            replica.stop()
        redis.stop()
        raise
    return Cluster(moto, bucket, redis, started, nginx, workdir)
