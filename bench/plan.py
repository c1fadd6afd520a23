"""Sizes, durations and repetitions of the two modes."""

from __future__ import annotations

from dataclasses import dataclass, replace

MiB = 1 << 20
KiB = 1 << 10

GROUPS = (
    "limits",
    "push",
    "pull",
    "load",
    "puts",
    "listing",
    "deletes",
    "gc",
    "skopeo",
    "mirror",
    "s3",
)


@dataclass(frozen=True)
class Plan:
    mode: str
    reps: int
    push_sizes: tuple[int, ...]
    # A 1 MiB push lasts milliseconds; each sample times this many in a row.
    small_push_repeat: int
    chunked_size: int
    chunk: int
    pull_size: int
    # A 512 MiB pull from the page cache lasts a quarter second: too short to time alone.
    pull_repeat: int
    range_span: int
    range_connections: int
    range_seconds: float
    load_seconds: float
    connections: tuple[int, ...]
    put_seconds: float
    put_clients: int
    catalog_repositories: int
    tags: int
    page: int
    # Repositories of these many tags, each losing ``deletes`` manifests per repetition.
    delete_tags: tuple[int, ...]
    deletes: int
    gc_repositories: int
    gc_per_repository: int
    skopeo_layers: int
    skopeo_layer_size: int
    sha_size: int
    disk_size: int
    # Blob pulled through a pull-through mirror: cold once, then warm this many in a row.
    mirror_size: int
    mirror_warm_repeat: int
    mirror_connections: tuple[int, ...]
    # Both servers storing into a local S3 server (moto): a monolithic push, a chunked
    # push in ``chunk`` PATCHes, and a pull of the whole blob (streamed, then redirected).
    s3_push_size: int
    s3_chunked_size: int
    s3_pull_size: int
    # Bound on the whole run; a hang anywhere ends it with an error and a clean-up.
    time_limit: float

    @property
    def largest_blob(self) -> int:
        return max(self.blob_sizes)

    @property
    def blob_sizes(self) -> tuple[int, ...]:
        """Every size a blob figure pushes or pulls."""
        return (
            *self.push_sizes,
            self.chunked_size,
            self.pull_size,
            self.mirror_size,
            self.s3_push_size,
            self.s3_chunked_size,
            self.s3_pull_size,
        )

    def with_reps(self, reps: int | None) -> Plan:
        return self if reps is None else replace(self, reps=reps)


QUICK = Plan(
    mode="quick",
    reps=1,
    push_sizes=(1 * MiB, 4 * MiB, 16 * MiB),
    small_push_repeat=5,
    chunked_size=16 * MiB,
    chunk=8 * MiB,
    pull_size=16 * MiB,
    pull_repeat=1,
    range_span=64 * KiB,
    range_connections=8,
    # wrk and ab count whole seconds; two connection counts keep quick mode short.
    range_seconds=1,
    load_seconds=1,
    connections=(1, 16),
    put_seconds=1,
    put_clients=8,
    catalog_repositories=300,
    tags=300,
    page=100,
    delete_tags=(10, 300),
    deletes=5,
    gc_repositories=20,
    gc_per_repository=5,
    skopeo_layers=5,
    skopeo_layer_size=1 * MiB,
    sha_size=32 * MiB,
    disk_size=16 * MiB,
    mirror_size=16 * MiB,
    mirror_warm_repeat=1,
    mirror_connections=(1, 16),
    s3_push_size=4 * MiB,
    s3_chunked_size=16 * MiB,
    s3_pull_size=16 * MiB,
    time_limit=240,
)

FULL = Plan(
    mode="full",
    reps=5,
    push_sizes=(1 * MiB, 64 * MiB, 512 * MiB),
    small_push_repeat=20,
    chunked_size=512 * MiB,
    chunk=8 * MiB,
    pull_size=512 * MiB,
    pull_repeat=4,
    range_span=64 * KiB,
    range_connections=8,
    range_seconds=4,
    load_seconds=4,
    connections=(1, 16, 64),
    put_seconds=4,
    put_clients=8,
    catalog_repositories=10_000,
    tags=10_000,
    page=100,
    delete_tags=(100, 1_000, 10_000),
    deletes=20,
    gc_repositories=1000,
    gc_per_repository=5,
    skopeo_layers=5,
    skopeo_layer_size=8 * MiB,
    sha_size=256 * MiB,
    disk_size=256 * MiB,
    mirror_size=256 * MiB,
    mirror_warm_repeat=4,
    mirror_connections=(1, 16),
    s3_push_size=64 * MiB,
    s3_chunked_size=256 * MiB,
    s3_pull_size=256 * MiB,
    time_limit=3 * 3600,
)


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"
