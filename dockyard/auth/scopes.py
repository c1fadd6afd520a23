"""What a request needs and what a token grants, in the Docker token spec's terms.

A resource is ``type:name`` (``repository:team/app``, ``registry:catalog``); an access is
a resource plus one action (``pull``, ``push``, ``delete``, ``*``). Scopes travel as
``type:name:action,action`` in ``WWW-Authenticate`` challenges and token requests, and as
``{"type", "name", "actions"}`` entries in a token's ``access`` claim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

REPOSITORY = "repository"
REGISTRY = "registry"
ALL_ACTIONS = "*"
REPOSITORY_ACTIONS = ("pull", "push", "delete")


@dataclass(frozen=True, slots=True)
class Access:
    """One action on one resource: the unit a request needs and a grant allows."""

    type: str
    name: str
    action: str

    def to_json(self) -> dict[str, str]:
        # The shape Distribution puts in an UNAUTHORIZED error's detail.
        return {"Type": self.type, "Class": "", "Name": self.name, "Action": self.action}


def repository(name: str, action: str) -> Access:
    return Access(REPOSITORY, name, action)


# Listing repositories (the catalog, and usage which lists them too).
CATALOG = Access(REGISTRY, "catalog", ALL_ACTIONS)
# Dockyard's operator endpoints (garbage collection, its status): no repository names them.
ADMIN = Access(REGISTRY, "dockyard", "admin")


@dataclass(frozen=True, slots=True)
class Scope:
    """A resource and the actions asked for (a request) or granted (a token)."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def _base_type(text: str) -> str:
    # ``repository(plugin)`` carries a resource class; grants are by type alone, as in
    # Distribution.
    return text.split("(", 1)[0]


def parse_scope(text: str) -> Scope | None:
    """``type:name:actions``; the name may itself hold colons, so split at both ends."""
    resource_type, sep, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not sep or not sep2 or not resource_type or not name:
        return None
    actions = tuple(dict.fromkeys(a.strip() for a in actions_text.split(",") if a.strip()))
    return Scope(_base_type(resource_type), name, actions)


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Every scope in the ``scope`` parameters (repeated, or space separated in one),
    with the actions of repeated resources merged and malformed entries dropped."""
    merged: dict[tuple[str, str], dict[str, None]] = {}
    for value in values:
        for part in value.split():
            scope = parse_scope(part)
            if scope is None:
                continue
            merged.setdefault((scope.type, scope.name), {}).update(dict.fromkeys(scope.actions))
    return [Scope(t, n, tuple(actions)) for (t, n), actions in merged.items()]


def challenge_scope(accesses: Iterable[Access]) -> str:
    """The ``scope`` of a ``WWW-Authenticate: Bearer`` challenge for these accesses."""
    grouped: dict[tuple[str, str], dict[str, None]] = {}
    for access in accesses:
        grouped.setdefault((access.type, access.name), {})[access.action] = None
    return " ".join(f"{t}:{n}:{','.join(actions)}" for (t, n), actions in grouped.items())


class AccessSet:
    """What a token's ``access`` claim grants, looked up by resource."""

    def __init__(self, entries: Mapping[tuple[str, str], frozenset[str]]) -> None:
        self._entries = dict(entries)

    @classmethod
    def from_claim(cls, claim: Any) -> AccessSet:
        """Parse the ``access`` claim; anything malformed raises ``ValueError``."""
        if claim is None:
            return cls({})
        if not isinstance(claim, list):
            raise ValueError("access claim is not a list")
        entries: dict[tuple[str, str], set[str]] = {}
        for item in claim:
            if not isinstance(item, dict):
                raise ValueError("access entry is not an object")
            resource_type, name, actions = item.get("type"), item.get("name"), item.get("actions")
            if not isinstance(resource_type, str) or not isinstance(name, str):
                raise ValueError("access entry without type or name")
            if actions is None:
                actions = []
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise ValueError("access entry actions are not a list of strings")
            entries.setdefault((_base_type(resource_type), name), set()).update(actions)
        return cls({key: frozenset(value) for key, value in entries.items()})

    def allows(self, access: Access) -> bool:
        actions = self._entries.get((access.type, access.name))
        return actions is not None and (ALL_ACTIONS in actions or access.action in actions)

    def resources(self) -> list[tuple[str, str]]:
        return list(self._entries)
