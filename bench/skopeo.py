"""Whole-image round trip with skopeo (containers/image, as podman and buildah use).

The source is an OCI layout with gzip layers, so skopeo sends the blobs as they are
instead of compressing them on the way (which would time gzip, not the registry).
Every repetition gets new layer bytes: otherwise the registry already has the blobs
and skopeo only HEADs them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from bench.layout import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digest_of
from bench.servers import BenchError

SKOPEO = "skopeo"


def _layer(size: int, name: str) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of random bytes, and the tar's own digest (diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    tar_bytes = raw.getvalue()
    # Level 1: the content is random, so compressing harder gains nothing and costs time.
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), digest_of(tar_bytes)


def build_image(directory: Path, layers: int, layer_size: int) -> int:
    """An OCI layout at ``directory`` tagged ``latest``; returns the bytes of its blobs."""
    shutil.rmtree(directory, ignore_errors=True)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = digest_of(data)
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    compressed: list[bytes] = []
    diff_ids: list[str] = []
    for index in range(layers):
        data, diff_id = _layer(layer_size, f"layer{index}.bin")
        compressed.append(data)
        diff_ids.append(diff_id)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": put(data), "size": len(data)}
                for data in compressed
            ],
        }
    ).encode()
    index_json = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps(index_json))
    return len(config) + len(manifest) + sum(len(data) for data in compressed)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def copy(source: str, destination: str, timeout: float) -> tuple[float, float]:
    """(seconds, skopeo's CPU seconds) of one ``skopeo copy``; plain HTTP both ways."""
    command = [
        SKOPEO,
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        source,
        destination,
    ]
    before = _children_cpu()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"skopeo copy did not finish within {timeout:.0f}s") from error
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"skopeo copy {source} {destination} failed:\n{done.stderr[-1500:]}")
    return elapsed, _children_cpu() - before


def require() -> None:
    if shutil.which(SKOPEO) is None:
        raise BenchError("skopeo not found: apt-get install -y skopeo")
