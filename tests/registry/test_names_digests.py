from __future__ import annotations

import hashlib
import pickle
from dataclasses import FrozenInstanceError

import pytest

from dockyard.errors import DigestInvalid, NameInvalid, TagInvalid
from dockyard.registry.digest import Digest
from dockyard.registry.names import check_name, check_tag


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "library/nginx",
        "zhang/nginx",
        "a/b/c/d",
        "a-b",
        "a--b",
        "a__b",
        "a.b",
        "a_b/c.d-e",
        "0",
    ],
)
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "a/",
        "/a",
        "a//b",
        "a/../b",
        "..",
        "a/./b",
        "-a",
        "a-",
        "a___b",
        "a b",
        "a\x00b",
        "a%2fb",
        "a" * 256,
        "a/" * 128 + "a",
        "_catalog",
        "a/_layers",
        "a:b",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        check_name(name)


@pytest.mark.parametrize("tag", ["latest", "1.17", "7.7.1908", "v0.12.0-amd64", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "-x", ".x", "a/b", "a:b", "A" * 129, "..", "a b", "sha256:ab"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        check_tag(tag)


def test_digest_round_trip() -> None:
    data = b"hello"
    digest = Digest.of(data)
    assert str(digest) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert Digest.parse(str(digest)) == digest
    sha512 = Digest.of(data, "sha512")
    assert Digest.parse(str(sha512)) == sha512


def test_a_digest_pickles_as_itself() -> None:
    # Collections send digests to their helper processes pickled.
    digests = [Digest.of(b"hello"), Digest.of(b"hello", "sha512")]
    copies = pickle.loads(pickle.dumps(digests, protocol=pickle.HIGHEST_PROTOCOL))
    assert copies == digests
    assert [type(copy) for copy in copies] == [Digest, Digest]
    assert {copies[0]: 1}[digests[0]] == 1
    with pytest.raises(FrozenInstanceError):
        copies[0].hex = "0" * 64  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 64 + "/x",
    ],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(text)
