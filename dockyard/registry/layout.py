"""Distribution's storage layout under ``/docker/registry/v2``.

Every path is built from validated names, tags, digests and upload ids only, so the
layout itself can never point outside the registry's tree.
"""

from __future__ import annotations

from dockyard.registry.digest import Digest

ROOT = "/docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"


def blob_prefix(digest: Digest) -> str:
    """The directory below the algorithm's that holds the blob's."""
    return digest.hex[:2]


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{blob_prefix(digest)}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers(name: str) -> str:
    return f"{repository(name)}/_layers"


def layer_link(name: str, digest: Digest) -> str:
    return f"{layers(name)}/{digest.algorithm}/{digest.hex}/link"


def layer_dir(name: str, digest: Digest) -> str:
    return f"{layers(name)}/{digest.algorithm}/{digest.hex}"


def released_marker(link: str) -> str:
    """Beside a link: written when a deleted manifest stops using what the link names."""
    return f"{link.rsplit('/', 1)[0]}/released"


def manifests(name: str) -> str:
    return f"{repository(name)}/_manifests"


def revisions(name: str) -> str:
    return f"{manifests(name)}/revisions"


def revision_dir(name: str, digest: Digest) -> str:
    return f"{revisions(name)}/{digest.algorithm}/{digest.hex}"


def revision_link(name: str, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


def tags(name: str) -> str:
    return f"{manifests(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}/link"


TAG_ENTRY_PREFIX = "tagged."


def tag_entry(name: str, digest: Digest, tag: str) -> str:
    """Dockyard's reverse index of tags: a file per tag that points at a manifest, in the
    manifest's revision directory, written before the tag moves to it.

    Distribution's readers of that directory take only its ``link`` (its garbage
    collection walks it for files named so), and a manifest's deletion takes the whole
    directory with its entries. An entry is a hard link to the tag's index link where
    the file system allows it, so indexing a push costs no inode of its own.
    """
    return f"{revision_dir(name, digest)}/{TAG_ENTRY_PREFIX}{tag}"


def tags_indexed(name: str) -> str:
    """Says every tag of the repository has its entry (:func:`tag_entry`)."""
    return f"{manifests(name)}/tags.indexed"


def former_tag_index(name: str) -> str:
    """Where earlier versions kept the reverse index (``tagged/<alg>/<hex>/<tag>``, and
    ``tagged/complete``): removed once the index is rebuilt in revision directories."""
    return f"{manifests(name)}/tagged"


def referrers(name: str, subject: Digest) -> str:
    """Manifests whose ``subject`` is ``subject``: Dockyard's index for the referrers API.

    It sits under ``_manifests`` beside ``revisions`` and ``tags``, where Distribution's
    readers (catalog, tags, garbage collection) do not look, so they are unaffected.
    """
    return f"{manifests(name)}/referrers/{subject.algorithm}/{subject.hex}"


def referrer_dir(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers(name, subject)}/{referrer.algorithm}/{referrer.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrer_dir(name, subject, referrer)}/link"


def uploads(name: str) -> str:
    return f"{repository(name)}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hash_states(name: str, upload_id: str, algorithm: str) -> str:
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hash_state(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    """The running hash of the upload's first ``offset`` bytes, as Distribution saves it."""
    return f"{upload_hash_states(name, upload_id, algorithm)}/{offset}"
