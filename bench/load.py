"""Request-rate and pull figures with C clients, so the client is not the bottleneck.

Whole-blob pulls use curl, which reads into one buffer it keeps, as the Go clients
(containerd, docker, skopeo) do. GETs use wrk (one thread: on two cores every client
thread takes CPU from the server). HEADs use ApacheBench: Debian's wrk 4.1.0 waits for
a body after a HEAD response that carries Content-Length and never completes the
request. ab's CSV gives the latency percentiles with sub-millisecond precision, unlike
its text summary.
Each run's client CPU time comes from getrusage(RUSAGE_CHILDREN) around it: the
servers are children too, but only reaped children count.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.servers import BenchError

WRK = "wrk"
AB = "ab"
CURL = "curl"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p99_ms: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def require_tools() -> None:
    missing = [tool for tool in (WRK, AB, CURL) if shutil.which(tool) is None]
    if missing:
        raise BenchError(
            f"missing load generators: {', '.join(missing)} "
            "(apt-get install -y wrk apache2-utils curl)"
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], timeout: float) -> tuple[str, float]:
    before = _children_cpu()
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
        raise BenchError(f"{command[0]} did not finish within {timeout:.0f}s") from error
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-1500:]}"
        )
    return done.stdout, _children_cpu() - before


def whole_seconds(duration: float) -> int:
    """wrk and ab take whole seconds only."""
    return max(1, round(duration))


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> tuple[int, float, float]:
    """(requests, seconds, p99 ms) from wrk --latency output; errors raise."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not done or not p99:
        raise BenchError(f"unexpected wrk output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise BenchError(f"wrk saw {bad.group(1)} error responses:\n{output}")
    errors = re.search(r"Socket errors: (.*)", output)
    if errors and re.search(r"[1-9]", errors.group(1).split("timeout")[0]):
        raise BenchError(f"wrk socket errors: {errors.group(1)}")
    seconds = _duration_ms(done.group(2) + done.group(3)) / 1000.0
    return int(done.group(1)), seconds, _duration_ms(p99.group(1))


def _header_args(headers: Mapping[str, str] | None) -> list[str]:
    return [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]


def wrk(
    url: str,
    connections: int,
    duration: float,
    script: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        command = [
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{whole_seconds(duration)}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        if script is not None:
            path = Path(scratch) / "script.lua"
            path.write_text(script)
            command += ["-s", str(path)]
        command += _header_args(headers)
        output, cpu = _run([*command, url], timeout=duration + 30)
    requests, seconds, p99 = parse_wrk(output)
    if requests == 0:
        raise BenchError(f"wrk completed no request against {url}")
    return LoadResult(requests, seconds, p99, cpu)


def ab_head(
    url: str, connections: int, duration: float, headers: Mapping[str, str] | None = None
) -> LoadResult:
    """HEAD with keep-alive for ``duration`` seconds (the request cap only sizes ab's table)."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        csv = Path(scratch) / "percentiles.csv"
        command = [
            AB,
            "-q",
            "-i",
            "-k",
            "-c",
            str(connections),
            "-t",
            str(whole_seconds(duration)),
            "-n",
            "2000000",
            "-s",
            "10",
            "-e",
            str(csv),
            *_header_args(headers),
            url,
        ]
        output, cpu = _run(command, timeout=duration + 30)
        percentiles = dict(
            line.split(",", 1) for line in csv.read_text().splitlines()[1:] if "," in line
        )
    done = re.search(r"Complete requests:\s+(\d+)", output)
    taken = re.search(r"Time taken for tests:\s+([\d.]+) seconds", output)
    failed = re.search(r"Failed requests:\s+(\d+)", output)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    if not done or not taken or "99" not in percentiles:
        raise BenchError(f"unexpected ab output:\n{output}")
    if (failed and int(failed.group(1))) or non2xx:
        raise BenchError(f"ab saw failed or error responses:\n{output}")
    return LoadResult(int(done.group(1)), float(taken.group(1)), float(percentiles["99"]), cpu)


@dataclass(frozen=True)
class PullResult:
    seconds: float
    client_cpu: float


def curl_pull(url: str, size: int, repeat: int) -> PullResult:
    """``repeat`` GETs of ``url`` in a row on one kept-alive connection, each body of
    ``size`` bytes read and thrown away; seconds summed over the transfers."""
    command = [CURL, "--silent", "--show-error", "--no-progress-meter"]
    command += ["--write-out", "%{http_code} %{size_download} %{time_total}\\n"]
    for _ in range(repeat):
        command += ["--output", "/dev/null", url]
    output, cpu = _run(command, timeout=60 + repeat * size / 50e6)
    transfers = [line.split() for line in output.splitlines() if line.strip()]
    if len(transfers) != repeat:
        raise BenchError(f"curl reported {len(transfers)} transfers of {repeat}:\n{output}")
    seconds = 0.0
    for status, received, taken in transfers:
        if status != "200" or int(received) != size:
            raise BenchError(f"GET {url}: status {status}, {received} bytes of {size}")
        seconds += float(taken)
    return PullResult(seconds, cpu)


def ranges_script(path: str, size: int, span: int, seed: int) -> str:
    """Random ``span``-byte ranges of a ``size``-byte blob; the same sequence for both servers."""
    return f"""
math.randomseed({seed})
request = function()
  local first = math.random(0, {size - span})
  return wrk.format("GET", "{path}", {{["Range"] = "bytes=" .. first .. "-" .. (first + {span - 1})}})
end
"""


def manifest_put_script(repo: str, prefix: str, template: str, media_type: str) -> str:
    """PUT a different manifest under a new tag on every request.

    ``template`` is the manifest JSON with one ``%s`` that receives a unique id, so
    every body has its own digest and the server writes a new revision each time.
    """
    return f"""
local counter = 0
local template = [==[{template}]==]
request = function()
  counter = counter + 1
  local id = "{prefix}" .. counter
  return wrk.format("PUT", "/v2/{repo}/manifests/" .. id,
    {{["Content-Type"] = "{media_type}"}}, string.format(template, id))
end
"""
