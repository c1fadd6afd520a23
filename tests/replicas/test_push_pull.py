"""Pushes through nginx spread over every replica; every replica then serves it all.

nginx balances round robin, so consecutive requests of one client land on different
replicas: the POST that opens an upload, its PATCHes and the closing PUT are answered by
different processes that share nothing but the bucket and Redis. The replicas' own
access logs show where each request went.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import httpx

from tests.replicas.clients import absolute, assert_pulls, push_skopeo
from tests.replicas.harness import AccessLine, Cluster
from tests.support.images import make_image, make_index, sha256_digest, with_digest

MiB = 1 << 20


def test_images_pushed_through_nginx_pull_from_every_replica(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Incompressible layers of 3 to 6 MiB each, so some cross the 5 MiB part size.
    image = make_image("replicas-app", layers=3, files_per_layer=2, file_size=3 * MiB)
    index = make_index("replicas-multi-arch", layers=2)
    assert len(index.images) == 2
    push_skopeo(cluster.host, image, "replicas/app:v1", tmp_path / "push-app")
    push_skopeo(cluster.host, index, "replicas/multi:v1", tmp_path / "push-multi")

    # One blob in several PATCHes, each request through nginx on its own.
    data = random.Random("replicas-chunked").randbytes(7 * MiB + 4321)
    digest = sha256_digest(data)
    chunk = MiB
    repository = "replicas/chunked"
    with httpx.Client(timeout=60) as client:
        started = client.post(f"{cluster.url}/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        # Behind nginx, the Location names nginx (X-Forwarded-Host, X-Forwarded-Proto).
        assert started.headers["Location"].startswith(f"{cluster.url}/v2/{repository}/"), (
            started.headers
        )
        url = absolute(cluster.url, started.headers["Location"])
        upload_path = url.removeprefix(cluster.url).split("?")[0]
        for offset in range(0, len(data), chunk):
            piece = data[offset : offset + chunk]
            response = client.patch(
                url,
                content=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    "Content-Length": str(len(piece)),
                },
            )
            assert response.status_code == 202, (response.status_code, response.text)
            assert response.headers["Range"] == f"0-{offset + len(piece) - 1}"
            assert response.headers["Location"].startswith(cluster.url), response.headers
            url = absolute(cluster.url, response.headers["Location"])
        done = client.put(with_digest(url, digest))
        assert done.status_code == 201, (done.status_code, done.text)
        assert done.headers["Docker-Content-Digest"] == digest
        assert done.headers["Location"].startswith(cluster.url), done.headers

    # Where each request of that upload went, from the replicas' access logs.
    patches = -(-len(data) // chunk)
    by_method: dict[str, set[int]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)

    def of_upload(line: AccessLine) -> bool:
        if line.method == "POST":
            return line.uri.startswith(f"/v2/{repository}/blobs/uploads/")
        return line.uri.split("?")[0] == upload_path

    for line in cluster.access_matching(of_upload, patches + 2):
        by_method[line.method].add(line.replica)
        counts[line.method] += 1
    assert dict(counts) == {"POST": 1, "PATCH": patches, "PUT": 1}, counts
    replicas_used = set().union(*by_method.values())
    print(f"\nupload of {patches} PATCHes answered by replicas: {dict(by_method)}")
    assert len(replicas_used) > 1, by_method
    assert len(by_method["PATCH"]) > 1, by_method
    # Round robin over one kept-alive connection: each replica takes its turn.
    assert replicas_used == {replica.number for replica in cluster.replicas}, by_method

    # skopeo's pushes spread too.
    pushed_on = {line.replica for line in cluster.access() if line.method in ("PATCH", "PUT")}
    assert pushed_on == {replica.number for replica in cluster.replicas}

    # Every replica directly, and nginx, serve every manifest and blob as pushed.
    hosts = [cluster.host] + [replica.host for replica in cluster.replicas]
    for number, host in enumerate(hosts):
        assert_pulls(host, image, "replicas/app:v1", tmp_path / f"pull-app-{number}")
        assert_pulls(host, index, "replicas/multi:v1", tmp_path / f"pull-multi-{number}")
        with httpx.Client(timeout=60, follow_redirects=True) as client:
            blob = client.get(f"http://{host}/v2/{repository}/blobs/{digest}")
            assert blob.status_code == 200, (host, blob.status_code)
            assert sha256_digest(blob.content) == digest, host
            head = client.head(f"http://{host}/v2/{repository}/blobs/{digest}")
            assert head.status_code == 200, host
            assert int(head.headers["Content-Length"]) == len(data), host
            assert head.headers["Docker-Content-Digest"] == digest, host

    # The replicas share the Redis: each holds connections to it, and it holds what they
    # put there (blob descriptors).
    clients = cluster.redis.command("CLIENT", "LIST").splitlines()
    assert len(clients) > len(cluster.replicas), clients
    assert cluster.redis.command("DBSIZE") > 0
    # ...and answer blob lookups from there: a descriptor one replica stored is a hit on
    # another.
    hits = [
        replica.metric('registry_cache_requests_total{cache="blobdescriptors",result="hit"}')
        for replica in cluster.replicas
    ]
    assert sum(hits) > 0, hits

    # A finished upload leaves nothing behind in the bucket, whichever replica closed it.
    keys = cluster.keys()
    assert not any("/_uploads/" in key for key in keys)
    assert cluster.moto.client().list_multipart_uploads(Bucket=cluster.bucket).get("Uploads", []) == []
