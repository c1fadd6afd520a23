"""Fixtures for the black-box HTTP tests: a client bound to the registry under test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import ServerProcess


@pytest.fixture
def api(registry: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for ``registry`` that never follows redirects.

    Redirects stay visible because a registry that answered a path-traversal attempt
    with a redirect would otherwise look like it answered the redirected path.
    """
    with httpx.Client(base_url=registry.url, timeout=60.0, follow_redirects=False) as client:
        yield client
