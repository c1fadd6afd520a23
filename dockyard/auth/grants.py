"""Who a caller is and what they may do: the answer authentication hands to the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from dockyard.auth.rules import AccessPolicy
from dockyard.auth.scopes import ADMIN, Access, AccessSet

Method = Literal["anonymous", "basic", "token", "silly"]


class Grants(Protocol):
    def allows(self, access: Access) -> bool:
        """May the caller take this action on this resource?"""
        ...

    def can_see(self, repository: str) -> bool:
        """Does the repository appear in the caller's catalog and usage listings?"""
        ...

    @property
    def sees_everything(self) -> bool:
        """Listings need no filtering for this caller."""
        ...


class AllowAll:
    """No access control configured, or Distribution's htpasswd semantics without rules:
    whoever signs in may do everything."""

    def allows(self, access: Access) -> bool:
        return True

    def can_see(self, repository: str) -> bool:
        return True

    @property
    def sees_everything(self) -> bool:
        return True


class Nothing:
    def allows(self, access: Access) -> bool:
        return False

    def can_see(self, repository: str) -> bool:
        return False

    @property
    def sees_everything(self) -> bool:
        return False


class PolicyGrants:
    """The access rules evaluated for one caller (``user`` None: anonymous)."""

    def __init__(self, policy: AccessPolicy, user: str | None) -> None:
        self.policy = policy
        self.user = user

    def allows(self, access: Access) -> bool:
        return self.policy.allows(self.user, access)

    def can_see(self, repository: str) -> bool:
        return "pull" in self.policy.actions(self.user, repository)

    @property
    def sees_everything(self) -> bool:
        return self.policy.is_admin(self.user)


class TokenGrants:
    """What a verified token's ``access`` claim grants.

    ``listing`` is set for tokens from Dockyard's own token service: a token only says
    the caller may list the catalog, so which repositories they see comes from the same
    rules that minted it. For another issuer's tokens the catalog is unfiltered, as in
    Distribution.
    """

    def __init__(self, access: AccessSet, listing: PolicyGrants | None) -> None:
        self.access = access
        self.listing = listing

    def allows(self, access: Access) -> bool:
        return self.access.allows(access)

    def can_see(self, repository: str) -> bool:
        return self.listing.can_see(repository) if self.listing is not None else True

    @property
    def sees_everything(self) -> bool:
        return self.listing is None or self.listing.sees_everything or self.access.allows(ADMIN)


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of one request: ``user`` is None for anonymous callers."""

    user: str | None
    grants: Grants
    method: Method

    @property
    def anonymous(self) -> bool:
        return self.method == "anonymous"

    def allows(self, access: Access) -> bool:
        return self.grants.allows(access)
