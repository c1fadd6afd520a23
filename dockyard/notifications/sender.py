"""Deliver one spool's events to one endpoint, in order, until each is accepted.

As in Distribution, each event is ``POST``ed on its own and any 2xx or 3xx answer
accepts it; on failure the same event is tried again at once, and once ``threshold``
attempts in a row have failed, only every ``backoff``. Nothing is ever dropped for
failing: the event stays first in the spool until the endpoint takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from multidict import CIMultiDict

from dockyard.notifications.endpoint import Endpoint
from dockyard.notifications.events import EVENTS_MEDIA_TYPE, envelope
from dockyard.notifications.spool import Spool

log = logging.getLogger("dockyard.notifications")


class Sender:
    def __init__(self, endpoint: Endpoint, spool: Spool, session: aiohttp.ClientSession) -> None:
        self.endpoint = endpoint
        self.spool = spool
        self.session = session
        self.wake = asyncio.Event()
        self.failures = 0
        self.headers: CIMultiDict[str] = CIMultiDict(endpoint.headers)
        self.headers["Content-Type"] = EVENTS_MEDIA_TYPE

    async def run(self, until_empty: bool = False) -> None:
        """Send forever (or, with ``until_empty``, until nothing is pending)."""
        while True:
            pending = self.spool.peek()
            if pending is None:
                if until_empty:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            position, line = pending
            if not _is_event(line):
                log.error("skipping an unreadable event in %s", self.spool.directory)
                self.spool.commit(position)
                continue
            if await self._post(line):
                self.spool.commit(position)
                if self.failures:
                    log.info("notifications: endpoint %s accepts events again", self._name)
                self.failures = 0
                continue
            self.failures += 1
            if self.failures >= self.endpoint.threshold:
                if self.failures == self.endpoint.threshold:
                    log.warning(
                        "notifications: endpoint %s failed %d times in a row; retrying every %.1fs",
                        self._name,
                        self.failures,
                        self.endpoint.backoff,
                    )
                await asyncio.sleep(self.endpoint.backoff)
            else:
                await asyncio.sleep(0)

    @property
    def _name(self) -> str:
        return self.endpoint.name or self.endpoint.url

    async def _post(self, line: bytes) -> bool:
        try:
            async with self.session.post(
                self.endpoint.url,
                data=envelope([line]),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if response.status < 400:
                    return True
                problem = f"status {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            problem = str(error) or type(error).__name__
        log.debug("notifications: endpoint %s: %s", self._name, problem)
        return False


def _is_event(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
