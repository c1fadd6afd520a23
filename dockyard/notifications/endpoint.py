"""A ``notifications.endpoints`` entry as the sender uses it: where, how, and what not."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.config.model import NotificationEndpoint

# Distribution's defaults for an endpoint's zero values.
DEFAULT_TIMEOUT = 1.0
DEFAULT_THRESHOLD = 10
DEFAULT_BACKOFF = 1.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    threshold: int = DEFAULT_THRESHOLD
    backoff: float = DEFAULT_BACKOFF
    ignored_media_types: frozenset[str] = field(default_factory=frozenset)
    ignored_actions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, entry: NotificationEndpoint) -> Endpoint:
        timeout = entry.timeout.total_seconds()
        backoff = entry.backoff.total_seconds()
        return cls(
            name=entry.name,
            url=entry.url,
            headers=tuple(
                (name, value) for name, values in entry.headers.items() for value in values
            ),
            timeout=timeout if timeout > 0 else DEFAULT_TIMEOUT,
            threshold=entry.threshold if entry.threshold > 0 else DEFAULT_THRESHOLD,
            backoff=backoff if backoff > 0 else DEFAULT_BACKOFF,
            # Both of Distribution's spellings count.
            ignored_media_types=frozenset([*entry.ignoredmediatypes, *entry.ignore.mediatypes]),
            ignored_actions=frozenset(entry.ignore.actions),
        )

    def accepts(self, event: Mapping[str, Any]) -> bool:
        """Whether the event goes to this endpoint (its media type and action not ignored)."""
        target = event.get("target") or {}
        if target.get("mediaType") in self.ignored_media_types:
            return False
        return event.get("action") not in self.ignored_actions


def spool_keys(endpoints: list[Endpoint]) -> list[str]:
    """A directory name per endpoint, stable across restarts: from its name (or its URL
    when it has none), so a pending event still reaches an endpoint whose URL changed."""
    keys: list[str] = []
    for endpoint in endpoints:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", endpoint.name).strip("._") or (
            "url-" + hashlib.sha256(endpoint.url.encode()).hexdigest()[:12]
        )
        key, count = base, 1
        while key in keys:
            count += 1
            key = f"{base}-{count}"
        keys.append(key)
    return keys
