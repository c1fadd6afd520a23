"""The machine the numbers came from, and its raw limits: hashing, disk, loopback sendfile."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from bench.servers import DISTRIBUTION_BINARY, free_port

MiB = 1 << 20


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def describe() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"nproc {os.cpu_count()}, {_cpu_model()}, {_memory()} RAM, "
        f"Linux {platform.release()}",
        "python": sys.version.split()[0],
        "distribution": _version([DISTRIBUTION_BINARY, "--version"]),
        "load generators": f"{_version(['wrk', '--version'])}; "
        f"{_version(['ab', '-V'])}; {_version(['skopeo', '--version'])}; "
        # curl's first line goes on to list every library it was built with.
        + " ".join(_version(["curl", "--version"]).split()[:2]),
    }


def sha256_rate(size: int) -> float:
    """MB/s of hashlib.sha256 over ``size`` bytes in memory, on one core."""
    data = os.urandom(size)
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    return size / (time.perf_counter() - started) / 1e6


def disk_write_rate(directory: Path, size: int, call: int = MiB) -> float:
    """MB/s writing ``size`` bytes to a new file in ``call``-sized writes, then fsync, as
    ``dd bs=call conv=fsync``. Calls above 32 KiB take large page-cache folios, which
    some virtual machines back far more slowly (dockyard/storage/writes.py)."""
    block = memoryview(os.urandom(MiB))
    path = directory / "disk-rate.bin"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MiB):
            for offset in range(0, MiB, call):
                os.write(fd, block[offset : offset + call])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return size / elapsed / 1e6


class SendfileServer:
    """bench/sendfile_server.py in its own process, serving one file."""

    def __init__(self, path: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sendfile_server", str(path), str(self.port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
