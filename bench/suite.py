"""The run: prepare both stores, then every figure for both servers, alternating.

Each repetition runs every figure group in turn; inside a group the servers take turns
point by point, and the order flips every repetition, so drift on a noisy machine
(another tenant, page-cache state, thermal) lands on both sides alike.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import blobs, gc, listing, load, machine, mirrors, skopeo
from bench.fixtures import MANIFEST_ACCEPT, Fixture, check_get, make_fixture, push_fixture
from bench.layout import OCI_MANIFEST, image_manifest
from bench.payload import Blob, Payload
from bench.plan import MiB, Plan, size_label
from bench.profile import Profiler
from bench.report import MACHINE
from bench.servers import DOCKYARD, BenchError, PeakRss, RegistryServer
from bench.source import DockyardSource
from bench.stats import Results, Sample

Log = Callable[[str], None]

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

# (key, label, method, which URL)
LOAD_TARGETS = (
    ("get-tag", "GET manifest by tag", "GET", "tag"),
    ("get-digest", "GET manifest by digest", "GET", "digest"),
    ("head-tag", "HEAD manifest by tag", "HEAD", "tag"),
    ("head-digest", "HEAD manifest by digest", "HEAD", "digest"),
    ("get-blob", "GET 4 KiB blob", "GET", "blob"),
)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Meter:
    server_cpu: float = 0.0
    client_cpu: float = 0.0


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
    ) -> None:
        self.source = source
        self.mirror_setup = mirror
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
        self.gc_store: gc.GcStore | None = None
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
            declare(
                "limits.disk",
                G_LIMITS,
                f"disk write + fsync, {size_label(plan.disk_size)}",
                "MB/s",
                True,
            )
            declare(
                "limits.sendfile",
                G_LIMITS,
                f"plain sendfile server → same client, {size_label(plan.pull_size)}",
                "MB/s",
                True,
            )
        if "push" in self.groups:
            for size in plan.push_sizes:
                note = f"{plan.small_push_repeat} in a row" if size == min(plan.push_sizes) else ""
                declare(f"push.mono.{size}", G_MONO, size_label(size), "MB/s", True, "MB", note)
            declare(
                "push.chunked",
                G_CHUNKED,
                f"{size_label(plan.chunked_size)} in {size_label(plan.chunk)} PATCHes",
                "MB/s",
                True,
                "MB",
            )
        if "pull" in self.groups:
            repeat = f", {plan.pull_repeat} in a row" if plan.pull_repeat > 1 else ""
            declare(
                "pull.whole",
                G_PULL,
                f"GET {size_label(plan.pull_size)}{repeat}",
                "MB/s",
                True,
                "MB",
            )
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
            declare(
                "mirror.cold", G_MIRROR, f"cold GET {mirrored} (not cached)", "MB/s", True, "MB"
            )
            repeat = f", {plan.mirror_warm_repeat} in a row" if plan.mirror_warm_repeat > 1 else ""
            declare(
                "mirror.warm", G_MIRROR, f"warm GET {mirrored} (cached){repeat}", "MB/s", True, "MB"
            )
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

    def add(self, key: str, kind: str, sample: Sample) -> None:
        self.results.add(key, kind, sample)

    def order(self, rep: int, servers: list[RegistryServer] | None = None) -> list[RegistryServer]:
        servers = self.servers if servers is None else servers
        return list(servers) if rep % 2 == 0 else list(reversed(servers))

    @contextmanager
    def meter(
        self, server: RegistryServer, name: str, rss: PeakRss | None = None
    ) -> Iterator[Meter]:
        found = Meter()
        server_before, client_before = server.sample().cpu_seconds, self_cpu()
        with self.profiler.record(server, name), rss.watch() if rss else nullcontext():
            yield found
        found.server_cpu = server.sample().cpu_seconds - server_before
        found.client_cpu = self_cpu() - client_before
        server.check_alive()

    # -- preparation -------------------------------------------------------------------

    def prepare_stores(self) -> None:
        """Before the servers start: the listing layout in every store, the GC master."""
        plan = self.plan
        if "listing" in self.groups:
            self.log(f"writing {plan.catalog_repositories:,} repositories and {plan.tags:,} tags")
            first = self.servers[0].root
            listing.populate(first, plan.catalog_repositories, plan.tags)
            for server in self.servers[1:]:
                subprocess.run(["cp", "-a", f"{first}/.", str(server.root)], check=True)
        if "gc" in self.groups:
            self.log(f"writing the GC store ({plan.gc_repositories:,} repositories)")
            self.gc_store = gc.build_store(
                self.scratch / "gc-master", plan.gc_repositories, plan.gc_per_repository
            )
        if self.groups & {"limits", "push", "pull", "mirror"}:
            self.log(f"writing {size_label(plan.largest_blob)} of random test data")
            self.payload = Payload(
                self.scratch / "payload.bin",
                [*plan.push_sizes, plan.chunked_size, plan.pull_size, plan.mirror_size],
            )

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
                await blobs.push_monolithic(http, server.url, "bench/pull", self.pull_blob)

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
            ("gc", self.collect),
            ("skopeo", self.skopeo),
            ("mirror", self.mirror),
        ]
        for group, step in steps:
            if group in self.groups:
                self.log(f"rep {rep + 1}/{self.plan.reps}: {group}")
                await step(rep, http)

    async def limits(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        assert self.payload is not None
        self.add("limits.sha256", MACHINE, Sample(machine.sha256_rate(plan.sha_size)))
        self.add(
            "limits.disk", MACHINE, Sample(machine.disk_write_rate(self.scratch, plan.disk_size))
        )
        with machine.SendfileServer(self.payload.path) as server:
            # The file may be larger than the pull size; the rate is per byte received.
            size = self.payload.path.stat().st_size
            seconds = 0.0
            for _ in range(plan.pull_repeat):
                seconds += await blobs.pull(http, server.url, size)
            self.add("limits.sendfile", MACHINE, Sample(size * plan.pull_repeat / seconds / 1e6))

    async def push(self, rep: int, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        assert self.payload is not None
        for size in plan.push_sizes:
            count = plan.small_push_repeat if size == min(plan.push_sizes) else 1
            for server in self.order(rep):
                pushed = [self.payload.blob(size) for _ in range(count)]
                with self.meter(server, f"push-mono-{size_label(size)}-r{rep}") as meter:
                    seconds = 0.0
                    for blob in pushed:
                        seconds += await blobs.push_monolithic(http, server.url, "bench/push", blob)
                self._discard(server, pushed)
                work = size * count
                self.add(
                    f"push.mono.{size}",
                    server.kind,
                    Sample(work / seconds / 1e6, meter.server_cpu, meter.client_cpu, work),
                )
        for server in self.order(rep):
            blob = self.payload.blob(plan.chunked_size)
            with self.meter(server, f"push-chunked-r{rep}") as meter:
                seconds = await blobs.push_chunked(http, server.url, "bench/push", blob, plan.chunk)
            self._discard(server, [blob])
            self.add(
                "push.chunked",
                server.kind,
                Sample(blob.size / seconds / 1e6, meter.server_cpu, meter.client_cpu, blob.size),
            )

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
        for server in self.order(rep):
            url = f"{server.url}/v2/bench/pull/blobs/{blob.digest}"
            with self.meter(server, f"pull-whole-r{rep}", rss[server.kind]) as meter:
                seconds = 0.0
                for _ in range(plan.pull_repeat):
                    seconds += await blobs.pull(http, url, blob.size)
            work = blob.size * plan.pull_repeat
            self.add(
                "pull.whole",
                server.kind,
                Sample(work / seconds / 1e6, meter.server_cpu, meter.client_cpu, work),
            )
        script = load.ranges_script(
            f"/v2/bench/pull/blobs/{blob.digest}", blob.size, plan.range_span, seed=rep + 1
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
        tag = f"r{rep}"
        blob = self.payload.blob(plan.mirror_size)
        manifest = await mirrors.push_image(
            http, setup.upstream.url, tag, self.fixture.config, blob
        )
        stored_within = max(60.0, plan.mirror_size / MiB)
        for server in self.order(rep, setup.mirrors):
            # As a client pulls: the manifest by tag first (cold too, not timed), then the layer.
            await mirrors.get_manifest(http, server, tag, manifest)
            with self.meter(server, f"mirror-cold-r{rep}") as meter:
                seconds = await blobs.pull(http, mirrors.blob_url(server, blob.digest), blob.size)
                # The server's CPU counts until the blob is stored; the time ends at the last byte.
                await mirrors.wait_cached(server, blob, stored_within)
            self.add(
                "mirror.cold",
                server.kind,
                Sample(blob.size / seconds / 1e6, meter.server_cpu, meter.client_cpu, blob.size),
            )
        for server in self.order(rep, setup.mirrors):
            url = mirrors.blob_url(server, blob.digest)
            with self.meter(server, f"mirror-warm-r{rep}") as meter:
                seconds = 0.0
                for _ in range(plan.mirror_warm_repeat):
                    seconds += await blobs.pull(http, url, blob.size)
            work = blob.size * plan.mirror_warm_repeat
            self.add(
                "mirror.warm",
                server.kind,
                Sample(work / seconds / 1e6, meter.server_cpu, meter.client_cpu, work),
            )
        headers = {"Accept": MANIFEST_ACCEPT}
        for c in plan.mirror_connections:
            for server in self.order(rep, setup.mirrors):
                url = mirrors.manifest_url(server, tag)
                upstream_before = setup.upstream.sample().cpu_seconds
                with self.meter(server, f"mirror-tag-c{c}-r{rep}") as meter:
                    result = load.wrk(url, c, plan.load_seconds, headers=headers)
                upstream_cpu = setup.upstream.sample().cpu_seconds - upstream_before
                self.add(
                    f"mirror.tag.c{c}",
                    server.kind,
                    Sample(result.rate, meter.server_cpu, result.client_cpu, result.requests),
                )
                self.add(f"mirror.tag.c{c}.p99", server.kind, Sample(result.p99_ms))
                self.add(
                    f"mirror.tag.c{c}.upstream",
                    server.kind,
                    Sample(upstream_cpu * 1e6 / result.requests),
                )
        mirrors.discard(setup.servers, blob)

    def notes(self) -> list[str]:
        dockyard = next((s for s in self.servers if s.kind == DOCKYARD), None)
        notes = [
            (
                "Both servers: filesystem storage in a fresh temp dir, storage.delete enabled, "
                "blobdescriptor cache inmemory, upload purging off, log level warn, access log "
                "disabled, catalog.maxentries 100000; loopback only; the test data fit in the page "
                "cache, so pulls read memory, not disk."
            ),
            (
                "Blob pushes use a new digest every time (a nonce at the end of the bytes); pushed "
                "blob files are removed from disk right after each sample."
            ),
            (
                "GETs are driven by wrk (1 thread), HEADs by ab -k (wrk 4.1.0 hangs on HEAD "
                "responses with Content-Length), manifest PUTs by wrk with a Lua script that sends "
                "a new manifest under a new tag per request, blob transfers and listings by "
                "an aiohttp client in the bench process. On 2 cores the client competes with the "
                "server: its CPU is in the CPU table."
            ),
            (
                "Dockyard's garbage-collect runs with --delay 0 --settle 1, so its time includes "
                "a 1 s settle wait and Python start-up; it also removes the deleted manifests' "
                "layer links, which Distribution 2.8 leaves."
            ),
        ]
        if "mirror" in self.groups:
            notes.append(
                "Registry mirror: one Dockyard upstream on loopback serves both mirrors, so only "
                "the mirror differs; each mirror has Distribution's proxy.remoteurl section "
                "pointing at it (default ttl). Every repetition pushes a new image (new layer "
                "digest, new tag) upstream; each mirror gets the manifest by tag, then the cold "
                "GET of the layer is timed to its last byte, and the mirror's CPU is counted "
                "until the blob is stored in it (the warm GETs wait for that). The manifest GETs "
                "by tag come after, with wrk; the upstream's CPU is not in the CPU table but in "
                "rows of its own (how much each mirror asks the upstream per warm tag GET)."
            )
        if dockyard is not None:
            notes.append(f"Dockyard ran {dockyard.worker_count()} worker process(es).")
        return notes
