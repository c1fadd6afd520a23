"""The small parent of several workers: what it holds, what it replaces, how it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from tests.conftest import ServerFactory


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        found.update(int(child) for child in text.split())
    return found


def mapped_files(pid: int) -> set[str]:
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            names.add(os.path.basename(fields[5]))
    return names


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_parent_holds_no_application(server_factory: ServerFactory) -> None:
    server = server_factory(config={"dockyard": {"workers": 2}})
    assert server.process is not None
    parent = server.process.pid
    workers = children_of(parent)
    assert len(workers) == 2
    # The workers have aiohttp's compiled modules mapped, but not pydantic's: the
    # configuration was checked in a process of its own. The parent, which only waits on
    # the workers, has neither.
    for worker in workers:
        worker_files = mapped_files(worker)
        assert any(name.startswith("_http_parser") for name in worker_files)
        assert not any(name.startswith("_pydantic_core") for name in worker_files)
        # No htpasswd file is configured, so no password is ever checked.
        assert not any(name.startswith("_bcrypt") for name in worker_files)
    parent_files = mapped_files(parent)
    assert not any(name.startswith(("_pydantic_core", "_http_parser")) for name in parent_files)
    assert b"dockyard.supervisor" in Path(f"/proc/{parent}/cmdline").read_bytes()


def test_replaced_workers_keep_the_configuration_the_registry_started_with(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        config={"dockyard": {"workers": 2}, "http": {"headers": {"X-Generation": ["first"]}}}
    )
    assert server.process is not None
    parent = server.process.pid
    # An edit of the file after the start must not reach a worker started later.
    edited = yaml.safe_load(server.config_path.read_text())
    edited["http"]["headers"]["X-Generation"] = ["second"]
    server.config_path.write_text(yaml.safe_dump(edited))
    first = children_of(parent)
    for pid in first:
        os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        children = children_of(parent)
        if len(children) != 2 or children & first:
            return False
        # Between its fork and its exec a child still shows the parent's command line:
        # wait until both run the replacement's.
        try:
            return all(
                b"run_replacement" in Path(f"/proc/{pid}/cmdline").read_bytes()
                for pid in children
            )
        except FileNotFoundError:
            return False

    wait_for(replaced)
    replacements = children_of(parent)

    def answering() -> bool:
        try:
            return httpx.get(server.url + "/v2/", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answering)
    for _ in range(8):
        # A new connection each time, so both replacements answer some of them.
        response = httpx.get(server.url + "/v2/", timeout=10)
        assert response.headers["X-Generation"] == "first"
    assert "exited with status 9; restarting" in server.log()
    server.stop()
    assert server.process.returncode == 0
    for pid in replacements:
        assert not Path(f"/proc/{pid}").exists()


# A parent as dockyard.server.supervise leaves it: a stop signal is blocked while the
# worker (here a sleeping child) is forked; the signal arrives before the handover.
HANDOVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from dockyard.logs import setup_logging
    from dockyard.supervisor import STOP_SIGNALS, Supervisor, WorkerPlan, package_root

    setup_logging("info", "text", {})
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    child = os.fork()
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        time.sleep(60)
        os._exit(3)
    print(child, flush=True)
    listen_fd = os.open(os.devnull, os.O_RDONLY)
    config_fd = os.memfd_create("config", 0)
    plan = WorkerPlan(
        children={child: 0},
        listen_fd=listen_fd,
        debug_fd=None,
        metrics_dir=sys.argv[2],
        config_fd=config_fd,
        drain=1.0,
        log_settings=("info", "text", {}),
    )
    os.kill(os.getpid(), signal.SIGTERM)
    if sys.argv[1] == "no-exec":
        sys.executable = "/nonexistent/python"
    supervisor = Supervisor(plan, package_root())
    supervisor.become_small()
    supervisor.run()
    """
)


def run_handover(mode: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"x")
    process = subprocess.Popen(
        [sys.executable, "-c", HANDOVER, mode, str(metrics_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    stdout, stderr = process.communicate(timeout=30)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    # The parent's leftovers go with it.
    assert not metrics_dir.exists()
    return result, child


def test_a_stop_signal_sent_during_the_handover_stops_the_workers(tmp_path: Path) -> None:
    result, child = run_handover("exec", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stopping" in result.stderr and "stopped" in result.stderr
    assert not Path(f"/proc/{child}").exists()


def test_the_parent_supervises_in_place_when_it_cannot_exec(tmp_path: Path) -> None:
    result, child = run_handover("no-exec", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "supervising from here" in result.stderr
    assert "stopping" in result.stderr
    assert not Path(f"/proc/{child}").exists()
