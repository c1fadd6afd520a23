"""The same requests make the same events on Dockyard as on Distribution 2.8.

Debian's ``docker-registry`` runs with the same ``notifications`` section; every
event's action and target must match, field for field, and the other records must
have the same fields (their values name different processes and ports).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import ServerFactory
from tests.notifications.receiver import Receiver
from tests.support.images import ALL_MANIFEST_TYPES, make_image, push_artifact
from tests.support.servers import ServerProcess


def _fields(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value[:1]:
            yield from _fields(item, f"{path}[]")
    else:
        yield path


def _exercise(registry: ServerProcess, receiver: Receiver) -> list[dict[str, Any]]:
    image = make_image("interop-events", layers=2)
    layer = image.layers[0].digest
    with httpx.Client() as client:
        push_artifact(client, registry.url, "same/app", "v1", image)
        got = client.get(
            f"{registry.url}/v2/same/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}
        )
        assert got.status_code == 200
        assert client.get(f"{registry.url}/v2/same/app/blobs/{layer}").status_code == 200
        mounted = client.post(
            f"{registry.url}/v2/same/other/blobs/uploads/",
            params={"mount": layer, "from": "same/app"},
        )
        assert mounted.status_code == 201
        assert client.delete(f"{registry.url}/v2/same/other/blobs/{layer}").status_code == 202
        deleted = client.delete(f"{registry.url}/v2/same/app/manifests/{image.digest}")
        assert deleted.status_code == 202
    expected = len(image.blobs) + 7
    return receiver.wait_for(lambda seen: len(seen) >= expected)


def test_events_match_distributions(server_factory: ServerFactory) -> None:
    runs: list[tuple[ServerProcess, list[dict[str, Any]]]] = []
    for kind in ("distribution", "dockyard"):
        receiver = Receiver()
        try:
            receiver.listen()
            config: dict[str, Any] = {
                "notifications": {
                    "events": {"includereferences": True},
                    "endpoints": [{"name": "same", "url": receiver.url, "backoff": "200ms"}],
                }
            }
            if kind == "dockyard":
                config["dockyard"] = {"workers": 1}
            registry = server_factory(kind, config=config, name=kind)
            runs.append((registry, _exercise(registry, receiver)))
        finally:
            receiver.shutdown()
    (theirs_server, theirs), (ours_server, ours) = runs
    assert len(ours) == len(theirs)
    for their_event, our_event in zip(theirs, ours, strict=True):
        assert sorted(_fields(our_event)) == sorted(_fields(their_event))
        assert our_event["action"] == their_event["action"]
        their_target = dict(their_event["target"])
        if "url" in their_target:
            their_target["url"] = their_target["url"].replace(theirs_server.url, ours_server.url)
        assert our_event["target"] == their_target
        assert our_event["request"]["method"] == their_event["request"]["method"]
