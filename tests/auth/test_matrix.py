"""Every endpoint × every kind of caller, with htpasswd (Basic) and with tokens.

The callers: anonymous, a wrong password, and users whose rules make them a reader,
a writer, a deleter (all on ``proj/**``) and an admin; everybody may pull ``public/**``
and nobody but the admin touches ``secret/**``. Each case states the grant it needs; the
expectation is computed from a model of the rules written here, independently of the
code under test: allowed callers get the endpoint's normal answer, the others 401 (no
or wrong credentials, an anonymous token) or 403 (a signed-in user), and a refused
change leaves the registry as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dockyard.api import extensions
from tests.auth.support import (
    ADMIN,
    PRINCIPALS,
    error_code,
    htpasswd_config,
    parse_challenge,
    token_config,
)
from tests.support.images import (
    ALL_MANIFEST_TYPES,
    Image,
    make_image,
    push_artifact,
    sha256_digest,
    with_digest,
)
from tests.support.servers import ServerProcess

MODES = ["htpasswd", "token"]
NAMES = [p.name for p in PRINCIPALS]


@dataclass
class World:
    """What the admin set up before the callers act."""

    mode: str
    server: ServerProcess
    admin: httpx.Client
    app: Image
    secret: Image
    public: Image
    per_principal: dict[str, Image] = field(default_factory=dict)
    sessions: dict[tuple[str, str], str] = field(default_factory=dict)


@pytest.fixture(scope="module", params=MODES)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"matrix-{mode}")
    config = htpasswd_config(workdir) if mode == "htpasswd" else token_config(workdir)
    server = ServerProcess("dockyard", workdir, config=config)
    server.start()
    admin = ADMIN.client(server.url)
    try:
        world = World(
            mode, server, admin, make_image("m-app"), make_image("m-secret"), make_image("m-public")
        )
        push_artifact(admin, "", "proj/app", "v1", world.app)
        push_artifact(admin, "", "secret/app", "v1", world.secret)
        push_artifact(admin, "", "public/app", "v1", world.public)
        for principal in NAMES:
            image = make_image(f"m-{principal}")
            world.per_principal[principal] = image
            for repo in ("mdel", "bdel", "rdel"):
                push_artifact(admin, "", f"proj/{repo}-{principal}", "v1", image)
            for purpose in ("status", "patch", "cancel"):
                response = admin.post("/v2/proj/app/blobs/uploads/")
                assert response.status_code == 202, response.text
                world.sessions[(principal, purpose)] = response.headers["Location"]
        yield world
    finally:
        admin.close()
        server.stop()


Grant = tuple[str, str] | str
Action = Callable[[httpx.Client, str, World], httpx.Response]
Check = Callable[[World, str, bool], None]


@dataclass(frozen=True)
class Case:
    name: str
    grant: Callable[[str], Grant]
    act: Action
    success: Callable[[str], int]
    check: Check | None = None


def _status(code: int) -> Callable[[str], int]:
    return lambda principal: code


def may(principal: str, grant: Grant, mode: str) -> bool:
    """The rules of ``tests.auth.support.RULES``, restated."""
    if principal == "wrong-password":
        return False
    if principal == "admin":
        return True
    if grant == "signed_in":
        # An anonymous token is still a token: Docker Hub answers /v2/ with 200 too.
        return principal != "anonymous" or mode == "token"
    if grant == "catalog":
        return True  # every caller may list; what they see is checked separately
    if grant == "admin":
        return False
    assert isinstance(grant, tuple)
    action, repo = grant
    if repo.startswith("public/"):
        return action == "pull"
    if repo.startswith("proj/"):
        return action == "pull" and principal != "anonymous" or {
            "writer": "push",
            "deleter": "delete",
        }.get(principal) == action
    return False


def _exists(world: World, path: str) -> bool:
    response = world.admin.head(path, headers={"Accept": ALL_MANIFEST_TYPES})
    assert response.status_code in (200, 404), (path, response.status_code)
    return response.status_code == 200


def _visible(principal: str) -> Callable[[str], bool]:
    def visible(name: str) -> bool:
        if principal == "admin":
            return True
        if name.startswith("public/"):
            return True
        return name.startswith("proj/") and principal != "anonymous"

    return visible


CASES: list[Case] = [
    Case("base", lambda p: "signed_in", lambda c, p, w: c.get("/v2/"), _status(200)),
    Case("catalog", lambda p: "catalog", lambda c, p, w: c.get("/v2/_catalog"), _status(200)),
    Case("tags", lambda p: ("pull", "proj/app"), lambda c, p, w: c.get("/v2/proj/app/tags/list"), _status(200)),
    Case(
        "tags-secret",
        lambda p: ("pull", "secret/app"),
        lambda c, p, w: c.get("/v2/secret/app/tags/list"),
        _status(200),
    ),
    Case(
        "tags-public",
        lambda p: ("pull", "public/app"),
        lambda c, p, w: c.get("/v2/public/app/tags/list"),
        _status(200),
    ),
    Case(
        "manifest-get",
        lambda p: ("pull", "proj/app"),
        lambda c, p, w: c.get("/v2/proj/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}),
        _status(200),
    ),
    Case(
        "manifest-head",
        lambda p: ("pull", "proj/app"),
        lambda c, p, w: c.head(f"/v2/proj/app/manifests/{w.app.digest}"),
        _status(200),
    ),
    Case(
        "manifest-get-secret",
        lambda p: ("pull", "secret/app"),
        lambda c, p, w: c.get("/v2/secret/app/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}),
        _status(200),
    ),
    Case(
        "manifest-put",
        lambda p: ("push", "proj/app"),
        lambda c, p, w: c.put(
            f"/v2/proj/app/manifests/by-{p}",
            content=w.app.manifest.data,
            headers={"Content-Type": w.app.manifest.media_type},
        ),
        _status(201),
        lambda w, p, allowed: _assert(_exists(w, f"/v2/proj/app/manifests/by-{p}") == allowed),
    ),
    Case(
        "manifest-put-public",
        lambda p: ("push", "public/app"),
        lambda c, p, w: c.put(
            f"/v2/public/app/manifests/by-{p}",
            content=w.public.manifest.data,
            headers={"Content-Type": w.public.manifest.media_type},
        ),
        _status(201),
        lambda w, p, allowed: _assert(_exists(w, f"/v2/public/app/manifests/by-{p}") == allowed),
    ),
    Case(
        "manifest-delete",
        lambda p: ("delete", f"proj/mdel-{p}"),
        lambda c, p, w: c.delete(f"/v2/proj/mdel-{p}/manifests/{w.per_principal[p].digest}"),
        _status(202),
        lambda w, p, allowed: _assert(
            _exists(w, f"/v2/proj/mdel-{p}/manifests/{w.per_principal[p].digest}") != allowed
        ),
    ),
    Case(
        "blob-get",
        lambda p: ("pull", "proj/app"),
        lambda c, p, w: c.get(f"/v2/proj/app/blobs/{w.app.layers[0].digest}"),
        _status(200),
    ),
    Case(
        "blob-head-secret",
        lambda p: ("pull", "secret/app"),
        lambda c, p, w: c.head(f"/v2/secret/app/blobs/{w.secret.layers[0].digest}"),
        _status(200),
    ),
    Case(
        "blob-delete",
        lambda p: ("delete", f"proj/bdel-{p}"),
        lambda c, p, w: c.delete(f"/v2/proj/bdel-{p}/blobs/{w.per_principal[p].layers[0].digest}"),
        _status(202),
        lambda w, p, allowed: _assert(
            _exists(w, f"/v2/proj/bdel-{p}/blobs/{w.per_principal[p].layers[0].digest}") != allowed
        ),
    ),
    Case(
        "upload-start",
        lambda p: ("push", "proj/app"),
        lambda c, p, w: c.post("/v2/proj/app/blobs/uploads/"),
        _status(202),
    ),
    Case(
        "upload-monolithic",
        lambda p: ("push", f"proj/up-{p}"),
        lambda c, p, w: _monolithic(c, f"proj/up-{p}", f"blob of {p}".encode()),
        _status(201),
        lambda w, p, allowed: _assert(
            _exists(w, f"/v2/proj/up-{p}/blobs/{sha256_digest(f'blob of {p}'.encode())}") == allowed
        ),
    ),
    Case(
        "upload-status",
        lambda p: ("push", "proj/app"),
        lambda c, p, w: c.get(w.sessions[(p, "status")]),
        _status(204),
    ),
    Case(
        "upload-patch",
        lambda p: ("push", "proj/app"),
        lambda c, p, w: c.patch(
            w.sessions[(p, "patch")],
            content=b"chunk",
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-4"},
        ),
        _status(202),
    ),
    Case(
        "upload-cancel",
        lambda p: ("push", "proj/app"),
        lambda c, p, w: c.delete(w.sessions[(p, "cancel")]),
        _status(204),
        lambda w, p, allowed: _assert(
            (w.admin.get(w.sessions[(p, "cancel")]).status_code == 404) == allowed
        ),
    ),
    Case(
        "mount-readable",
        lambda p: ("push", f"proj/mnt-{p}"),
        lambda c, p, w: c.post(
            f"/v2/proj/mnt-{p}/blobs/uploads/",
            params={"mount": w.app.layers[0].digest, "from": "proj/app"},
        ),
        _status(201),
    ),
    Case(
        # The caller may push the target but not read the source: no mount (the blob
        # would leak), an ordinary upload session instead.
        "mount-unreadable",
        lambda p: ("push", f"proj/mnt2-{p}"),
        lambda c, p, w: c.post(
            f"/v2/proj/mnt2-{p}/blobs/uploads/",
            params={"mount": w.secret.layers[0].digest, "from": "secret/app"},
        ),
        lambda p: 201 if p == "admin" else 202,
        lambda w, p, allowed: _assert(
            _exists(w, f"/v2/proj/mnt2-{p}/blobs/{w.secret.layers[0].digest}") == (p == "admin")
        ),
    ),
    Case(
        "referrers",
        lambda p: ("pull", "proj/app"),
        lambda c, p, w: c.get(f"/v2/proj/app/referrers/{w.app.digest}"),
        _status(200),
    ),
    Case("usage", lambda p: "catalog", lambda c, p, w: c.get("/v2/_dockyard/usage"), _status(200)),
    Case("gc-status", lambda p: "admin", lambda c, p, w: c.get("/v2/_dockyard/gc"), _status(200)),
    Case(
        "gc-dry-run",
        lambda p: "admin",
        lambda c, p, w: c.post("/v2/_dockyard/gc", params={"dryRun": "true"}),
        _status(200),
    ),
    Case(
        "repository-delete",
        lambda p: ("delete", f"proj/rdel-{p}"),
        lambda c, p, w: c.delete(f"/v2/_dockyard/repositories/proj/rdel-{p}"),
        _status(202),
        lambda w, p, allowed: _assert(
            _exists(w, f"/v2/proj/rdel-{p}/manifests/v1") != allowed
        ),
    ),
    Case(
        # An endpoint that does not exist is answered (404) only after authentication.
        "no-such-endpoint",
        lambda p: "signed_in",
        lambda c, p, w: c.get("/v2/_dockyard/nothing-here"),
        _status(404),
    ),
]


if hasattr(extensions, "repository_details"):
    # The UI's tag table: what the tags list shows, so the same grant.
    CASES.append(
        Case(
            "repository-details",
            lambda p: ("pull", "proj/app"),
            lambda c, p, w: c.get("/v2/_dockyard/repositories/proj/app"),
            _status(200),
        )
    )


def _assert(condition: bool) -> None:
    assert condition


def _monolithic(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    if started.status_code != 202:
        return started
    location = started.headers["Location"]
    return client.put(
        with_digest(location, sha256_digest(data)),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def _check_listing(case: str, response: httpx.Response, principal: str) -> None:
    visible = _visible(principal)
    if case == "catalog":
        names = response.json()["repositories"]
    else:
        body: dict[str, Any] = response.json()
        names = [entry["name"] for entry in body["repositories"]]
        totals = {key: value for key, value in body.items() if key != "repositories"}
        if principal == "admin":
            assert all(value is not None for value in totals.values()), totals
        else:
            # Store-wide figures sum over everyone's repositories: withheld.
            assert all(value is None for value in totals.values()), totals
    assert names, names
    assert all(visible(name) for name in names), (principal, names)
    for expected in ("public/app", "proj/app", "secret/app"):
        if visible(expected):
            assert expected in names, (principal, expected, names)


@pytest.mark.parametrize("principal", NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_access(world: World, case: Case, principal: str) -> None:
    who = next(p for p in PRINCIPALS if p.name == principal)
    allowed = may(principal, case.grant(principal), world.mode)
    client = who.client(world.server.url)
    try:
        response = case.act(client, principal, world)
    finally:
        client.close()
    if allowed:
        assert response.status_code == case.success(principal), (response.status_code, response.text)
        if case.name in ("catalog", "usage"):
            _check_listing(case.name, response, principal)
    else:
        signed_in_user = principal not in ("anonymous", "wrong-password")
        # A signed-in user is refused (403): with a token, RFC 6750's insufficient_scope.
        expected = 403 if signed_in_user else 401
        assert response.status_code == expected, (response.status_code, response.text)
        if response.request.method != "HEAD":
            assert error_code(response) == ("DENIED" if expected == 403 else "UNAUTHORIZED")
        if expected == 401:
            assert response.headers.get("WWW-Authenticate", "").split(" ")[0] in ("Basic", "Bearer")
        elif world.mode == "token":
            scheme, params = parse_challenge(response.headers["WWW-Authenticate"])
            assert (scheme, params["error"]) == ("bearer", "insufficient_scope")
    if case.check is not None:
        case.check(world, principal, allowed)

