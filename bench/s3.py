"""The registry on S3: both servers storing into buckets of one local moto server.

moto in server mode (``python -m moto.server``, what the S3 tests run) listens on
loopback. Each kind gets a bucket of its own and two servers on it with the same
``storage.s3`` section: one with ``storage.redirect.disable`` (pushes, and pulls
streamed through the registry) and one with the default redirect (a blob GET answered
with a 307 to a pre-signed URL that the client follows to moto).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.layout import V2
from bench.payload import Blob
from bench.servers import (
    DISTRIBUTION,
    DOCKYARD,
    KINDS,
    BenchError,
    ManagedProcess,
    RegistryServer,
    answers,
    free_port,
)
from bench.source import DockyardSource

REGION = "us-east-1"
ACCESS_KEY = "dockyard-bench"
SECRET_KEY = "dockyard-bench-secret"
# Distribution's and Dockyard's default part size, written out so both surely use it.
CHUNK_SIZE = 10 << 20
# Objects the bench itself puts (the moto-alone figures) go in the first bucket, here.
PROBE_PREFIX = "bench-probe/"
PRESIGNED_EXPIRY = 3600


def require() -> None:
    missing = [
        name for name in ("moto", "flask", "boto3") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise BenchError(
            f"the s3 group needs {', '.join(missing)}: pip install 'moto[s3]==5.2.5' flask"
        )


@dataclass
class MotoServer(ManagedProcess):
    """``python -m moto.server`` on a free loopback port; its buckets are made at start."""

    workdir: Path
    buckets: tuple[str, ...]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "moto.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return "moto (S3)"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def popen_env(self) -> dict[str, str]:
        # Objects above moto's in-memory buffer spill to temp files: into the bench's temp
        # dir, which goes when the run ends however moto ends.
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "TMPDIR": str(self.workdir),
        }

    def _answers(self) -> bool:
        return answers(self.url + "/moto-api/")

    def _ready(self, deadline: float) -> None:
        for bucket in self.buckets:
            self.client.create_bucket(Bucket=bucket)

    @cached_property
    def client(self) -> Any:
        """A plain boto3 client: buckets, deletes and pre-signed URLs from outside the servers."""
        import boto3  # type: ignore[import-untyped]

        keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, **keys)

    def presigned(self, method: str, key: str) -> str:
        """A pre-signed ``put_object`` or ``get_object`` URL for ``key`` in the first bucket."""
        return str(
            self.client.generate_presigned_url(
                method,
                Params={"Bucket": self.buckets[0], "Key": PROBE_PREFIX + key},
                ExpiresIn=PRESIGNED_EXPIRY,
            )
        )

    def delete(self, bucket: str, keys: list[str]) -> None:
        if keys:
            self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )


def bucket_of(kind: str) -> str:
    return f"bench-{kind}"


def storage_section(moto: MotoServer, kind: str, redirect: bool) -> dict[str, Any]:
    """``storage.s3`` as Distribution documents it, the same for both kinds but the bucket.

    Distribution 2.8 takes ``secure`` as the endpoint's scheme and needs path-style
    addressing for an endpoint that is not AWS; Dockyard reads the same keys.
    """
    s3 = {
        "region": REGION,
        "regionendpoint": moto.url,
        "bucket": bucket_of(kind),
        "accesskey": ACCESS_KEY,
        "secretkey": SECRET_KEY,
        "secure": False,
        "v4auth": True,
        "forcepathstyle": True,
        "chunksize": CHUNK_SIZE,
    }
    return {"s3": s3, "redirect": {"disable": not redirect}}


@dataclass
class S3Setup:
    moto: MotoServer
    # Redirect disabled: every push, and the pulls streamed through the registry.
    streaming: list[RegistryServer]
    # The default redirect, on the same buckets: the pulls that go to moto.
    redirecting: list[RegistryServer]

    @property
    def servers(self) -> list[ManagedProcess]:
        """In start-up order: moto (and its buckets) before the registries on it."""
        return [self.moto, *self.streaming, *self.redirecting]

    def discard(self, server: RegistryServer, pushed: list[Blob]) -> None:
        """Delete pushed blobs from the server's bucket: their digests never recur, and
        moto keeps every object in its own process."""
        keys = []
        for blob in pushed:
            hex_ = blob.digest.split(":", 1)[1]
            keys.append(f"{V2}/blobs/sha256/{hex_[:2]}/{hex_}/data")
        self.moto.delete(bucket_of(server.kind), keys)


def _registry(
    scratch: Path,
    kind: str,
    redirect: bool,
    moto: MotoServer,
    workers: int | None,
    source: DockyardSource,
) -> RegistryServer:
    role = "on S3, redirecting" if redirect else "on S3"
    workdir = scratch / f"s3-{kind}-{'redirect' if redirect else 'stream'}"
    storage = storage_section(moto, kind, redirect)
    if kind == DOCKYARD:
        return RegistryServer(
            DOCKYARD, workdir, workers, source.path, source.env(), role=role, storage=storage
        )
    # Distribution's AWS SDK refuses to start when AWS_CA_BUNDLE names a bundle it cannot
    # attach to its plain-HTTP transport; empty means none.
    env = {**os.environ, "AWS_CA_BUNDLE": ""}
    return RegistryServer(DISTRIBUTION, workdir, env=env, role=role, storage=storage)


def build(scratch: Path, workers: int | None, source: DockyardSource) -> S3Setup:
    moto = MotoServer(scratch / "moto", tuple(bucket_of(kind) for kind in KINDS))
    streaming = [_registry(scratch, kind, False, moto, workers, source) for kind in KINDS]
    redirecting = [_registry(scratch, kind, True, moto, workers, source) for kind in KINDS]
    return S3Setup(moto, streaming, redirecting)
