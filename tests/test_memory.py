"""The malloc arena limit of serving processes, counted by glibc itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dockyard.memory import ARENA_ENV, ARENAS

# Eight threads that each allocate from the C heap while all eight are alive, then the
# arena count as glibc's malloc_info reports it (one <heap nr=...> per arena).
PROGRAM = textwrap.dedent(
    """
    import ctypes, sys, threading
    from dockyard.memory import limit_malloc_arenas

    print("limited" if limit_malloc_arenas() else "unlimited")
    THREADS = 8
    allocated = threading.Barrier(THREADS + 1)
    release = threading.Event()
    held = []

    def allocate():
        held.append([bytearray(4096) for _ in range(64)])
        allocated.wait()
        release.wait()

    threads = [threading.Thread(target=allocate) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    allocated.wait()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    stream = libc.fopen(sys.argv[1].encode(), b"w")
    assert libc.malloc_info(0, stream) == 0
    libc.fclose(stream)
    release.set()
    for thread in threads:
        thread.join()
    """
)


def count_arenas(tmp_path: Path, env: dict[str, str]) -> tuple[str, int]:
    report = tmp_path / "malloc-info.xml"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip(), len(re.findall(r'<heap nr="\d+"', report.read_text()))


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != ARENA_ENV}


def test_limit_caps_the_arenas_threads_get(tmp_path: Path, clean_env: dict[str, str]) -> None:
    outcome, arenas = count_arenas(tmp_path, clean_env)
    assert outcome == "limited"
    assert 1 <= arenas <= ARENAS


def test_without_the_limit_each_thread_gets_an_arena(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    # The same program with the operator's own (higher) limit: what the cap prevents.
    outcome, arenas = count_arenas(tmp_path, {**clean_env, ARENA_ENV: "16"})
    assert outcome == "unlimited"
    assert arenas > ARENAS


def test_the_operators_setting_wins(tmp_path: Path, clean_env: dict[str, str]) -> None:
    outcome, arenas = count_arenas(tmp_path, {**clean_env, ARENA_ENV: "1"})
    assert outcome == "unlimited"
    assert arenas == 1
