"""Optional py-spy sampling of Dockyard while a figure runs (``--profile DIR``).

py-spy attaches to the running server (and, with ``--subprocesses``, its workers)
without restarting it; ``--nonblocking`` keeps it from pausing the server to sample.
The raw output is in collapsed-stack format (flamegraph.pl and speedscope read it), and
a summary of the functions that took the most samples is written beside it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.servers import DOCKYARD, BenchError, RegistryServer

PY_SPY = "py-spy"
_LINE = re.compile(r"^(.*) (\d+)$")


class Profiler:
    def __init__(self, directory: Path | None, rate: int = 200) -> None:
        self.directory = directory
        self.rate = rate
        if directory is not None:
            if shutil.which(PY_SPY) is None:
                raise BenchError("--profile needs py-spy: pip install py-spy==0.4.3")
            directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def record(self, server: RegistryServer, name: str) -> Iterator[None]:
        if self.directory is None or server.kind != DOCKYARD or server.process is None:
            yield
            return
        raw = self.directory / f"{name}.txt"
        process = subprocess.Popen(
            [
                PY_SPY,
                "record",
                "--pid",
                str(server.process.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attaching takes a moment; samples before it would be lost
        try:
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if raw.exists():
                (self.directory / f"{name}.top.txt").write_text(summarize(raw))


def _function(frame: str) -> str:
    # "handler (dockyard/api/blobs.py:42)" -> "handler (dockyard/api/blobs.py)"
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarize(raw: Path, top: int = 30) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        frames = [_function(frame) for frame in match.group(1).split(";") if frame]
        count = int(match.group(2))
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "own time (leaf frames):"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
