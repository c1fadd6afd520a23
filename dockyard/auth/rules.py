"""Access rules: who may pull, push and delete on which repositories.

A rule names repositories by glob pattern and callers by user name, ``@group``, ``*``
(every signed-in user) or ``anonymous: true`` (callers without credentials, and so
everybody). A caller's actions on a repository are the union over every rule that
matches both; admins may do everything, including Dockyard's operator endpoints.

``push`` and ``delete`` each imply ``pull``: the protocol checks ``pull`` alongside them
(a manifest ``PUT`` needs both, and a client resolves a tag before deleting it), so a
rule granting one without the other would only produce confusing failures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from dockyard.auth.scopes import ADMIN, ALL_ACTIONS, CATALOG, REPOSITORY, REPOSITORY_ACTIONS, Access

EVERYONE = "*"


class RuleError(ValueError):
    """An access rule that cannot be used; the message says which and why."""


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """``*`` within one path component, ``**`` across components, ``?`` one character,
    ``[...]`` a class. ``team/**`` matches ``team/a`` and ``team/a/b``, not ``team``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                raise RuleError(f"unclosed [ in repository pattern {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


def normalize_actions(actions: Iterable[str]) -> frozenset[str]:
    result: set[str] = set()
    for action in actions:
        action = action.strip().lower()
        if action == ALL_ACTIONS:
            result.update(REPOSITORY_ACTIONS)
        elif action in REPOSITORY_ACTIONS:
            result.add(action)
        else:
            raise RuleError(f"unknown action {action!r} (pull, push, delete or *)")
    if result & {"push", "delete"}:
        result.add("pull")
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class Rule:
    patterns: tuple[re.Pattern[str], ...]
    users: frozenset[str]
    groups: frozenset[str]
    everyone: bool
    anonymous: bool
    actions: frozenset[str]

    def covers(self, repository: str) -> bool:
        return any(pattern.fullmatch(repository) for pattern in self.patterns)

    def applies_to(self, user: str | None, memberships: frozenset[str]) -> bool:
        # Anonymous rules apply to signed-in users too: signing in never takes rights away.
        if self.anonymous:
            return True
        if user is None:
            return False
        return self.everyone or user in self.users or bool(self.groups & memberships)


class AccessPolicy:
    """The rules, admins and groups of ``dockyard.auth``, evaluated per caller."""

    def __init__(
        self,
        rules: Sequence[Rule],
        admins: Iterable[str] = (),
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self._groups = {name: frozenset(members) for name, members in (groups or {}).items()}
        self._admin_users, self._admin_groups = _split_principals(admins, self._groups)

    @classmethod
    def build(
        cls,
        rules: Iterable[Mapping[str, object]],
        admins: Iterable[str] = (),
        groups: Mapping[str, Iterable[str]] | None = None,
    ) -> AccessPolicy:
        """From config data: ``{repositories, users, anonymous, actions}`` per rule."""
        known_groups = {name: frozenset(members) for name, members in (groups or {}).items()}
        compiled: list[Rule] = []
        for index, rule in enumerate(rules):
            where = f"dockyard.auth.access[{index}]"
            patterns = _strings(rule.get("repositories"), f"{where}.repositories")
            if not patterns:
                raise RuleError(f"{where}: repositories must name at least one pattern")
            principals = _strings(rule.get("users") or [], f"{where}.users")
            anonymous = bool(rule.get("anonymous", False))
            if not principals and not anonymous:
                raise RuleError(f"{where}: name users, or set anonymous: true")
            users, rule_groups = _split_principals(principals, known_groups, where)
            try:
                actions = normalize_actions(_strings(rule.get("actions"), f"{where}.actions"))
                compiled_patterns = tuple(compile_glob(p) for p in patterns)
            except RuleError as error:
                raise RuleError(f"{where}: {error}") from None
            if not actions:
                raise RuleError(f"{where}: actions must name at least one action")
            compiled.append(
                Rule(
                    patterns=compiled_patterns,
                    users=users - {EVERYONE},
                    groups=rule_groups,
                    everyone=EVERYONE in users,
                    anonymous=anonymous,
                    actions=actions,
                )
            )
        return cls(compiled, admins, known_groups)

    def memberships(self, user: str | None) -> frozenset[str]:
        if user is None:
            return frozenset()
        return frozenset(name for name, members in self._groups.items() if user in members)

    def is_admin(self, user: str | None) -> bool:
        if user is None:
            return False
        return user in self._admin_users or bool(self._admin_groups & self.memberships(user))

    def actions(self, user: str | None, repository: str) -> frozenset[str]:
        """Every action ``user`` (None: anonymous) may take on ``repository``."""
        if self.is_admin(user):
            return frozenset(REPOSITORY_ACTIONS)
        memberships = self.memberships(user)
        granted: set[str] = set()
        for rule in self.rules:
            if rule.applies_to(user, memberships) and rule.covers(repository):
                granted |= rule.actions
        return frozenset(granted)

    def may_list(self, user: str | None) -> bool:
        """The catalog is open to every signed-in user and, where some rule lets
        anonymous callers in, to them; what it shows is filtered per caller."""
        return user is not None or any(rule.anonymous for rule in self.rules)

    def allows(self, user: str | None, access: Access) -> bool:
        if self.is_admin(user):
            return True
        if access == CATALOG:
            return self.may_list(user)
        if access == ADMIN:
            return False
        if access.type == REPOSITORY:
            actions = self.actions(user, access.name)
            if access.action == ALL_ACTIONS:
                return actions >= set(REPOSITORY_ACTIONS)
            return access.action in actions
        return False


def _strings(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where} must be a list of strings")
    return list(value)


def _split_principals(
    principals: Iterable[str],
    groups: Mapping[str, frozenset[str]],
    where: str = "dockyard.auth.admins",
) -> tuple[frozenset[str], frozenset[str]]:
    users: set[str] = set()
    group_names: set[str] = set()
    for principal in principals:
        if principal.startswith("@"):
            name = principal[1:]
            if name not in groups:
                raise RuleError(
                    f"{where}: unknown group {principal!r} (define it under dockyard.auth.groups)"
                )
            group_names.add(name)
        else:
            users.add(principal)
    return frozenset(users), frozenset(group_names)
