"""Registry: one Repository object per name, kept between requests, within a bound."""

from __future__ import annotations

import pytest

from dockyard.errors import NameInvalid
from dockyard.registry.digest import Digest
from dockyard.registry.registry import REPOSITORIES_REMEMBERED, Registry
from dockyard.storage import MemoryDriver


def test_a_repository_is_kept_per_name_and_the_oldest_goes_first() -> None:
    registry = Registry(MemoryDriver())
    first = registry.repository("library/alpine")
    assert registry.repository("library/alpine") is first
    busybox = registry.repository("library/busybox")
    assert busybox is not first
    for number in range(REPOSITORIES_REMEMBERED - 2):
        registry.repository(f"repo-{number}")
        # Used all along, so it is never the least recently used one.
        assert registry.repository("library/alpine") is first
    assert registry.repository("library/busybox") is busybox
    registry.repository("one-more")
    # repo-0 was the least recently used; busybox, used just now, stays.
    assert registry.repository("library/busybox") is busybox
    assert "repo-0" not in registry._repositories
    assert len(registry._repositories) == REPOSITORIES_REMEMBERED


def test_an_invalid_name_is_refused_every_time_and_never_kept() -> None:
    registry = Registry(MemoryDriver())
    for _ in range(2):
        with pytest.raises(NameInvalid):
            registry.repository("Upper/Case")
    assert "Upper/Case" not in registry._repositories


def test_a_digest_parsed_again_is_equal_and_a_bad_one_fails_every_time() -> None:
    text = "sha256:" + "ab" * 32
    assert Digest.parse(text) == Digest.parse(text) == Digest("sha256", "ab" * 32)
    for _ in range(2):
        with pytest.raises(Exception, match="invalid digest"):
            Digest.parse("sha256:" + "AB" * 32)
