"""The endpoints of one server process: its slot, one spool and sender per endpoint,
and the adoption of slots no running process holds (left by a process that is gone,
or by a server that ran with more workers)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from typing import Any

import aiohttp

from dockyard.config import Config
from dockyard.notifications.endpoint import Endpoint, spool_keys
from dockyard.notifications.events import Source, serialise
from dockyard.notifications.sender import Sender
from dockyard.notifications.spool import Slot, Spool, claim, slot_numbers, try_claim

log = logging.getLogger("dockyard.notifications")

# Seconds between looks for slots that nobody holds and that still have events.
ADOPT_INTERVAL = 5.0
# Seconds after start-up before the first look.
ADOPT_DELAY = 2.0
# Where the filesystem driver's spool lives, below its root directory.
SPOOL_BELOW_ROOT = ("docker", "registry", "v2", "_dockyard", "notifications")


def spool_root(config: Config) -> tuple[str, bool]:
    """The spool directory, and whether it is a temporary one to remove at the end."""
    configured = config.dockyard.notifications.spooldirectory
    if configured:
        return configured, False
    if config.storage.driver_name == "filesystem":
        root = str(config.storage.driver_params.get("rootdirectory") or "/var/lib/registry")
        return os.path.join(root, *SPOOL_BELOW_ROOT), False
    return tempfile.mkdtemp(prefix="dockyard-notifications-"), True


class Notifier:
    def __init__(self, config: Config) -> None:
        self.endpoints = [
            Endpoint.from_config(entry)
            for entry in config.notifications.endpoints
            if not entry.disabled
        ]
        self.keys = spool_keys(self.endpoints)
        self.include_references = config.notifications.events.includereferences
        self.source = Source.for_address(config.http.addr)
        self.config = config
        self.root = ""
        self.temporary = False
        self.slot: Slot | None = None
        self.spools: list[Spool] = []
        self.senders: list[Sender] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.adopting: dict[int, asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None

    @property
    def active(self) -> bool:
        return self.slot is not None

    async def start(self) -> None:
        self.root, self.temporary = spool_root(self.config)
        try:
            os.makedirs(self.root, exist_ok=True)
            self.slot = claim(self.root)
        except OSError as error:
            # A read-only store still notifies pulls, from a private spool.
            log.error(
                "notifications: cannot keep events in %s (%s); using a temporary directory: "
                "events pending at exit will be lost",
                self.root,
                error,
            )
            self.root, self.temporary = tempfile.mkdtemp(prefix="dockyard-notifications-"), True
            self.slot = claim(self.root)
        if self.temporary and self.config.dockyard.notifications.spooldirectory is None:
            log.warning(
                "notifications: events wait in %s, which does not outlive this process; set "
                "dockyard.notifications.spooldirectory to keep them across restarts",
                self.root,
            )
        self.session = aiohttp.ClientSession()
        for endpoint, key in zip(self.endpoints, self.keys, strict=True):
            spool = Spool(os.path.join(self.slot.directory, key))
            sender = Sender(endpoint, spool, self.session)
            self.spools.append(spool)
            self.senders.append(sender)
            self.tasks.append(asyncio.get_running_loop().create_task(sender.run()))
            log.info("notifications: sending events to %s (%s)", endpoint.name, endpoint.url)
        if not self.temporary:
            self.tasks.append(asyncio.get_running_loop().create_task(self._adopt_forever()))

    async def stop(self) -> None:
        tasks = [*self.tasks, *self.adopting.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.adopting.clear()
        if self.session is not None:
            await self.session.close()
        for spool in self.spools:
            spool.close()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def publish(self, event: dict[str, Any]) -> None:
        """Queue the event for every endpoint that does not ignore it (never raises)."""
        if self.slot is None:
            return
        line = serialise(event)
        for sender in self.senders:
            if not sender.endpoint.accepts(event):
                continue
            try:
                sender.spool.append(line)
            except OSError as error:
                log.error(
                    "notifications: cannot queue a %s event for %s: %s",
                    event.get("action"),
                    sender.endpoint.name,
                    error,
                )
                continue
            sender.wake.set()

    # --- slots nobody holds ---

    async def _adopt_forever(self) -> None:
        # Not at once: the other workers of this server are still claiming their slots.
        await asyncio.sleep(ADOPT_DELAY)
        while True:
            try:
                self._adopt_once()
            except OSError as error:
                log.warning("notifications: looking for unsent events failed: %s", error)
            await asyncio.sleep(ADOPT_INTERVAL)

    def _adopt_once(self) -> None:
        assert self.slot is not None
        for number in slot_numbers(self.root):
            if number == self.slot.number or number in self.adopting:
                continue
            slot = try_claim(self.root, number)
            if slot is None:
                continue
            task = asyncio.get_running_loop().create_task(self._drain(slot))
            self.adopting[number] = task

    async def _drain(self, slot: Slot) -> None:
        """Send what a gone process left in ``slot``, then let the slot go."""
        assert self.session is not None
        spools: list[Spool] = []
        try:
            senders: list[Sender] = []
            for endpoint, key in zip(self.endpoints, self.keys, strict=True):
                directory = os.path.join(slot.directory, key)
                if not os.path.isdir(directory):
                    continue
                spool = Spool(directory)
                spools.append(spool)
                if spool.peek() is not None:
                    log.info(
                        "notifications: sending events left in slot %d to %s",
                        slot.number,
                        endpoint.name,
                    )
                    senders.append(Sender(endpoint, spool, self.session))
            await asyncio.gather(*(sender.run(until_empty=True) for sender in senders))
        finally:
            for spool in spools:
                spool.close()
            slot.release()
            self.adopting.pop(slot.number, None)
