"""Start Dockyard and Distribution with equivalent configurations, and watch their processes.

The launcher is the benchmark's own rather than tests/support/servers.py: it needs the
worker count, a quiet access log and process-tree accounting (RSS, CPU) that the tests
have no use for, and the benchmark must not break when the test helpers change.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
DOCKYARD = "dockyard"
DISTRIBUTION = "distribution"
KINDS = (DOCKYARD, DISTRIBUTION)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A failure the benchmark reports in one line instead of a traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def registry_config(
    root: Path,
    addr: str,
    extra: Mapping[str, Any] | None = None,
    storage: Mapping[str, Any] | None = None,
    access_log: bool = False,
) -> dict[str, Any]:
    """The configuration both servers get: same storage, same logging, same limits.

    The blob descriptor cache is on for both because that is how registry:2 ships
    (Debian's and the image's config.yml both enable it); upload purging is off so a
    background sweep cannot land in the middle of a measurement. ``storage`` replaces
    the filesystem driver (an ``s3`` section, with ``redirect`` beside it). The access
    log is off unless ``access_log``, as both servers' own defaults have it on: one line
    per request to the server's log file.
    """
    driver = dict(storage) if storage else {"filesystem": {"rootdirectory": str(root)}}
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {
            **driver,
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": addr},
        # The listing figure asks for the whole catalog in one page; both servers refuse
        # n above maxentries, so both get the same higher limit.
        "catalog": {"maxentries": 100_000},
    }
    for key, value in (extra or {}).items():
        config[key] = value
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))


@dataclass
class ProcessSample:
    rss_bytes: int
    # Proportional set size: each page shared by n processes counts 1/n, so pages a
    # forking server's workers share with their parent are not counted once per process.
    pss_bytes: int
    hwm_bytes: int
    cpu_seconds: float
    processes: int


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(child) for child in text.split())
    except OSError:
        pass
    return found


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (Dockyard's supervisor forks its workers)."""
    tree = [pid]
    index = 0
    while index < len(tree):
        tree.extend(_children(tree[index]))
        index += 1
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_cpu_clock(pid: int) -> int:
    """Linux's CPU-time clock of a whole process (``clock_getcpuclockid`` for another
    process): its threads' time to the nanosecond, those that have exited included."""
    # CPUCLOCK_SCHED of the process: the bitwise complement of the pid, shifted, with
    # the scheduler's clock in the low bits.
    return ((~pid) << 3) | 2


def proc_cpu_seconds(pid: int) -> float:
    """CPU time of the process so far as /proc counts it: whole clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which may itself contain spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process so far. /proc counts it in clock ticks (10 ms here), as
    large as 5 % of moto's CPU during one 256 MiB GET; the process's CPU clock counts
    nanoseconds. /proc serves where that clock cannot be read."""
    try:
        return time.clock_gettime_ns(process_cpu_clock(pid)) / 1e9
    except OSError:
        return proc_cpu_seconds(pid)


def _rss_bytes(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmRSS") for p in pids) * 1024


def _pss_bytes(pids: list[int]) -> int:
    return sum(_pss_kib(p) for p in pids) * 1024


def sample_tree(pid: int) -> ProcessSample:
    pids = process_tree(pid)
    return ProcessSample(
        rss_bytes=_rss_bytes(pids),
        pss_bytes=_pss_bytes(pids),
        hwm_bytes=sum(_status_kib(p, "VmHWM") for p in pids) * 1024,
        cpu_seconds=sum(_cpu_seconds(p) for p in pids),
        processes=len(pids),
    )


class ManagedProcess(ABC):
    """A server the bench starts in a session of its own, waits for, watches and stops.

    Subclasses say how to run it (``command``, ``popen_env``, ``popen_cwd``), when it is up
    (``_answers``, ``_ready``) and what it is called; every process the bench starts is
    stopped the same way, on success, errors, Ctrl-C and the time limit alike.
    """

    process: subprocess.Popen[bytes] | None
    log_path: Path

    @property
    @abstractmethod
    def label(self) -> str: ...

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def command(self) -> list[str]: ...

    def describe(self) -> str:
        return f"{len(self.pids())} process(es)"

    def popen_env(self) -> dict[str, str] | None:
        return None

    def popen_cwd(self) -> Path | None:
        return None

    @abstractmethod
    def _answers(self) -> bool: ...

    def _ready(self, deadline: float) -> None:
        """After the first answer: whatever else start-up needs before measuring."""

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            # A session of its own, so stopping it reaches every process it forked.
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.popen_cwd(),
                env=self.popen_env(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.label} exited at start-up:\n{self.log_tail()}")
            if self._answers():
                self._ready(deadline)
                return
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.label} did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return process_tree(self.process.pid)

    def sample(self) -> ProcessSample:
        if self.process is None:
            return ProcessSample(0, 0, 0, 0.0, 0)
        return sample_tree(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"{self.label} is not running:\n{self.log_tail()}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        except ProcessLookupError:
            pass


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (or 401: up, but asking for credentials)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as error:
        return error.code == 401
    except OSError:
        return False


@dataclass
class RegistryServer(ManagedProcess):
    """One registry process (and its workers) with its own config file and data directory."""

    kind: str
    workdir: Path
    workers: int | None = None
    # Where ``python -m dockyard`` runs from (bench/source.py), and the environment of
    # either kind (Distribution on S3 needs a variable of its own).
    cwd: Path | None = None
    env: dict[str, str] | None = None
    # Top-level config sections added to the shared shape (a mirror's ``proxy``), and
    # what this server is for when it is not one of the two measured side by side.
    config_extra: dict[str, Any] | None = None
    role: str = ""
    # Storage sections in place of the filesystem driver (``s3``, ``redirect``).
    storage: dict[str, Any] | None = None
    # Its access log on, written with the rest of its log (``--access-log``).
    access_log: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = self.workdir / "data"
        self.root.mkdir(exist_ok=True)
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "server.log"
        extra: dict[str, Any] = dict(self.config_extra or {})
        if self.kind == DOCKYARD and self.workers is not None:
            extra["dockyard"] = {"workers": self.workers}
        config = registry_config(
            self.root, f"127.0.0.1:{self.port}", extra, self.storage, self.access_log
        )
        write_config(self.config_path, config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        name = "Dockyard" if self.kind == DOCKYARD else "Distribution"
        return f"{name} {self.role}" if self.role else name

    def command(self) -> list[str]:
        if self.kind == DISTRIBUTION:
            return [DISTRIBUTION_BINARY, "serve", str(self.config_path)]
        return [sys.executable, "-m", "dockyard", "serve", str(self.config_path)]

    def popen_env(self) -> dict[str, str] | None:
        return self.env

    def popen_cwd(self) -> Path | None:
        return self.cwd

    def start(self, timeout: float = 30.0) -> None:
        if self.kind == DISTRIBUTION and not shutil.which(DISTRIBUTION_BINARY):
            raise BenchError(f"{DISTRIBUTION_BINARY} not found: apt-get install -y docker-registry")
        super().start(timeout)

    def _answers(self) -> bool:
        return answers(self.url + "/v2/")

    def _ready(self, deadline: float) -> None:
        # The first worker may answer before its siblings have forked; counting too
        # early would report one worker and leave the others' start-up in the first figure.
        expected = self.workers
        if self.kind != DOCKYARD or expected is None or expected <= 1:
            time.sleep(0.3)
            return
        while time.monotonic() < deadline and self.worker_count() < expected:
            time.sleep(0.05)
        time.sleep(0.3)

    def worker_count(self) -> int:
        """Processes serving requests: the forked workers, or the process itself if none."""
        if self.process is None:
            return 0
        return max(len(self.pids()) - 1, 1)

    def describe(self) -> str:
        return f"{self.worker_count()} worker process(es)"


# Reading a process's PSS walks its page tables (smaps_rollup): about 0.3 ms of CPU per
# process here, with that process's memory map locked meanwhile; its RSS costs a tenth.
PSS_EVERY = 10


class PeakRss:
    """Peak summed RSS (and PSS) of a server's process tree, sampled in a thread while
    it is watched.

    VmHWM is per process and never resets, so the figure is the largest sum of VmRSS
    samples taken every ``interval`` seconds during the ``watch()`` blocks, which may be
    many (the figures alternate between the servers point by point). The PSS is read
    where the RSS is at its highest yet and every ``PSS_EVERY``-th sample besides (pages
    that stop being shared move the PSS, not the RSS): reading it every time took 1 ms
    of CPU every 20 ms from the cores the servers were measured on.
    """

    def __init__(self, server: ManagedProcess, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self.pss_samples = 0

    def _take(self, last: bool = False) -> None:
        process = self.server.process
        if process is None:
            return
        pids = process_tree(process.pid)
        rss = _rss_bytes(pids)
        if last or rss > self.peak or self.samples % PSS_EVERY == 0:
            self.peak_pss = max(self.peak_pss, _pss_bytes(pids))
            self.pss_samples += 1
        self.peak = max(self.peak, rss)
        self.samples += 1

    @contextmanager
    def watch(self) -> Iterator[None]:
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                self._take()
                stop.wait(self.interval)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            self._take(last=True)
