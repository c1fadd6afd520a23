"""How many write-class system calls (``write``, ``pwrite``, ``writev``) a process or a
thread has made, from Linux's per-task I/O accounting. Socket sends (``send``,
``sendto``) are not among them."""

from __future__ import annotations

from pathlib import Path


def write_calls(task: str = "self") -> int:
    """``syscw`` of ``/proc/<task>/io``: ``self`` counts every thread of this process,
    ``thread-self`` the calling thread only."""
    for line in Path(f"/proc/{task}/io").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "syscw":
            return int(value)
    raise LookupError(f"no syscw in /proc/{task}/io")
