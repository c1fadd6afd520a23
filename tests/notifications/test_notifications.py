"""Notifications end to end: a real registry process, real clients, a real webhook.

The webhook (:class:`Receiver`) runs on 127.0.0.1 in the test; the registry is
``dockyard serve`` with a ``notifications`` section pointing at it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.support import PASSWORDS, htpasswd_config
from tests.conftest import ServerFactory
from tests.notifications.receiver import Receiver, summary
from tests.support.images import (
    ALL_MANIFEST_TYPES,
    OCI_MANIFEST,
    make_image,
    push_artifact,
    push_blob,
    sha256_digest,
    skopeo,
    write_oci_layout,
)

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
OCTET_STREAM = "application/octet-stream"
PUSH = "--dest-tls-verify=false"
PULL = "--src-tls-verify=false"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    webhook = Receiver()
    yield webhook
    webhook.shutdown()


def endpoint(receiver: Receiver, name: str = "hook", **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": receiver.url,
        "headers": {"Authorization": ["Bearer s3cret"], "X-Registry": ["one", "two"]},
        "timeout": "2s",
        "threshold": 2,
        "backoff": "200ms",
        **options,
    }


def notifying(*endpoints: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    return {
        "notifications": {"events": {"includereferences": True}, "endpoints": list(endpoints)},
        "dockyard": {"workers": workers},
    }


def _settled(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    """Exactly ``count`` events, and still that many a moment later (no duplicates)."""
    events = receiver.wait_for(lambda seen: len(seen) >= count)
    time.sleep(0.5)
    events = receiver.snapshot()
    assert len(events) == count, summary(events)
    return events


def test_skopeo_push_pull_and_delete(
    server_factory: ServerFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.listen()
    registry = server_factory(config=notifying(endpoint(receiver)))
    image = make_image("notify", layers=2)
    source = write_oci_layout(tmp_path / "src", {"v1": image})
    blobs = {blob.digest: blob for blob in image.blobs}

    skopeo("copy", PUSH, f"oci:{source}:v1", f"docker://{registry.host}/notify/app:v1")
    receiver.wait_for(lambda seen: any(event["target"].get("tag") == "v1" for event in seen))
    skopeo("copy", PULL, f"docker://{registry.host}/notify/app:v1", f"oci:{tmp_path / 'out'}:v1")
    receiver.wait_for(
        lambda seen: (
            set(blobs) <= {event["target"]["digest"] for event in seen if event["action"] == "pull"}
        )
    )
    untagged = {"repository": "notify/app", "tag": "v1"}
    response = httpx.delete(f"{registry.url}/v2/notify/app/manifests/{image.digest}")
    assert response.status_code == 202
    # As Distribution does, deleting the manifest deletes (and notifies) its tags too.
    events = receiver.wait_for(lambda seen: seen[-1]["target"] == untagged)

    # Blobs first (skopeo's HEAD checks make no events), then the manifest.
    split = next(i for i, event in enumerate(events) if event["target"].get("tag") == "v1")
    blob_pushes, manifest_push = events[:split], events[split]
    assert {event["target"]["digest"] for event in blob_pushes} == set(blobs)
    for event in blob_pushes:
        target = event["target"]
        assert event["action"] == "push"
        assert event["request"]["method"] in ("PUT", "POST")
        assert target["mediaType"] == OCTET_STREAM
        assert target["size"] == target["length"] == len(blobs[target["digest"]].data)
        assert target["repository"] == "notify/app"
        assert target["url"] == f"{registry.url}/v2/notify/app/blobs/{target['digest']}"
    target = manifest_push["target"]
    assert manifest_push["action"] == "push"
    assert manifest_push["request"]["method"] == "PUT"
    assert target["mediaType"] == OCI_MANIFEST
    assert target["digest"] == image.digest
    assert target["size"] == target["length"] == len(image.manifest.data)
    assert target["url"] == f"{registry.url}/v2/notify/app/manifests/{image.digest}"
    assert [reference["digest"] for reference in target["references"]] == [
        image.config.digest,
        *(layer.digest for layer in image.layers),
    ]
    assert target["references"][0]["mediaType"] == image.config.media_type

    pulls = events[split + 1 : -2]
    assert pulls and all(event["action"] == "pull" for event in pulls)
    assert all(event["request"]["method"] == "GET" for event in pulls)
    manifest_pulls = [event for event in pulls if event["target"]["digest"] == image.digest]
    assert manifest_pulls
    assert manifest_pulls[0]["target"]["tag"] == "v1"
    assert manifest_pulls[0]["target"]["mediaType"] == OCI_MANIFEST
    assert manifest_pulls[0]["target"]["size"] == len(image.manifest.data)
    for event in pulls:
        if event["target"]["digest"] in blobs:
            assert event["target"]["mediaType"] == OCTET_STREAM
            assert event["target"]["size"] == len(blobs[event["target"]["digest"]].data)

    delete, untag = events[-2:]
    assert delete["action"] == untag["action"] == "delete"
    assert delete["request"]["method"] == "DELETE"
    assert delete["target"] == {"digest": image.digest, "repository": "notify/app"}
    assert untag["request"] == delete["request"]

    assert len({event["id"] for event in events}) == len(events)
    assert len({event["source"]["instanceID"] for event in events}) == 1
    for event in events:
        assert event["source"]["addr"].endswith(f":{registry.port}")
        assert event["request"]["host"] == registry.host
        assert event["request"]["addr"].startswith("127.0.0.1:")
        assert event["request"]["id"]
        assert event["timestamp"].endswith("Z")
        assert event["actor"] == {}
    assert all(event["request"]["useragent"] for event in events[:-2])

    for request in receiver.requests:
        assert request["count"] == 1
        assert request["headers"]["Authorization"] == "Bearer s3cret"
        assert request["headers"]["Content-Type"] == EVENTS_MEDIA_TYPE
        assert request["x-registry"] == ["one", "two"]


def test_endpoint_down_then_failing_then_up_loses_nothing(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    # Not listening at first: connections are refused.
    registry = server_factory(config=notifying(endpoint(receiver)))
    expected: list[tuple[str, str, str]] = []
    with httpx.Client() as client:
        for index in range(3):
            digest = push_blob(client, registry.url, "outage/app", f"blob {index}".encode())
            expected.append(("push", "outage/app", digest))
        # Listening, but answering 500.
        receiver.failing = True
        receiver.listen()
        deadline = time.monotonic() + 30
        while receiver.failures < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.failures >= 3
        image = make_image("outage", layers=1)
        push_artifact(client, registry.url, "outage/app", "v1", image)
        expected += [("push", "outage/app", blob.digest) for blob in image.blobs]
        expected.append(("push", "outage/app", image.digest))
        response = client.get(
            f"{registry.url}/v2/outage/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}
        )
        assert response.status_code == 200
        expected.append(("pull", "outage/app", image.digest))
        # Down again for a while, then up for good.
        receiver.close()
        time.sleep(0.5)
        receiver.failing = False
        receiver.listen()
    events = _settled(receiver, len(expected))
    assert summary(events) == expected
    assert len({event["id"] for event in events}) == len(events)


def test_events_pending_at_a_restart_are_sent_after_it(
    server_factory: ServerFactory, receiver: Receiver, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    first = server_factory(config=notifying(endpoint(receiver), workers=2), root=root, name="one")
    expected: set[str] = set()
    for index in range(8):
        # A connection each, so that both workers take some.
        with httpx.Client() as client:
            expected.add(push_blob(client, first.url, "restart/app", f"layer {index}".encode()))
    first.stop()
    spool = root / "docker/registry/v2/_dockyard/notifications"
    assert sum(path.stat().st_size for path in spool.glob("*/hook/*.events")) > 0

    receiver.listen()
    # One worker now: it sends its own slot's events and takes over the other slot's.
    server_factory(config=notifying(endpoint(receiver), workers=1), root=root, name="two")
    events = _settled(receiver, len(expected))
    assert {event["target"]["digest"] for event in events} == expected
    assert all(event["action"] == "push" for event in events)
    assert len({event["id"] for event in events}) == len(events)


def test_ignored_media_types_and_actions(server_factory: ServerFactory, tmp_path: Path) -> None:
    everything, some = Receiver(), Receiver()
    try:
        everything.listen()
        some.listen()
        registry = server_factory(
            config=notifying(
                endpoint(everything, name="everything"),
                endpoint(
                    some,
                    name="some",
                    ignoredmediatypes=[OCTET_STREAM],
                    ignore={"actions": ["pull"], "mediatypes": ["application/x-unused"]},
                ),
            )
        )
        image = make_image("ignored", layers=1)
        layer = image.layers[0].digest
        with httpx.Client() as client:
            push_artifact(client, registry.url, "ignore/app", "v1", image)
            got = client.get(
                f"{registry.url}/v2/ignore/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}
            )
            assert got.status_code == 200
            assert client.get(f"{registry.url}/v2/ignore/app/blobs/{layer}").status_code == 200
            # HEAD requests are not pulls.
            assert client.head(f"{registry.url}/v2/ignore/app/blobs/{layer}").status_code == 200
            mounted = client.post(
                f"{registry.url}/v2/ignore/other/blobs/uploads/",
                params={"mount": layer, "from": "ignore/app"},
            )
            assert mounted.status_code == 201
            deleted = client.delete(f"{registry.url}/v2/ignore/other/blobs/{layer}")
            assert deleted.status_code == 202
            untagged = client.delete(f"{registry.url}/v2/ignore/app/manifests/v1")
            assert untagged.status_code == 202

        all_events = _settled(everything, len(image.blobs) + 6)
        assert summary(all_events) == [
            *(("push", "ignore/app", blob.digest) for blob in image.blobs),
            ("push", "ignore/app", image.digest),
            ("pull", "ignore/app", image.digest),
            ("pull", "ignore/app", layer),
            ("mount", "ignore/other", layer),
            ("delete", "ignore/other", layer),
            ("delete", "ignore/app", "v1"),
        ]
        mount = all_events[-3]["target"]
        assert mount["fromRepository"] == "ignore/app"
        assert mount["mediaType"] == OCTET_STREAM
        assert mount["size"] == len(image.layers[0].data)
        assert all_events[-1]["target"] == {"repository": "ignore/app", "tag": "v1"}

        some_events = _settled(some, 3)
        assert summary(some_events) == [
            ("push", "ignore/app", image.digest),
            ("delete", "ignore/other", layer),
            ("delete", "ignore/app", "v1"),
        ]
        for request in some.requests:
            headers = {key.lower(): value for key, value in request["headers"].items()}
            assert headers["authorization"] == "Bearer s3cret"
    finally:
        everything.shutdown()
        some.shutdown()


def test_single_request_upload_and_repository_delete(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    receiver.listen()
    registry = server_factory(config=notifying(endpoint(receiver)))
    data = b"one request"
    digest = sha256_digest(data)
    with httpx.Client() as client:
        created = client.post(
            f"{registry.url}/v2/single/app/blobs/uploads/",
            params={"digest": digest},
            content=data,
            headers={"Content-Type": OCTET_STREAM},
        )
        assert created.status_code == 201
        removed = client.delete(f"{registry.url}/v2/_dockyard/repositories/single/app")
        assert removed.status_code < 300
    events = _settled(receiver, 2)
    assert summary(events) == [("push", "single/app", digest), ("delete", "single/app", "")]
    assert events[0]["target"]["size"] == len(data)
    assert events[0]["request"]["method"] == "POST"
    assert events[1]["target"] == {"repository": "single/app"}


def test_the_actor_is_the_signed_in_user_and_refused_requests_make_no_event(
    server_factory: ServerFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.listen()
    config = {**notifying(endpoint(receiver)), **htpasswd_config(tmp_path, rules=None)}
    registry = server_factory(config=config)
    with httpx.Client() as anonymous:
        refused = anonymous.post(f"{registry.url}/v2/actor/app/blobs/uploads/")
        assert refused.status_code == 401
    with httpx.Client(auth=("writer", PASSWORDS["writer"])) as client:
        digest = push_blob(client, registry.url, "actor/app", b"signed in")
        assert client.get(f"{registry.url}/v2/actor/app/blobs/{digest}").status_code == 200
    events = _settled(receiver, 2)
    assert summary(events) == [("push", "actor/app", digest), ("pull", "actor/app", digest)]
    assert [event["actor"] for event in events] == [{"name": "writer"}] * 2


def test_events_pending_when_the_registry_is_killed_survive(
    server_factory: ServerFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.failing = True
    receiver.listen()
    root = tmp_path / "data"
    config = notifying(endpoint(receiver))
    first = server_factory(config=config, root=root, name="one")
    with httpx.Client() as client:
        expected = [
            ("push", "killed/app", push_blob(client, first.url, "killed/app", bytes([index])))
            for index in range(4)
        ]
    first.kill()
    receiver.failing = False
    server_factory(config=config, root=root, name="two")
    events = _settled(receiver, len(expected))
    assert summary(events) == expected


def test_several_workers_send_each_event_once_and_each_in_its_order(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    receiver.failing = True
    receiver.listen()
    registry = server_factory(config=notifying(endpoint(receiver), workers=2))
    expected = set()
    for index in range(12):
        # A connection each, so that both workers take some.
        with httpx.Client() as client:
            expected.add(push_blob(client, registry.url, "workers/app", f"w{index}".encode()))
    receiver.failing = False
    events = _settled(receiver, len(expected))
    assert {event["target"]["digest"] for event in events} == expected
    by_process: dict[str, list[str]] = {}
    for event in events:
        by_process.setdefault(event["source"]["instanceID"], []).append(event["timestamp"])
    for timestamps in by_process.values():
        assert timestamps == sorted(timestamps)
