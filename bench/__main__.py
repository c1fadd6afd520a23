"""``python -m bench [--quick|--full]``: Dockyard and Distribution side by side; see README.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import blobs, load, machine, mirrors, report, s3, skopeo
from bench.plan import FULL, GROUPS, QUICK, Plan
from bench.profile import Profiler
from bench.servers import (
    DISTRIBUTION,
    DISTRIBUTION_BINARY,
    DOCKYARD,
    BenchError,
    ManagedProcess,
    RegistryServer,
)
from bench.source import DockyardSource, snapshot, working_tree
from bench.suite import Suite

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


class BenchTimeout(BenchError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure Dockyard and Distribution (docker-registry) side by side.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 rep, tiny sizes, < 90 s (default)")
    mode.add_argument("--full", action="store_true", help="5 reps, full sizes; writes --out")
    parser.add_argument("--reps", type=int, help="repetitions (overrides the mode's)")
    parser.add_argument("--workers", type=int, help="pass dockyard.workers N to Dockyard")
    parser.add_argument(
        "--only", help=f"comma-separated figure groups to run, of: {','.join(GROUPS)}"
    )
    parser.add_argument(
        "--out", type=Path, help=f"write the Markdown report here (full mode: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--rev", help="measure this commit of dockyard/ (git archive) instead of the working tree"
    )
    parser.add_argument("--tmpdir", type=Path, help="where the stores and test data go")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy Dockyard during each figure into DIR"
    )
    parser.add_argument("--time-limit", type=float, help="seconds before the run gives up")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="the two servers measured side by side (not the mirror or S3 groups' own) "
        "write an access line per request, as both do by default",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def selected_groups(only: str | None) -> set[str]:
    if not only:
        return set(GROUPS)
    groups = {group.strip() for group in only.split(",") if group.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise BenchError(f"unknown groups {', '.join(sorted(unknown))} (of {', '.join(GROUPS)})")
    return groups


def check_tools(groups: set[str]) -> None:
    if not shutil.which(DISTRIBUTION_BINARY):
        raise BenchError(f"{DISTRIBUTION_BINARY} not found: apt-get install -y docker-registry")
    if groups & {"pull", "load", "puts", "mirror"}:
        load.require_tools()
    if "skopeo" in groups:
        skopeo.require()
    if "s3" in groups:
        s3.require()


def _raise(kind: type[BaseException], message: str) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise kind(message)

    return handler


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


async def run_suite(suite: Suite, plan: Plan, log: Progress) -> None:
    async with blobs.session(timeout=600) as http:
        log("pushing fixtures")
        await suite.setup(http)
        for rep in range(plan.reps):
            await suite.run_rep(rep, http)


def context(
    plan: Plan, args: argparse.Namespace, dockyard: RegistryServer, source: DockyardSource
) -> dict[str, str]:
    found = machine.describe()
    workers = (
        f"{dockyard.worker_count()} (dockyard.workers: {args.workers})"
        if args.workers is not None
        else f"{dockyard.worker_count()} (dockyard.workers not set: Dockyard's default)"
    )
    return {
        "date": found["date"],
        "machine": found["machine"],
        "command": "python -m bench "
        + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
        "mode": f"{plan.mode}, {plan.reps} repetition(s), servers alternating, order flipped "
        "every repetition",
        "Dockyard": source.description,
        "Dockyard workers": workers,
        "Distribution": f"{found['distribution']} (GOMAXPROCS = {os.cpu_count()}, Go's default)",
        "Python": found["python"],
        "clients": found["load generators"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    plan = (FULL if args.full else QUICK).with_reps(args.reps)
    log = Progress()
    scratch: Path | None = None
    servers: list[RegistryServer] = []
    # Every process started, the mirror and S3 groups' too (moto): all are stopped at the end.
    started: list[ManagedProcess] = []
    # asyncio.run's own SIGINT handler only cancels at the next await, and a wrk or GC run
    # in between would keep going for minutes: Ctrl-C stops at once (unless ignored).
    interrupt = signal.getsignal(signal.SIGINT)
    previous = {
        signal.SIGINT: signal.signal(
            signal.SIGINT,
            interrupt if interrupt == signal.SIG_IGN else _raise(KeyboardInterrupt, "SIGINT"),
        ),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise(KeyboardInterrupt, "SIGTERM")),
        signal.SIGALRM: signal.signal(
            signal.SIGALRM, _raise(BenchTimeout, "the run went past its time limit")
        ),
    }
    signal.alarm(int(args.time_limit or plan.time_limit))
    try:
        groups = selected_groups(args.only)
        check_tools(groups)
        base = args.tmpdir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="dockyard-bench-", dir=base))
        source = snapshot(args.rev, scratch / "dockyard-source") if args.rev else working_tree()
        servers = [
            RegistryServer(
                DOCKYARD,
                scratch / DOCKYARD,
                args.workers,
                source.path,
                source.env(),
                access_log=args.access_log,
            ),
            RegistryServer(DISTRIBUTION, scratch / DISTRIBUTION, access_log=args.access_log),
        ]
        mirror = mirrors.build(scratch, args.workers, source) if "mirror" in groups else None
        on_s3 = s3.build(scratch, args.workers, source) if "s3" in groups else None
        suite = Suite(
            plan, servers, scratch, groups, Profiler(args.profile), source, log, mirror, on_s3
        )
        log(
            f"{plan.mode} mode, {plan.reps} rep(s), groups: {', '.join(g for g in GROUPS if g in groups)}"
        )
        suite.prepare_stores()
        for server in [
            *servers,
            *(mirror.servers if mirror else []),
            *(on_s3.servers if on_s3 else []),
        ]:
            started.append(server)
            server.start()
            log(f"{server.label} on {server.url}, {server.describe()}")
        asyncio.run(run_suite(suite, plan, log))
        text = report.render(suite.results, context(plan, args, servers[0], source), suite.notes())
        print(text)
        # Only a complete, unprofiled full run of the usual configuration replaces the
        # committed RESULTS.md.
        complete = (
            plan.mode == "full"
            and groups == set(GROUPS)
            and args.profile is None
            and not args.access_log
        )
        out = args.out or (DEFAULT_OUT if complete else None)
        if out is not None:
            out.write_text(text)
            log(f"wrote {out}")
        return 0
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        for server in started:
            server.stop()
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch is not None:
            log(f"kept {scratch}")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
