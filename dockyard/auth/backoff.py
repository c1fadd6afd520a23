"""Slow down password guessing, per source address, within fixed bounds.

Each failed sign-in from an address counts against it; after ``free`` failures every
further password check from that address waits its turn, one every ``delay`` seconds,
the delay doubling with each failure up to ``maximum``. Turns are handed out in order,
so opening many connections in parallel buys no extra guesses; a caller whose turn
would be further away than ``queue_limit`` is refused at once (429) rather than held.
Failures older than ``window`` are forgotten, and at most ``max_sources`` addresses are
tracked (the least recently seen are dropped), so memory stays bounded whatever the
traffic. Credentials that already passed recently are never delayed: the limiter only
stands in front of checks that could be guesses. A success does not wipe the count
either: otherwise anyone with one valid account could reset the penalty between guesses
at another; a user who mistyped waits once, and their remembered credentials then pass
without waiting.

The state is per worker process: with several workers an address gets proportionally
more turns, which still bounds the guessing rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from dockyard.errors import TooManyRequests

log = logging.getLogger("dockyard.auth")


@dataclass(slots=True)
class _Source:
    failures: int = 0
    last_failure: float = 0.0
    next_turn: float = 0.0


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    free: int = 5
    initial: float = 0.5
    maximum: float = 10.0
    window: float = 900.0
    queue_limit: float = 60.0
    max_sources: int = 10000


class LoginThrottle:
    def __init__(self, settings: BackoffSettings | None = None) -> None:
        self.settings = settings or BackoffSettings()
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def _get(self, source: str, now: float) -> _Source:
        state = self._sources.get(source)
        if state is None:
            state = self._sources[source] = _Source()
        elif state.failures and now - state.last_failure > self.settings.window:
            state.failures = 0
        self._sources.move_to_end(source)
        while len(self._sources) > self.settings.max_sources:
            self._sources.popitem(last=False)
        return state

    def delay_for(self, failures: int) -> float:
        extra = failures - self.settings.free
        if extra < 0:
            return 0.0
        return min(self.settings.initial * (2.0 ** min(extra, 30)), self.settings.maximum)

    def failures(self, source: str) -> int:
        state = self._sources.get(source)
        if state is None or time.monotonic() - state.last_failure > self.settings.window:
            return 0
        return state.failures

    async def wait_turn(self, source: str) -> None:
        """Wait until this source may have its password checked (no wait while it is
        under the free allowance); raise ``TooManyRequests`` if the queue is too long."""
        now = time.monotonic()
        state = self._get(source, now)
        delay = self.delay_for(state.failures)
        if delay <= 0:
            return
        turn = max(now, state.next_turn)
        wait = turn - now
        if wait > self.settings.queue_limit:
            raise TooManyRequests(
                "too many failed sign-ins from this address; try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        state.next_turn = turn + delay
        if wait > 0:
            await asyncio.sleep(wait)

    def failed(self, source: str, user: str) -> None:
        now = time.monotonic()
        state = self._get(source, now)
        state.failures += 1
        state.last_failure = now
        # The user name is logged (operators need it to spot attacks on an account);
        # the password never is. %r keeps control characters in a name from forging
        # log lines.
        log.warning(
            "failed sign-in for user %r from %s (%d recent failure%s from this address)",
            user,
            source,
            state.failures,
            "" if state.failures == 1 else "s",
        )
