"""The parent of several workers: replaces any that dies, stops them all on SIGTERM/SIGINT.

This module imports the standard library only, and :mod:`dockyard.logs` once the parent
has something to log. The process that loaded the application forks the first workers
(they share its pages), then replaces its own program with this one (``exec``: same
pid, still the workers' parent), so that the parent holds an interpreter's worth of
memory (about 11 MiB) instead of the application's 40. A worker that dies later is
replaced by a fresh interpreter (:func:`dockyard.server.run_replacement`) that reads the
configuration the first workers were given from a memory file the parent keeps open,
so a configuration file edited since the start does not reach it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

# Not typing's: the parent imports only what it needs to wait on its workers (typing,
# logging and the registry's log formats would add a third to its memory).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

# The worker index of the process that serves the metrics of all the workers.
METRICS_PROCESS = -1
# How much longer than the drain the parent waits for a worker before killing it.
DRAIN_MARGIN = 5.0
# A worker that dies is replaced after this pause, so a worker that cannot start does
# not turn the parent into a busy loop.
RESTART_PAUSE = 0.5
# Signals that stop the registry; blocked from before the first fork until the parent's
# handlers are in place, so one sent meanwhile waits instead of being lost.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

# ``python -S -c``: no site-packages for the parent, only the directory holding dockyard.
_SUPERVISOR_PROGRAM = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from dockyard.supervisor import main; main(sys.argv[2])"
)
_REPLACEMENT_PROGRAM = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from dockyard.server import run_replacement; run_replacement(sys.argv[2])"
)


class WorkerPlan:
    """What the parent needs to replace a worker, and what the replacement is given.

    File descriptors stay open across ``exec``: ``listen_fd`` (the listening socket of a
    Unix socket, or the TCP socket that holds the port while each worker listens on its
    own), ``debug_fd`` (the metrics address) and ``config_fd`` (the configuration,
    pickled, in a memory file).
    """

    def __init__(
        self,
        *,
        children: dict[int, int],
        listen_fd: int,
        debug_fd: int | None,
        metrics_dir: str | None,
        config_fd: int,
        drain: float,
        log_settings: tuple[str, str, dict[str, object]],
    ) -> None:
        self.children = children  # pid -> worker index
        self.listen_fd = listen_fd
        self.debug_fd = debug_fd
        self.metrics_dir = metrics_dir
        self.config_fd = config_fd
        self.drain = drain
        self.log_settings = log_settings

    def encode(self) -> str:
        level, formatter, fields = self.log_settings
        return json.dumps(
            {
                "children": {str(pid): index for pid, index in self.children.items()},
                "listen_fd": self.listen_fd,
                "debug_fd": self.debug_fd,
                "metrics_dir": self.metrics_dir,
                "config_fd": self.config_fd,
                "drain": self.drain,
                "log": [level, formatter, fields],
            }
        )

    @classmethod
    def decode(cls, text: str) -> WorkerPlan:
        data = json.loads(text)
        level, formatter, fields = data["log"]
        return cls(
            children={int(pid): int(index) for pid, index in data["children"].items()},
            listen_fd=int(data["listen_fd"]),
            debug_fd=None if data["debug_fd"] is None else int(data["debug_fd"]),
            metrics_dir=data["metrics_dir"],
            config_fd=int(data["config_fd"]),
            drain=float(data["drain"]),
            log_settings=(str(level), str(formatter), dict(fields)),
        )

    def inherited_fds(self) -> list[int]:
        fds = [self.listen_fd, self.config_fd]
        if self.debug_fd is not None:
            fds.append(self.debug_fd)
        return fds


class Replacement:
    """The arguments a replacement worker starts with: the plan, its index, its predecessor."""

    def __init__(self, plan: WorkerPlan, index: int, predecessor: int) -> None:
        self.plan = plan
        self.index = index
        self.predecessor = predecessor

    def encode(self) -> str:
        return json.dumps(
            {"plan": self.plan.encode(), "index": self.index, "predecessor": self.predecessor}
        )

    @classmethod
    def decode(cls, text: str) -> Replacement:
        data = json.loads(text)
        return cls(WorkerPlan.decode(data["plan"]), int(data["index"]), int(data["predecessor"]))


def package_root() -> str:
    """The directory that holds the ``dockyard`` package, for interpreters without site."""
    import dockyard

    return os.path.dirname(os.path.dirname(os.path.abspath(dockyard.__file__)))


class Supervisor:
    """Waits on the workers, replaces any that dies, stops them all on SIGTERM/SIGINT."""

    def __init__(self, plan: WorkerPlan, root: str, logging_ready: bool = True) -> None:
        """``logging_ready``: this process has set up logging (the one that read the
        configuration has; the parent's own program sets it up when it first logs)."""
        self.plan = plan
        self.root = root
        self.stopping = False
        self._logging_ready = logging_ready
        self._log: logging.Logger | None = None

    @property
    def log(self) -> logging.Logger:
        if self._log is None:
            import logging

            if not self._logging_ready:
                from dockyard.logs import setup_logging

                level, formatter, fields = self.plan.log_settings
                setup_logging(level, formatter, dict(fields))
            self._log = logging.getLogger("dockyard")
        return self._log

    def become_small(self) -> None:
        """Replace this process's program with the parent's own (returns only on failure)."""
        for fd in self.plan.inherited_fds():
            os.set_inheritable(fd, True)
        argv = [sys.executable, "-S", "-c", _SUPERVISOR_PROGRAM, self.root, self.plan.encode()]
        try:
            os.execv(sys.executable, argv)
        except OSError as error:
            self.log.warning(
                "cannot start a separate parent process (%s); supervising from here", error
            )

    def spawn(self, index: int, predecessor: int) -> None:
        argv = [
            sys.executable,
            "-c",
            _REPLACEMENT_PROGRAM,
            self.root,
            Replacement(self.plan, index, predecessor).encode(),
        ]
        try:
            # The stop signals are not blocked here (the handlers are in place), but the
            # replacement starts with an empty mask whatever this process's is.
            pid = os.posix_spawn(sys.executable, argv, os.environ, setsigmask=())
        except OSError as error:
            self.log.error("cannot start a replacement for worker %d: %s", index, error)
            return
        self.plan.children[pid] = index

    def stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.log.info("stopping: draining requests in flight for up to %.1fs", self.plan.drain)
            # A worker that outlives its drain (a handler that ignores cancellation)
            # must not keep the parent from exiting.
            signal.setitimer(signal.ITIMER_REAL, self.plan.drain + DRAIN_MARGIN)
        self.stopping = True
        for pid in list(self.plan.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.plan.children.pop(pid, None)

    def overdue(self, signum: int, _frame: object) -> None:
        for pid, index in list(self.plan.children.items()):
            self.log.error("worker %d (pid %d) did not stop in time; killing it", index, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                self.plan.children.pop(pid, None)

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.plan.metrics_dir is not None:
                remove_flat_directory(self.plan.metrics_dir)
        sys.exit(0)

    def _run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGALRM, self.overdue)
        # A stop signal that came while the workers were forked is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        children = self.plan.children
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in children:
                continue
            index = children.pop(pid)
            if self.stopping:
                continue
            name = "metrics process" if index == METRICS_PROCESS else f"worker {index}"
            self.log.error("%s (pid %d) exited with status %d; restarting", name, pid, status)
            time.sleep(RESTART_PAUSE)
            if not self.stopping:
                self.spawn(index, pid)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.log.info("stopped")


def remove_flat_directory(path: str) -> None:
    """Remove a directory of files (the workers' metrics), whatever is already gone."""
    # Not shutil: its import alone would add a tenth to this process's memory.
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
        os.rmdir(path)
    except FileNotFoundError:
        pass


def main(encoded: str) -> None:
    """The parent's program after ``exec``."""
    Supervisor(WorkerPlan.decode(encoded), package_root(), logging_ready=False).run()
