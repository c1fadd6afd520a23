"""A real S3-compatible server for tests: moto in server mode, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port, stop_group

REGION = "us-east-1"
ACCESS_KEY = "dockyard-test"
SECRET_KEY = "dockyard-test-secret"
MiB = 1 << 20


class S3Endpoint:
    """What tests need of any S3 server: an endpoint, a client, buckets, a config."""

    endpoint: str

    def client(self) -> Any:
        """A plain boto3 client, to look at the bucket from outside the driver."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"dockyard-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def driver_params(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """``storage.s3`` parameters for ``bucket``, with the smallest part sizes S3 allows
        so that tests of a few MiB cross part boundaries."""
        return {
            "region": REGION,
            "regionendpoint": self.endpoint,
            "bucket": bucket,
            "accesskey": ACCESS_KEY,
            "secretkey": SECRET_KEY,
            "chunksize": 5 * MiB,
            "multipartcopychunksize": 5 * MiB,
            "multipartcopythresholdsize": 5 * MiB,
            **extra,
        }


class MotoServer(S3Endpoint):
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                },
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.endpoint}/moto-api/", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.process)

    def reset(self) -> None:
        """Forget every bucket, freeing the server's memory."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=30.0)
