"""The grammar of repository names and tags (OCI distribution spec)."""

from __future__ import annotations

import re

from dockyard.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# Distribution's limit; the spec lets registries cap names and 255 is what clients expect.
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise NameInvalid(detail={"name": name[:300]})
    return name


def is_valid_tag(tag: str) -> bool:
    return TAG_PATTERN.match(tag) is not None


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise TagInvalid("invalid tag", detail={"tag": tag[:300]})
    return tag
