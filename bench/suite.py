"""The run: prepare both stores, then every figure for both servers, alternating.

Each repetition runs every figure group in turn; inside a group the servers take turns
point by point, and the order flips every repetition, so drift on a noisy machine
(another tenant, page-cache state, thermal) lands on both sides alike.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import blobs, deletes, gc, listing, load, machine, mirrors, s3, skopeo
from bench.fixtures import MANIFEST_ACCEPT, Fixture, check_get, make_fixture, push_fixture
from bench.layout import OCI_MANIFEST, image_manifest
from bench.payload import Blob, Payload
from bench.plan import MiB, Plan, size_label
from bench.profile import Profiler
from bench.report import MACHINE
from bench.servers import DOCKYARD, BenchError, ManagedProcess, PeakRss, RegistryServer
from bench.source import DockyardSource
from bench.stats import Results, Sample

Log = Callable[[str], None]

# Seconds each server is left alone after a first DELETE (Dockyard finishes indexing a
# repository of 10,000 tags in about 0.5 s after answering).
FIRST_DELETE_SETTLE = 1.5

G_LIMITS = "0. Machine limits"
G_MONO = "1. Blob push, monolithic (POST + one PUT)"
G_CHUNKED = "2. Blob push, chunked"
G_PULL = "3. Blob pull"
G_LOAD = "4. Manifest and small-blob requests"
G_PUTS = "5. Manifest PUTs"
G_LISTING = "6. Catalog and tag listing"
G_RSS = "7. Peak server RSS (sum over the process tree)"
G_GC = "8. Garbage collection"
G_SKOPEO = "9. skopeo round trip"
G_MIRROR = "10. Registry mirror (pull-through cache)"
G_S3 = "11. Storage on S3 (moto on loopback)"
G_DELETES = "12. Manifest DELETE by digest"
# The disk limit in writes of 1 MiB (dd's habit) and of 32 KiB (Dockyard's, and Go's
# io.Copy's).
DISK_CALLS = (("limits.disk", MiB), ("limits.disk.small", 32 * 1024))

# (key, label, method, which URL)
LOAD_TARGETS = (
    ("get-tag", "GET manifest by tag", "GET", "tag"),
    ("get-digest", "GET manifest by digest", "GET", "digest"),
    ("head-tag", "HEAD manifest by tag", "HEAD", "tag"),
    ("head-digest", "HEAD manifest by digest", "HEAD", "digest"),
    ("get-blob", "GET 4 KiB blob", "GET", "blob"),
)


PULL_REPO = "bench/pull"


@dataclass(frozen=True)
class PullClient:
    """A client of the whole-blob GETs: curl reads into one buffer it keeps, as the Go
    clients do; the bench's own aiohttp client makes a new bytes object per piece it
    reads. Each has figures of its own, keyed with ``suffix``."""

    suffix: str
    label: str

    @property
    def slug(self) -> str:
        return self.suffix.replace(".", "-")


CURL = PullClient("", "curl")
PULL_CLIENTS = (CURL, PullClient(".aiohttp", "aiohttp client"))


async def _timed(work: Awaitable[None]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _whole_gets(
    client: PullClient, http: aiohttp.ClientSession, url: str, size: int, repeat: int
) -> tuple[float, float | None]:
    """Seconds for ``repeat`` GETs of ``url`` in a row by ``client``, and the client's CPU
    when it ran in a process of its own (curl)."""
    if client == CURL:
        pulled = load.curl_pull(url, size, repeat)
        return pulled.seconds, pulled.client_cpu
    return await blobs.pull_repeated(http, url, size, repeat), None


@dataclass
class Meter:
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    # A process the server works through (a mirror's upstream, the S3 server).
    backend_cpu: float = 0.0


@dataclass(frozen=True)
class Stores:
    """The servers a blob figure alternates between, how blobs pushed to them are removed,
    and the process they store through, whose CPU per MB gets a row of its own."""

    servers: list[RegistryServer]
    discard: Callable[[RegistryServer, list[Blob]], None]
    backend: ManagedProcess | None = None
    # An untimed request just before each sample, on the connection the sample then
    # reuses: a worker that has not used its storage client yet creates it here.
    warm: Callable[[RegistryServer], Awaitable[object]] | None = None


class Suite:
    def __init__(
        self,
        plan: Plan,
        servers: list[RegistryServer],
        scratch: Path,
        groups: set[str],
        profiler: Profiler,
        source: DockyardSource,
        log: Log,
        mirror: mirrors.Mirrors | None = None,
        on_s3: s3.S3Setup | None = None,
    ) -> None:
        self.source = source
        self.mirror_setup = mirror
        self.s3_setup = on_s3
        self.plan = plan
        self.servers = servers
        self.scratch = scratch
        self.groups = groups
        self.profiler = profiler
        self.log = log
        self.results = Results()
        self.fixture = make_fixture("bench/fixture")
        self.puts_fixture = Fixture(
            "bench/puts", "base", self.fixture.config, self.fixture.layer, self.fixture.manifest
        )
        self.payload: Payload | None = None
        self.pull_blob: Blob | None = None
        self.s3_blob: Blob | None = None
        self.local = Stores(servers, self._discard)
        self.gc_store: gc.GcStore | None = None
        # Per repository size: the manifests to delete, the same in every server's store.
        self.victims: dict[int, list[str]] = {}
        self.first_victims: dict[int, list[str]] = {}
        self._declare()

    # -- figures ---------------------------------------------------------------------

    def _declare(self) -> None:
        plan, declare = self.plan, self.results.declare
        if "limits" in self.groups:
            declare(
                "limits.sha256",
                G_LIMITS,
                f"SHA-256, one core, {size_label(plan.sha_size)}",
                "MB/s",
                True,
            )
            for key, call in DISK_CALLS:
                declare(
                    key,
                    G_LIMITS,
                    f"disk write + fsync, {size_label(plan.disk_size)} in "
                    f"{size_label(call)} writes",
                    "MB/s",
                    True,
                )
            for client in PULL_CLIENTS:
                declare(
                    f"limits.sendfile{client.suffix}",
                    G_LIMITS,
                    f"plain sendfile server → {client.label}, {size_label(plan.pull_size)}",
                    "MB/s",
                    True,
                )
        if "push" in self.groups:
            for size in plan.push_sizes:
                note = f"{plan.small_push_repeat} in a row" if size == min(plan.push_sizes) else ""
                self._declare_rate(f"push.mono.{size}", G_MONO, size_label(size), note)
            self._declare_rate("push.chunked", G_CHUNKED, self._chunked_label(plan.chunked_size))
        if "pull" in self.groups:
            repeat = f", {plan.pull_repeat} in a row" if plan.pull_repeat > 1 else ""
            for client in PULL_CLIENTS:
                label = f"GET {size_label(plan.pull_size)}{repeat}, {client.label}"
                self._declare_rate(f"pull.whole{client.suffix}", G_PULL, label)
            ranges = (
                f"random {size_label(plan.range_span)} ranges, {plan.range_connections} connections"
            )
            declare("pull.ranges", G_PULL, ranges, "req/s", True, "req")
            declare("pull.ranges.p99", G_PULL, ranges + ", p99", "ms", False)
        if "load" in self.groups:
            for key, label, _, _ in LOAD_TARGETS:
                for c in plan.connections:
                    declare(f"load.{key}.c{c}", G_LOAD, f"{label}, c={c}", "req/s", True, "req")
                    declare(f"load.{key}.c{c}.p99", G_LOAD, f"{label}, c={c}, p99", "ms", False)
        if "puts" in self.groups:
            declare("puts.c1", G_PUTS, "sequential (1 connection)", "PUT/s", True, "req")
            declare(
                f"puts.c{plan.put_clients}",
                G_PUTS,
                f"{plan.put_clients} clients",
                "PUT/s",
                True,
                "req",
            )
        if "listing" in self.groups:
            repos, tags, page = plan.catalog_repositories, plan.tags, plan.page
            declare(
                "listing.catalog.paged",
                G_LISTING,
                f"catalog of {repos:,} repos, pages of {page}",
                "s",
                False,
            )
            declare(
                "listing.catalog.whole",
                G_LISTING,
                f"catalog of {repos:,} repos, one request (n=100000)",
                "s",
                False,
            )
            declare("listing.tags.paged", G_LISTING, f"{tags:,} tags, pages of {page}", "s", False)
            declare("listing.tags.whole", G_LISTING, f"{tags:,} tags, one request", "s", False)
        if "pull" in self.groups:
            declare("rss.pull", G_RSS, "during 3 (blob pulls)", "MiB", False)
            declare("rss.pull.pss", G_RSS, "during 3 (blob pulls), PSS", "MiB", False)
        if "load" in self.groups:
            declare("rss.load", G_RSS, "during 4 (request load)", "MiB", False)
            declare("rss.load.pss", G_RSS, "during 4 (request load), PSS", "MiB", False)
        if "gc" in self.groups:
            manifests = plan.gc_repositories * plan.gc_per_repository
            declare(
                "gc",
                G_GC,
                f"{plan.gc_repositories:,} repos / {manifests:,} manifests, half deleted",
                "s",
                False,
            )
        if "skopeo" in self.groups:
            image = f"{plan.skopeo_layers} layers × {size_label(plan.skopeo_layer_size)}"
            declare("skopeo.push", G_SKOPEO, f"push, {image}", "s", False)
            declare("skopeo.pull", G_SKOPEO, f"pull, {image}", "s", False)
        if "mirror" in self.groups:
            mirrored = size_label(plan.mirror_size)
            repeat = f", {plan.mirror_warm_repeat} in a row" if plan.mirror_warm_repeat > 1 else ""
            for client in PULL_CLIENTS:
                label = f"cold GET {mirrored} (not cached), {client.label}"
                self._declare_rate(f"mirror.cold{client.suffix}", G_MIRROR, label)
                label = f"warm GET {mirrored} (cached){repeat}, {client.label}"
                self._declare_rate(f"mirror.warm{client.suffix}", G_MIRROR, label)
            for c in plan.mirror_connections:
                label = f"GET manifest by tag, warm, c={c}"
                declare(f"mirror.tag.c{c}", G_MIRROR, label, "req/s", True, "req")
                declare(f"mirror.tag.c{c}.p99", G_MIRROR, label + ", p99", "ms", False)
                declare(
                    f"mirror.tag.c{c}.upstream",
                    G_MIRROR,
                    label + ", upstream CPU per request",
                    "µs",
                    False,
                )
        if "s3" in self.groups:
            self._declare_s3()
        if "deletes" in self.groups:
            for tags in plan.delete_tags:
                declare(
                    f"deletes.first.{tags}",
                    G_DELETES,
                    f"first DELETE in a repository of {tags:,} tags written in Distribution's "
                    "layout (Dockyard indexes its tags)",
                    "s",
                    False,
                )
                declare(
                    f"deletes.{tags}",
                    G_DELETES,
                    f"{plan.deletes} DELETEs in a row, repository of {tags:,} tags",
                    "DELETE/s",
                    True,
                    "req",
                )

    def _declare_rate(
        self, key: str, group: str, label: str, note: str = "", backend: str = ""
    ) -> None:
        """A blob transfer in MB/s, CPU per MB; through a ``backend``, its CPU per MB too."""
        self.results.declare(key, group, label, "MB/s", True, "MB", note)
        if backend:
            label = f"{label}, {backend} CPU"
            self.results.declare(f"{key}.backend", group, label, "ms/MB", False)

    def _chunked_label(self, size: int) -> str:
        return f"{size_label(size)} in {size_label(self.plan.chunk)} PATCHes"

    def _declare_s3(self) -> None:
        plan, declare = self.plan, self.results.declare
        pulled = size_label(plan.s3_pull_size)
        for method, how in (("put", "PUT to"), ("get", "GET of")):
            label = f"moto alone: {how} a pre-signed URL, {pulled}"
            declare(f"limits.moto.{method}", G_S3, label, "MB/s", True)
            declare(f"limits.moto.{method}.cpu", G_S3, f"{label}, moto CPU", "ms/MB", False)
        for key, label in (
            ("s3.push.mono", f"monolithic push, {size_label(plan.s3_push_size)}"),
            ("s3.push.chunked", "chunked push, " + self._chunked_label(plan.s3_chunked_size)),
            ("s3.pull.stream", f"GET {pulled}, redirect disabled (streamed by the registry)"),
            ("s3.pull.redirect", f"GET {pulled}, 307 to a pre-signed URL, followed to moto"),
        ):
            self._declare_rate(key, G_S3, label, backend="moto")

    def add(self, key: str, kind: str, sample: Sample) -> None:
        self.results.add(key, kind, sample)

    def order(self, rep: int, servers: list[RegistryServer] | None = None) -> list[RegistryServer]:
        servers = self.servers if servers is None else servers
        return list(servers) if rep % 2 == 0 else list(reversed(servers))

    @contextmanager
    def meter(
        self,
        server: RegistryServer,
        name: str,
        rss: PeakRss | None = None,
        backend: ManagedProcess | None = None,
    ) -> Iterator[Meter]:
        found = Meter()
        server_before, client_before = server.sample().cpu_seconds, self_cpu()
        backend_before = backend.sample().cpu_seconds if backend else 0.0
        with self.profiler.record(server, name), rss.watch() if rss else nullcontext():
            yield found
        found.server_cpu = server.sample().cpu_seconds - server_before
        found.client_cpu = self_cpu() - client_before
        if backend is not None:
            found.backend_cpu = backend.sample().cpu_seconds - backend_before
            backend.check_alive()
        server.check_alive()

    async def _transfer(
        self,
        key: str,
        server: RegistryServer,
        rep: int,
        work: int,
        transfer: Awaitable[float],
        via: Stores,
        rss: PeakRss | None = None,
    ) -> None:
        """Time one blob transfer of ``work`` bytes (``transfer`` says how many seconds)."""
        name = f"{key.replace('.', '-')}-r{rep}"
        if via.warm is not None:
            await via.warm(server)
        backend = via.backend
        with self.meter(server, name, rss, backend) as meter:
            seconds = await transfer
        self._add_transfer(key, server, seconds, work, meter, None)
        if backend is not None:
            self.add(f"{key}.backend", server.kind, Sample(meter.backend_cpu * 1e3 / (work / 1e6)))

    def _add_transfer(
        self,
        key: str,
        server: RegistryServer,
        seconds: float,
        work: int,
        meter: Meter,
        client_cpu: float | None,
    ) -> None:
        """A blob transfer's sample; ``client_cpu`` when the client ran in a process of its
        own, else the bench process's CPU in the meter."""
        cpu = meter.client_cpu if client_cpu is None else client_cpu
        self.add(key, server.kind, Sample(work / seconds / 1e6, meter.server_cpu, cpu, work))

    async def _push_mono(
        self, rep: int, http: aiohttp.ClientSession, key: str, size: int, count: int, to: Stores
    ) -> None:
        assert self.payload is not None
        for server in self.order(rep, to.servers):
            pushed = [self.payload.blob(size) for _ in range(count)]
            push = blobs.push_many(http, server.url, "bench/push", pushed)
            await self._transfer(key, server, rep, size * count, push, to)
            to.discard(server, pushed)

    async def _push_chunked(
        self, rep: int, http: aiohttp.ClientSession, key: str, size: int, to: Stores
    ) -> None:
        assert self.payload is not None
        for server in self.order(rep, to.servers):
            blob = self.payload.blob(size)
            push = blobs.push_chunked(http, server.url, "bench/push", blob, self.plan.chunk)
            await self._transfer(key, server, rep, size, push, to)
            to.discard(server, [blob])

    async def _pull_whole(
        self,
        rep: int,
        http: aiohttp.ClientSession,
        key: str,
        blob: Blob,
        repeat: int,
        of: Stores,
        rss: dict[str, PeakRss] | None = None,
    ) -> None:
        for server in self.order(rep, of.servers):
            url = f"{server.url}/v2/{PULL_REPO}/blobs/{blob.digest}"
            pull = blobs.pull_repeated(http, url, blob.size, repeat)
            watch = rss[server.kind] if rss else None
            await self._transfer(key, server, rep, blob.size * repeat, pull, of, watch)

    # -- preparation -------------------------------------------------------------------

    def prepare_stores(self) -> None:
        """Before the servers start: the listing's and the deletes' layouts in every store,
        the GC master."""
        plan = self.plan
        first = self.servers[0].root
        if "listing" in self.groups:
            self.log(f"writing {plan.catalog_repositories:,} repositories and {plan.tags:,} tags")
            listing.populate(first, plan.catalog_repositories, plan.tags)
        if "deletes" in self.groups:
            victims = 1 + plan.reps * plan.deletes
            self.log(f"writing repositories of {plan.delete_tags} tags, {victims} to delete each")
            self.victims, self.first_victims = deletes.populate(
                first, plan.delete_tags, victims, plan.reps
            )
        if self.groups & {"listing", "deletes"}:
            for server in self.servers[1:]:
                subprocess.run(["cp", "-a", f"{first}/.", str(server.root)], check=True)
        if "gc" in self.groups:
            self.log(f"writing the GC store ({plan.gc_repositories:,} repositories)")
            self.gc_store = gc.build_store(
                self.scratch / "gc-master", plan.gc_repositories, plan.gc_per_repository
            )
        if self.groups & {"limits", "push", "pull", "mirror", "s3"}:
            self.log(f"writing {size_label(plan.largest_blob)} of random test data")
            self.payload = Payload(self.scratch / "payload.bin", plan.blob_sizes)

    async def setup(self, http: aiohttp.ClientSession) -> None:
        """After start: the fixture image and the blob to pull, in every server."""
        if self.payload is not None:
            self.pull_blob = self.payload.blob(self.plan.pull_size)
        for server in self.servers:
            await push_fixture(http, server.url, self.fixture)
            await push_fixture(http, server.url, self.puts_fixture)
            for url, expected, headers in self._load_urls(server):
                await check_get(http, url, expected, headers)
            if self.pull_blob is not None and "pull" in self.groups:
                await blobs.push_monolithic(http, server.url, PULL_REPO, self.pull_blob)
        if self.s3_setup is not None:
            await self._setup_s3(http, self.s3_setup)

    async def _setup_s3(self, http: aiohttp.ClientSession, setup: s3.S3Setup) -> None:
        """The blob to pull, pushed into each bucket; then each server's answer to its GET
        is checked: a 200 with redirects disabled, a 307 to moto with the default."""
        assert self.payload is not None
        self.s3_blob = blob = self.payload.blob(self.plan.s3_pull_size)
        for server in setup.streaming:
            await blobs.push_monolithic(http, server.url, PULL_REPO, blob)
        for server, expected in [(s, 200) for s in setup.streaming] + [
            (s, 307) for s in setup.redirecting
        ]:
            url = f"{server.url}/v2/{PULL_REPO}/blobs/{blob.digest}"
            status, location = await blobs.status_unfollowed(http, url)
            if status != expected or (expected == 307 and not location.startswith(setup.moto.url)):
                raise BenchError(
                    f"{server.label}: GET {url}: {status} {location}, expected {expected}"
                )

    def _load_urls(self, server: RegistryServer) -> list[tuple[str, bytes, dict[str, str]]]:
        fixture = self.fixture
        base = f"{server.url}/v2/{fixture.repo}"
        accept = {"Accept": MANIFEST_ACCEPT}
        return [
            (f"{base}/manifests/{fixture.tag}", fixture.manifest, accept),
            (f"{base}/manifests/{fixture.manifest_digest}", fixture.manifest, accept),
            (f"{base}/blobs/{fixture.layer_digest}", fixture.layer, {}),
        ]

    # -- one repetition ----------------------------------------------------------------

    async def run_rep(self, rep: int, http: aiohttp.ClientSession) -> None:
        steps = [
            ("limits", self.limits),
            ("push", self.push),
            ("pull", self.pull),
            ("load", self.load),
            ("puts", self.puts),
            ("listing", self.listing),
            ("deletes", self.delete),
            ("gc", self.collect),
            ("skopeo", self.skopeo),
            ("mirror", self.mirror),
            ("s3", self.on_s3),
        ]
        for group, step in steps:
            if group in self.groups:
                self.log(f"rep {rep + 1}/{self.plan.reps}: {group}")
                await step(rep, http)

    async def limits(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        assert self.payload is not None
        self.add("limits.sha256", MACHINE, Sample(machine.sha256_rate(plan.sha_size)))
        for key, call in DISK_CALLS:
            rate = machine.disk_write_rate(self.scratch, plan.disk_size, call)
            self.add(key, MACHINE, Sample(rate))
        with machine.SendfileServer(self.payload.path) as server:
            # The file may be larger than the pull size; the rate is per byte received.
            size = self.payload.path.stat().st_size
            for client in PULL_CLIENTS:
                seconds, _cpu = await _whole_gets(client, http, server.url, size, plan.pull_repeat)
                rate = size * plan.pull_repeat / seconds / 1e6
                self.add(f"limits.sendfile{client.suffix}", MACHINE, Sample(rate))

    async def push(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        for size in plan.push_sizes:
            count = plan.small_push_repeat if size == min(plan.push_sizes) else 1
            await self._push_mono(rep, http, f"push.mono.{size}", size, count, self.local)
        await self._push_chunked(rep, http, "push.chunked", plan.chunked_size, self.local)

    def _discard(self, server: RegistryServer, pushed: list[Blob]) -> None:
        """Remove pushed blobs' data behind the server's back: their digests never recur,
        and it keeps a full run's disk use (and write-back during later figures) small."""
        for blob in pushed:
            hex_ = blob.digest.split(":", 1)[1]
            shutil.rmtree(
                server.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_,
                ignore_errors=True,
            )

    async def pull(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan, blob = self.plan, self.pull_blob
        assert blob is not None
        rss = {server.kind: PeakRss(server) for server in self.servers}
        work = blob.size * plan.pull_repeat
        for client in PULL_CLIENTS:
            for server in self.order(rep):
                url = f"{server.url}/v2/{PULL_REPO}/blobs/{blob.digest}"
                name = f"pull-whole{client.slug}-r{rep}"
                with self.meter(server, name, rss[server.kind]) as meter:
                    seconds, client_cpu = await _whole_gets(
                        client, http, url, blob.size, plan.pull_repeat
                    )
                key = f"pull.whole{client.suffix}"
                self._add_transfer(key, server, seconds, work, meter, client_cpu)
        script = load.ranges_script(
            f"/v2/{PULL_REPO}/blobs/{blob.digest}", blob.size, plan.range_span, seed=rep + 1
        )
        for server in self.order(rep):
            with self.meter(server, f"pull-ranges-r{rep}", rss[server.kind]) as meter:
                result = load.wrk(server.url, plan.range_connections, plan.range_seconds, script)
            self.add(
                "pull.ranges",
                server.kind,
                Sample(result.rate, meter.server_cpu, result.client_cpu, result.requests),
            )
            self.add("pull.ranges.p99", server.kind, Sample(result.p99_ms))
        for kind, peak in rss.items():
            self.add("rss.pull", kind, Sample(peak.peak / MiB))
            self.add("rss.pull.pss", kind, Sample(peak.peak_pss / MiB))

    async def load(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        rss = {server.kind: PeakRss(server) for server in self.servers}
        for key, _label, method, which in LOAD_TARGETS:
            for c in plan.connections:
                for server in self.order(rep):
                    urls = dict(zip(("tag", "digest", "blob"), self._load_urls(server)))
                    url, _, headers = urls[which]
                    with self.meter(server, f"load-{key}-c{c}-r{rep}", rss[server.kind]) as meter:
                        if method == "HEAD":
                            result = load.ab_head(url, c, plan.load_seconds, headers)
                        else:
                            result = load.wrk(url, c, plan.load_seconds, headers=headers)
                    self.add(
                        f"load.{key}.c{c}",
                        server.kind,
                        Sample(result.rate, meter.server_cpu, result.client_cpu, result.requests),
                    )
                    self.add(f"load.{key}.c{c}.p99", server.kind, Sample(result.p99_ms))
        for kind, peak in rss.items():
            self.add("rss.load", kind, Sample(peak.peak / MiB))
            self.add("rss.load.pss", kind, Sample(peak.peak_pss / MiB))

    async def puts(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan, fixture = self.plan, self.puts_fixture
        template = image_manifest(fixture.config, [fixture.layer], "%s").decode()
        for clients in (1, plan.put_clients):
            for server in self.order(rep):
                script = load.manifest_put_script(
                    fixture.repo, f"r{rep}c{clients}n", template, OCI_MANIFEST
                )
                # Untimed: what the server before left dirty in the page cache is written
                # out now, not during this sample (a PUT made durable would wait for it).
                os.sync()
                with self.meter(server, f"puts-c{clients}-r{rep}") as meter:
                    result = load.wrk(server.url, clients, plan.put_seconds, script)
                self.add(
                    f"puts.c{clients}",
                    server.kind,
                    Sample(result.rate, meter.server_cpu, result.client_cpu, result.requests),
                )

    async def listing(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        repos, tags = plan.catalog_repositories, plan.tags
        walks = [
            ("listing.catalog.paged", "/v2/_catalog?n={page}", "repositories", plan.page, repos),
            ("listing.catalog.whole", "/v2/_catalog?n=100000", "repositories", None, repos),
            (
                "listing.tags.paged",
                f"/v2/{listing.TAGS_REPO}/tags/list?n={{page}}",
                "tags",
                plan.page,
                tags,
            ),
            ("listing.tags.whole", f"/v2/{listing.TAGS_REPO}/tags/list", "tags", None, tags),
        ]
        for key, path, field, page, expected in walks:
            for server in self.order(rep):
                url = server.url + path.format(page=page)
                with self.meter(server, f"{key}-r{rep}".replace(".", "-")) as meter:
                    seconds, entries, _, paged = await listing.walk(http, url, field, page)
                if not paged:
                    # Distribution 2.8 has no tag-list pagination: it answered every tag at
                    # once, so there is no paged walk to time.
                    self.results.figures[
                        key
                    ].note = f"{server.label} ignores n and returns all {entries:,} at once"
                    continue
                if entries < expected:
                    raise BenchError(f"{server.label}: {url} listed {entries}, expected {expected}")
                self.add(key, server.kind, Sample(seconds, meter.server_cpu, meter.client_cpu))

    async def delete(self, rep: int, http: aiohttp.ClientSession) -> None:
        """Manifests deleted by digest, one after another: in each repetition, first the
        first DELETE in a repository of its own (timed alone), then ``deletes`` victims
        in a row in the repository of the first repetition's; each victim is deleted once
        from each server's store."""
        count = self.plan.deletes
        firsts = self.first_victims
        for tags, victims in self.victims.items():
            start = 1 + rep * count
            batches = [
                ("deletes.first", deletes.first_repository(tags, rep), 0, [firsts[tags][rep]]),
                ("deletes", deletes.repository(tags), start, victims[start : start + count]),
            ]
            for key, repo, first, batch in batches:
                for server in self.order(rep):
                    name = f"{key}-{tags}-r{rep}".replace(".", "-")
                    # Untimed, as before PUTs: what others left dirty in the page cache
                    # is not this sample's (a DELETE that settles the journal syncs).
                    os.sync()
                    with self.meter(server, name) as meter:
                        seconds = await deletes.delete_each(http, server.url, repo, batch)
                    last = deletes.victim_tag(first + len(batch) - 1)
                    await deletes.check_untagged(http, server.url, repo, last)
                    value = seconds if key == "deletes.first" else len(batch) / seconds
                    sample = Sample(value, meter.server_cpu, meter.client_cpu, len(batch))
                    self.add(f"{key}.{tags}", server.kind, sample)
                    if key == "deletes.first":
                        # What a server finishes after answering (Dockyard: the rest of
                        # the repository's index) is not the next sample's.
                        await asyncio.sleep(FIRST_DELETE_SETTLE)

    async def collect(self, rep: int, http: aiohttp.ClientSession) -> None:
        assert self.gc_store is not None
        timeout = max(120.0, self.plan.gc_repositories * 0.6)
        for server in self.order(rep):
            seconds, cpu = gc.collect(
                server.kind, self.gc_store, self.scratch, timeout, self.source
            )
            self.add("gc", server.kind, Sample(seconds, cpu))

    async def skopeo(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        source = self.scratch / "skopeo-image"
        skopeo.build_image(source, plan.skopeo_layers, plan.skopeo_layer_size)
        timeout = 300.0
        for server in self.order(rep):
            reference = f"docker://{server.host}/bench/skopeo:r{rep}"
            with self.meter(server, f"skopeo-push-r{rep}") as meter:
                seconds, cpu = skopeo.copy(f"oci:{source}:latest", reference, timeout)
            self.add("skopeo.push", server.kind, Sample(seconds, meter.server_cpu, cpu))
        for server in self.order(rep):
            reference = f"docker://{server.host}/bench/skopeo:r{rep}"
            target = self.scratch / f"skopeo-pulled-{server.kind}"
            shutil.rmtree(target, ignore_errors=True)
            with self.meter(server, f"skopeo-pull-r{rep}") as meter:
                seconds, cpu = skopeo.copy(reference, f"dir:{target}", timeout)
            shutil.rmtree(target, ignore_errors=True)
            self.add("skopeo.pull", server.kind, Sample(seconds, meter.server_cpu, cpu))

    async def mirror(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan, setup = self.plan, self.mirror_setup
        assert self.payload is not None and setup is not None
        stored_within = max(60.0, plan.mirror_size / MiB)
        for client in PULL_CLIENTS:
            # A new image for each client, so that each has a cold GET of its own; the
            # manifest GETs after this loop ask for the last one's tag.
            tag = f"r{rep}{client.slug}"
            blob = self.payload.blob(plan.mirror_size)
            manifest = await mirrors.push_image(
                http, setup.upstream.url, tag, self.fixture.config, blob
            )
            for server in self.order(rep, setup.mirrors):
                # As a client pulls: the manifest by tag first (cold too, not timed), then the
                # layer.
                await mirrors.get_manifest(http, server, tag, manifest)
                url = mirrors.blob_url(server, blob.digest)
                with self.meter(server, f"mirror-cold{client.slug}-r{rep}") as meter:
                    seconds, client_cpu = await _whole_gets(client, http, url, blob.size, 1)
                    # The server's CPU counts until the blob is stored; the time ends at the
                    # last byte.
                    await mirrors.wait_cached(server, blob, stored_within)
                key = f"mirror.cold{client.suffix}"
                self._add_transfer(key, server, seconds, blob.size, meter, client_cpu)
            repeat = plan.mirror_warm_repeat
            for server in self.order(rep, setup.mirrors):
                url = mirrors.blob_url(server, blob.digest)
                with self.meter(server, f"mirror-warm{client.slug}-r{rep}") as meter:
                    seconds, client_cpu = await _whole_gets(client, http, url, blob.size, repeat)
                work = blob.size * repeat
                key = f"mirror.warm{client.suffix}"
                self._add_transfer(key, server, seconds, work, meter, client_cpu)
            mirrors.discard(setup.servers, blob)
        headers = {"Accept": MANIFEST_ACCEPT}
        for c in plan.mirror_connections:
            for server in self.order(rep, setup.mirrors):
                url = mirrors.manifest_url(server, tag)
                name = f"mirror-tag-c{c}-r{rep}"
                with self.meter(server, name, backend=setup.upstream) as meter:
                    result = load.wrk(url, c, plan.load_seconds, headers=headers)
                self.add(
                    f"mirror.tag.c{c}",
                    server.kind,
                    Sample(result.rate, meter.server_cpu, result.client_cpu, result.requests),
                )
                self.add(f"mirror.tag.c{c}.p99", server.kind, Sample(result.p99_ms))
                self.add(
                    f"mirror.tag.c{c}.upstream",
                    server.kind,
                    Sample(meter.backend_cpu * 1e6 / result.requests),
                )

    async def on_s3(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan, setup, blob = self.plan, self.s3_setup, self.s3_blob
        assert self.payload is not None and setup is not None and blob is not None
        await self._moto_alone(http, setup.moto, self.payload.blob(plan.s3_pull_size))

        def warm(server: RegistryServer) -> Awaitable[bool]:
            return blobs.blob_exists(http, server.url, PULL_REPO, blob.digest)

        streaming = Stores(setup.streaming, setup.discard, setup.moto, warm)
        redirecting = Stores(setup.redirecting, setup.discard, setup.moto, warm)
        await self._push_mono(rep, http, "s3.push.mono", plan.s3_push_size, 1, streaming)
        await self._push_chunked(rep, http, "s3.push.chunked", plan.s3_chunked_size, streaming)
        await self._pull_whole(rep, http, "s3.pull.stream", blob, 1, streaming)
        await self._pull_whole(rep, http, "s3.pull.redirect", blob, 1, redirecting)

    async def _moto_alone(
        self, http: aiohttp.ClientSession, moto: s3.MotoServer, blob: Blob
    ) -> None:
        """What moto does with no registry in front: PUT and GET of pre-signed URLs, with
        the client the registry figures use; the ceiling of every S3 figure."""
        key = blob.digest.split(":", 1)[1]
        put = blobs.put_body(http, moto.presigned("put_object", key), blob, 200, "PUT to moto")
        get = blobs.pull(http, moto.presigned("get_object", key), blob.size)
        for method, transfer in (("put", _timed(put)), ("get", get)):
            before = moto.sample().cpu_seconds
            seconds = await transfer
            cpu = moto.sample().cpu_seconds - before
            self.add(f"limits.moto.{method}", MACHINE, Sample(blob.size / seconds / 1e6))
            self.add(f"limits.moto.{method}.cpu", MACHINE, Sample(cpu * 1e3 / (blob.size / 1e6)))
        moto.delete(moto.buckets[0], [s3.PROBE_PREFIX + key])

    def notes(self) -> list[str]:
        dockyard = next((s for s in self.servers if s.kind == DOCKYARD), None)
        access_log = (
            "access log on (one line per request to each server's log file; the mirror and S3 "
            "groups' own servers keep it off)"
            if any(server.access_log for server in self.servers)
            else "access log disabled"
        )
        notes = [
            (
                "Both servers: filesystem storage in a fresh temp dir, storage.delete enabled, "
                f"blobdescriptor cache inmemory, upload purging off, log level warn, {access_log}, "
                "catalog.maxentries 100000; loopback only; the test data fit in the page "
                "cache, so pulls read memory, not disk."
            ),
            (
                "Blob pushes use a new digest every time (a nonce at the end of the bytes); pushed "
                "blob files are removed from disk right after each sample."
            ),
            (
                "GETs are driven by wrk (1 thread), HEADs by ab -k (wrk 4.1.0 hangs on HEAD "
                "responses with Content-Length), manifest PUTs by wrk with a Lua script that sends "
                "a new manifest under a new tag per request, whole-blob pulls by curl (one "
                "connection, a buffer it keeps, as Go's clients read) and again by the bench's "
                "aiohttp client, which makes a new bytes object per piece it reads; other blob "
                "transfers and listings by that aiohttp client. On 2 cores the client competes "
                "with the server: its CPU is in the CPU table."
            ),
            (
                "Each manifest PUT sample starts after an untimed sync(2), so that neither server "
                "pays for write-back the other left: Distribution makes no PUT durable and leaves "
                "about 120 MiB dirty after 6 s of them, and Dockyard, which makes each PUT "
                "durable before answering, ran at about half its rate right after that."
            ),
            (
                "Both garbage-collects run with no server on the store, Dockyard's with "
                "--delay 0 --settle 1: alone with the store, it deletes in place without the "
                "grace period it takes beside a running server. Its time includes Python "
                "start-up; it also removes the deleted manifests' layer links, which "
                "Distribution 2.8 leaves."
            ),
        ]
        if "mirror" in self.groups:
            notes.append(
                "Registry mirror: one Dockyard upstream on loopback serves both mirrors, so only "
                "the mirror differs; each mirror has Distribution's proxy.remoteurl section "
                "pointing at it (default ttl). Every repetition pushes a new image (new layer "
                "digest, new tag) upstream for each of the two clients (curl and aiohttp); each "
                "mirror gets the manifest by tag, then the cold GET of the layer is timed to its "
                "last byte, and the mirror's CPU is counted until the blob is stored in it (the "
                "warm GETs, by the same client, wait for that). The manifest GETs "
                "by tag come after, with wrk; the upstream's CPU is not in the CPU table but in "
                "rows of its own (how much each mirror asks the upstream per warm tag GET)."
            )
        if "s3" in self.groups:
            notes.append(
                "Storage on S3: one moto server (python -m moto.server, loopback) with a bucket "
                "per kind; each kind runs two servers on its bucket with the same storage.s3 "
                f"section (path-style, plain HTTP, v4 signatures, chunksize {s3.CHUNK_SIZE >> 20} "
                "MiB, the rest defaults): one with storage.redirect.disable for the pushes and "
                "the streamed GET, one with the default redirect for the GET the client follows "
                "to moto's pre-signed URL. Each sample follows an untimed HEAD of a stored blob on "
                "the connection it then uses, so a worker's first use of its S3 client (set up "
                "on first request) is not timed. Pushed blobs are deleted from the bucket after "
                "each sample. The moto CPU rows are moto's CPU per MB during each sample (moto is "
                "Python, and shares the 2 cores with server and client); the moto-alone rows in "
                "the machine's limits are PUT and GET of pre-signed URLs with no registry between."
            )
        if "deletes" in self.groups:
            notes.append(
                "Manifest DELETEs: each repository holds its tags on one kept manifest and, beside "
                f"them, 1 + {self.plan.deletes} × repetitions manifests to delete, each under a "
                "tag of its own; every DELETE is by digest (which also removes the manifest's "
                "tags), sequential on one connection, and checked to have untagged it. The "
                "repositories are written in Distribution's layout before the servers start, so "
                "the first DELETE in a repository (timed alone, each repetition in a repository "
                "of its own of as many tags, one victim) is where Dockyard builds its reverse "
                "tag index; Distribution reads every tag at each DELETE. Each server is left "
                f"alone {FIRST_DELETE_SETTLE:g} s after its first DELETE, which Dockyard spends "
                "finishing the index."
            )
        if dockyard is not None:
            notes.append(f"Dockyard ran {dockyard.worker_count()} worker process(es).")
        return notes
