"""The benchmark's quick mode, kept working: it measures, it does not judge timings.

Runs ``python -m bench --quick`` as CI does: both servers on loopback, every figure
group at tiny sizes, one repetition. It must finish, exit 0, and report every figure
for Dockyard and for Distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench import load
from bench.machine import SendfileServer
from bench.report import losses, verdict
from bench.servers import (
    CLOCK_TICKS,
    DISTRIBUTION,
    DOCKYARD,
    PSS_EVERY,
    BenchError,
    ManagedProcess,
    PeakRss,
    RegistryServer,
    proc_cpu_seconds,
    sample_tree,
)
from bench.source import snapshot, working_tree
from bench.stats import Results, Sample

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(420)
def test_quick_benchmark_reports_both_servers(tmp_path: Path) -> None:
    report = tmp_path / "quick.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(report)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    # Each group heading, then figures with a Dockyard and a Distribution median.
    for group in (
        "1. Blob push, monolithic",
        "2. Blob push, chunked",
        "3. Blob pull",
        "4. Manifest and small-blob requests",
        "5. Manifest PUTs",
        "6. Catalog and tag listing",
        "7. Peak server RSS",
        "8. Garbage collection",
        "9. skopeo round trip",
        "10. Registry mirror",
        "11. Storage on S3",
        "12. Manifest DELETE by digest",
    ):
        assert any(group in row for row in rows), (group, text[:2000])
    measured = [row for row in rows if row.count("|") >= 8 and not row.startswith("| **")]
    assert len(measured) >= 20, text[:2000]


def test_a_snapshot_is_measured_from_bytecode(tmp_path: Path) -> None:
    source = snapshot("HEAD", tmp_path)
    modules = sorted((tmp_path / "dockyard").rglob("*.py"))
    assert modules
    for module in modules:
        assert list((module.parent / "__pycache__").glob(f"{module.stem}.*.pyc")), module
    # A process that may not write bytecode still loads it rather than the source.
    env = {**source.env(), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-v", "-c", "import dockyard.cli"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = [line for line in run.stderr.splitlines() if "code object from" in line]
    cli = [line for line in loaded if os.path.join(str(tmp_path), "dockyard", "") in line]
    assert cli and all(".pyc" in line for line in cli), cli[:5]


@pytest.mark.parametrize("access_log", [False, True])
def test_both_servers_write_access_lines_only_when_asked(tmp_path: Path, access_log: bool) -> None:
    # ``--access-log`` measures both servers as their defaults run them: one line per
    # request in each server's log file. Without it, neither writes one.
    source = working_tree()
    servers = [
        RegistryServer(
            DOCKYARD, tmp_path / DOCKYARD, 1, source.path, source.env(), access_log=access_log
        ),
        RegistryServer(DISTRIBUTION, tmp_path / DISTRIBUTION, access_log=access_log),
    ]
    agent = f"bench-access-log-test/{access_log}"
    try:
        for server in servers:
            server.start()
            request = urllib.request.Request(server.url + "/v2/", headers={"User-Agent": agent})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert (agent in server.log_path.read_text(errors="replace")) is access_log, server.kind


def test_equal_tick_counts_are_level_not_behind() -> None:
    # Two servers whose CPU differences are the same number of clock ticks, read at
    # different totals: the floats differ in their last bits.
    results = Results()
    figure = results.declare("cpu", "11. S3", "moto CPU", "ms/MB", False)
    for kind, before in ((DOCKYARD, 1234), (DISTRIBUTION, 0)):
        cpu = (before + 22) / CLOCK_TICKS - before / CLOCK_TICKS
        figure.add(kind, Sample(cpu * 1e3 / 268.4))
    assert figure.median(DOCKYARD) != figure.median(DISTRIBUTION)  # the float noise
    assert figure.level()
    assert verdict(figure) == "level"
    assert losses(results) == ["Dockyard is ahead or level on every figure measured by both."]

    behind = results.declare("rate", "1. push", "push", "MB/s", True)
    behind.add(DOCKYARD, Sample(99.0))
    behind.add(DISTRIBUTION, Sample(100.0))
    assert not behind.level()
    assert verdict(behind) == "**behind ×1.01**"
    assert len(losses(results)) == 1


def test_a_gap_inside_both_spreads_is_within_noise_and_still_listed() -> None:
    results = Results()
    # The mirror's cold GET of one full run: each median inside the other's min–max.
    noisy = results.declare("mirror", "10. mirror", "cold GET", "MB/s", True)
    for value in (450.0, 520.0, 570.0, 640.0, 708.0):
        noisy.add(DOCKYARD, Sample(value))
    for value in (426.0, 510.0, 585.0, 600.0, 677.0):
        noisy.add(DISTRIBUTION, Sample(value))
    # Overlapping spreads, but Dockyard's median is past all of Distribution's figures.
    clear = results.declare("gc", "8. GC", "collection", "s", False)
    for value in (2.9, 3.0, 3.1):
        clear.add(DOCKYARD, Sample(value))
    for value in (2.0, 2.1, 3.05):
        clear.add(DISTRIBUTION, Sample(value))
    ahead = results.declare("put", "5. PUTs", "8 clients", "PUT/s", True)
    for value in (371.0, 487.0, 750.0):
        ahead.add(DOCKYARD, Sample(value))
    for value in (382.0, 440.0, 503.0):
        ahead.add(DISTRIBUTION, Sample(value))

    assert noisy.within_noise() and ahead.within_noise()
    assert not clear.within_noise()
    assert verdict(noisy) == "within noise (behind ×1.03)"
    assert verdict(ahead) == "within noise (ahead)"
    assert verdict(clear) == "**behind ×1.43**"
    lines = losses(results)
    # The loss beyond the noise first, then the one within it; the gain in neither.
    assert lines[0].startswith("- 8. collection: Dockyard 3.00 (2.90–3.10) vs Distribution 2.10")
    assert lines[1] == ""
    assert "within noise" in lines[2]
    assert lines[4].startswith("- 10. cold GET: Dockyard 570 (450–708) vs Distribution 585")
    assert len(lines) == 5

    # One sample each says nothing about noise: a gap is a gap.
    single = Results()
    once = single.declare("push", "1. push", "push", "MB/s", True)
    once.add(DOCKYARD, Sample(99.0))
    once.add(DISTRIBUTION, Sample(100.0))
    assert not once.within_noise()
    assert verdict(once) == "**behind ×1.01**"


ALLOCATE = """
import time
print("ready", flush=True)
time.sleep(0.4)
block = bytearray(64 << 20)
for offset in range(0, len(block), 4096):
    block[offset] = 1
time.sleep(0.4)
del block
time.sleep(30)
"""


class Allocator(ManagedProcess):
    """A process that takes 64 MiB for a moment, then gives it back."""

    def __init__(self, log_path: Path) -> None:
        self.process = None
        self.log_path = log_path

    @property
    def label(self) -> str:
        return "allocator"

    @property
    def url(self) -> str:
        return ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", ALLOCATE]

    def _answers(self) -> bool:
        return "ready" in self.log_path.read_text()


def test_peak_pss_is_caught_while_most_samples_skip_it(tmp_path: Path) -> None:
    process = Allocator(tmp_path / "allocator.log")
    process.start()
    try:
        peak = PeakRss(process, interval=0.01)
        with peak.watch():
            time.sleep(1.5)
    finally:
        process.stop()
    assert peak.peak >= 64 << 20
    assert peak.peak_pss >= 60 << 20
    assert peak.samples >= 3 * PSS_EVERY
    # The RSS rises only while the block is touched; the rest are every PSS_EVERY-th.
    assert peak.pss_samples < peak.samples / 2


BURN = """
import threading, time
def burn():
    end = time.thread_time() + 0.15
    while time.thread_time() < end:
        pass
workers = [threading.Thread(target=burn) for _ in range(2)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print("burnt", flush=True)
time.sleep(30)
"""


def test_process_cpu_is_read_below_clock_ticks_with_exited_threads(tmp_path: Path) -> None:
    log = tmp_path / "burn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", BURN], stdout=out)
    try:
        deadline = time.monotonic() + 30
        while "burnt" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "burnt" in log.read_text()
        cpu = sample_tree(process.pid).cpu_seconds
        ticks = proc_cpu_seconds(process.pid)
    finally:
        process.kill()
        process.wait()
    # Both burning threads have exited: their 0.3 s still count, as in /proc, which
    # rounds to whole ticks where this has nanoseconds.
    assert cpu >= 0.3
    assert abs(cpu - ticks) <= 2 / CLOCK_TICKS
    assert round(cpu * CLOCK_TICKS, 6) != round(cpu * CLOCK_TICKS)


def test_curl_pulls_count_every_transfer_and_refuse_a_short_body(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    size = blob.stat().st_size
    with SendfileServer(blob) as server:
        pulled = load.curl_pull(server.url, size, 3)
        assert pulled.seconds > 0 and pulled.client_cpu >= 0
        # A body of another length than the blob's is an error, not a rate.
        with pytest.raises(BenchError, match="bytes of"):
            load.curl_pull(server.url, size + 1, 1)
