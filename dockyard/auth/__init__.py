"""Access control: htpasswd users, Bearer tokens, access rules, the token service.

For the HTTP layer, ``dockyard.auth.http.install`` puts all of it in front of the API.
For the UI, the application's ``AuthService`` (``dockyard.auth.http.auth_of(request)``)
offers ``sign_in(user, password, source)`` (throttled, logged) and
``mint_token(user, scopes, service)``; ``identity_of(request)`` is the caller of an
API request.
"""

from __future__ import annotations

from dockyard.auth.grants import Identity
from dockyard.auth.scopes import ADMIN, CATALOG, Access, Scope, repository
from dockyard.auth.service import AuthConfigError, AuthService, build_auth
from dockyard.config.model import Config


def check_security(config: Config) -> None:
    """Fail start-up early (before any worker starts) on unusable TLS or auth settings,
    and create what Distribution would create (a missing htpasswd file) or what the
    token service needs (its signing key), once, in the parent process."""
    from dockyard.tls import server_ssl_context

    server_ssl_context(config.http.tls)
    build_auth(config)


__all__ = [
    "ADMIN",
    "CATALOG",
    "Access",
    "AuthConfigError",
    "AuthService",
    "Identity",
    "Scope",
    "build_auth",
    "check_security",
    "repository",
]
