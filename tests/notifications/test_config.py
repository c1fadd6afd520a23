"""The ``notifications`` section is read as Distribution reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.config import ConfigError, load_config
from dockyard.notifications import Endpoint

BASE = "version: 0.1\nstorage:\n  inmemory:\n"


def _load(tmp_path: Path, text: str, **environ: str) -> tuple[list[Endpoint], bool, list[str]]:
    path = tmp_path / "config.yml"
    path.write_text(text)
    loaded = load_config(str(path), environ)
    notifications = loaded.config.notifications
    endpoints = [
        Endpoint.from_config(entry) for entry in notifications.endpoints if not entry.disabled
    ]
    return endpoints, notifications.events.includereferences, loaded.warnings


def test_distributions_example_is_read_without_warnings(tmp_path: Path) -> None:
    text = BASE + (
        "notifications:\n"
        "  events:\n"
        "    includereferences: true\n"
        "  endpoints:\n"
        "    - name: alistener\n"
        "      disabled: false\n"
        "      url: https://my.listener.com/event\n"
        "      headers:\n"
        "        Authorization: [Bearer token]\n"
        "      timeout: 500ms\n"
        "      threshold: 5\n"
        "      backoff: 1s\n"
        "      ignoredmediatypes:\n"
        "        - application/octet-stream\n"
        "      ignore:\n"
        "        mediatypes:\n"
        "           - application/vnd.oci.image.index.v1+json\n"
        "        actions:\n"
        "           - pull\n"
        "    - name: off\n"
        "      disabled: true\n"
    )
    endpoints, references, warnings = _load(tmp_path, text)
    assert warnings == []
    assert references is True
    assert endpoints == [
        Endpoint(
            name="alistener",
            url="https://my.listener.com/event",
            headers=(("Authorization", "Bearer token"),),
            timeout=0.5,
            threshold=5,
            backoff=1.0,
            ignored_media_types=frozenset(
                {"application/octet-stream", "application/vnd.oci.image.index.v1+json"}
            ),
            ignored_actions=frozenset({"pull"}),
        )
    ]
    ignored = endpoints[0]
    assert not ignored.accepts({"action": "pull", "target": {"mediaType": "x"}})
    assert not ignored.accepts(
        {"action": "push", "target": {"mediaType": "application/octet-stream"}}
    )
    assert ignored.accepts({"action": "delete", "target": {"digest": "sha256:00"}})


def test_zero_values_take_distributions_defaults(tmp_path: Path) -> None:
    text = BASE + "notifications:\n  endpoints:\n    - name: a\n      url: http://h/e\n"
    endpoints, references, _ = _load(tmp_path, text)
    assert references is False
    assert (endpoints[0].timeout, endpoints[0].threshold, endpoints[0].backoff) == (1.0, 10, 1.0)


def test_environment_overrides_reach_an_endpoint(tmp_path: Path) -> None:
    text = BASE + "notifications:\n  endpoints:\n    - name: a\n      url: http://h/e\n"
    endpoints, _, warnings = _load(
        tmp_path,
        text,
        REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL="http://other/hook",
        REGISTRY_NOTIFICATIONS_ENDPOINTS_0_THRESHOLD="3",
    )
    assert warnings == []
    assert endpoints[0].url == "http://other/hook"
    assert endpoints[0].threshold == 3


@pytest.mark.parametrize("url", ["", "ftp://h/e", "listener:8080"])
def test_an_enabled_endpoint_needs_an_http_url(tmp_path: Path, url: str) -> None:
    text = BASE + f"notifications:\n  endpoints:\n    - name: a\n      url: '{url}'\n"
    with pytest.raises(ConfigError, match="not an http"):
        _load(tmp_path, text)
