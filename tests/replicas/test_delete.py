"""A manifest deleted through one replica is gone on every replica at once.

Each replica caches manifest bytes by digest in its own memory; whether a repository
still has a manifest, and where a tag points, must come from the shared store on every
request, or a replica that served the manifest a moment ago keeps serving it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.replicas.clients import assert_pulls, push_skopeo
from tests.replicas.harness import Cluster
from tests.support.images import ALL_MANIFEST_TYPES, make_image


def manifest(client: httpx.Client, host: str, repository: str, reference: str) -> httpx.Response:
    return client.get(
        f"http://{host}/v2/{repository}/manifests/{reference}",
        headers={"Accept": ALL_MANIFEST_TYPES},
    )


def tags(client: httpx.Client, host: str, repository: str) -> list[str]:
    response = client.get(f"http://{host}/v2/{repository}/tags/list")
    assert response.status_code == 200, (host, response.status_code, response.text)
    listed: list[str] = response.json()["tags"] or []
    return sorted(listed)


def test_delete_through_one_replica_is_seen_by_every_replica(
    cluster: Cluster, tmp_path: Path
) -> None:
    repository = "replicas/deleted"
    doomed = make_image("replicas-doomed", layers=2)
    kept = make_image("replicas-kept", layers=2)
    push_skopeo(cluster.host, doomed, f"{repository}:v1", tmp_path / "push-doomed")
    push_skopeo(cluster.host, kept, f"{repository}:v2", tmp_path / "push-kept")

    hosts = [replica.host for replica in cluster.replicas]
    with httpx.Client(timeout=30) as client:
        # Every replica has read the manifest (by digest and by tag) and the tag list,
        # so whatever a replica keeps in memory, it has it now.
        for host in hosts:
            for reference in (doomed.digest, "v1"):
                response = manifest(client, host, repository, reference)
                assert response.status_code == 200, (host, reference, response.text)
                assert response.content == doomed.manifest.data
            head = client.head(f"http://{host}/v2/{repository}/manifests/{doomed.digest}")
            assert head.status_code == 200, host
            assert tags(client, host, repository) == ["v1", "v2"], host

        first, *others = cluster.replicas
        deleted = client.delete(f"{first.url}/v2/{repository}/manifests/{doomed.digest}")
        assert deleted.status_code == 202, (deleted.status_code, deleted.text)

        # At once, on every replica (the one that deleted, and the others).
        for replica in [*others, first]:
            host = replica.host
            by_digest = manifest(client, host, repository, doomed.digest)
            assert by_digest.status_code == 404, (replica.number, by_digest.text)
            assert by_digest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            head = client.head(f"http://{host}/v2/{repository}/manifests/{doomed.digest}")
            assert head.status_code == 404, replica.number
            by_tag = manifest(client, host, repository, "v1")
            assert by_tag.status_code == 404, (replica.number, by_tag.text)
            assert tags(client, host, repository) == ["v2"], replica.number
            # The other image of the repository is untouched.
            assert manifest(client, host, repository, "v2").content == kept.manifest.data
            # A second delete finds nothing, wherever it lands.
            again = client.delete(f"http://{host}/v2/{repository}/manifests/{doomed.digest}")
            assert again.status_code == 404, (replica.number, again.status_code)

        # Through nginx, request after request (each on the next replica): the same.
        for _ in range(2 * len(cluster.replicas)):
            assert manifest(client, cluster.host, repository, doomed.digest).status_code == 404
            assert tags(client, cluster.host, repository) == ["v2"]

    for replica in cluster.replicas:
        assert_pulls(replica.host, kept, f"{repository}:v2", tmp_path / f"pull-{replica.number}")
