"""Authentication and authorization for one registry, built from its configuration.

One object answers every question the HTTP layer (and the UI) asks: who is this caller
(Basic credentials against the htpasswd file, or a Bearer token), may they do this,
what challenge tells a client how to authenticate, and, for the built-in token service,
what token a caller gets for the scopes it asks for.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from dockyard.auth.backoff import BackoffSettings, LoginThrottle
from dockyard.auth.grants import AllowAll, Identity, Nothing, PolicyGrants, TokenGrants
from dockyard.auth.htpasswd import HtpasswdFile, ensure_htpasswd
from dockyard.auth.rules import AccessPolicy, RuleError
from dockyard.auth.scopes import (
    ADMIN,
    ALL_ACTIONS,
    CATALOG,
    REGISTRY,
    REPOSITORY,
    REPOSITORY_ACTIONS,
    Access,
    Scope,
    challenge_scope,
    parse_scopes,
)
from dockyard.config.model import Config, TokenAuth, TokenService
from dockyard.registry.names import NAME_PATTERN

if TYPE_CHECKING:
    # Bearer tokens need ``cryptography`` and ``jwt`` (about 14 MiB per process), so
    # they are loaded only by a registry configured for them.
    from dockyard.auth.tokens import IssuedToken, TokenIssuer, TokenVerifier

log = logging.getLogger("dockyard.auth")

Mode = Literal["none", "htpasswd", "token", "silly"]
DEFAULT_ISSUER = "dockyard"
DEFAULT_SERVICE = "dockyard"
TOKEN_PATH = "/auth/token"


class AuthConfigError(ValueError):
    """The auth configuration cannot be used; the message names the key."""


class AuthenticationFailed(Exception):
    """Credentials were presented and are wrong (or a token is invalid)."""

    def __init__(self, reason: str, invalid_token: bool = False) -> None:
        super().__init__(reason)
        self.invalid_token = invalid_token


def go_quote(text: str) -> str:
    """A quoted-string as Go's %q writes it, which is what Distribution's challenges use."""
    return json.dumps(text, ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class TokenServiceSettings:
    issuer: TokenIssuer
    services: frozenset[str]


class AuthService:
    def __init__(
        self,
        mode: Mode,
        *,
        realm: str | None = None,
        service: str = DEFAULT_SERVICE,
        users: HtpasswdFile | None = None,
        policy: AccessPolicy | None = None,
        verifier: TokenVerifier | None = None,
        token_service: TokenServiceSettings | None = None,
        throttle: LoginThrottle | None = None,
        autoredirect_path: str | None = None,
    ) -> None:
        self.mode = mode
        self.realm = realm
        self.service = service
        self.users = users
        self.policy = policy
        self.verifier = verifier
        self.token_service = token_service
        self.throttle = throttle or LoginThrottle()
        self.autoredirect_path = autoredirect_path

    # --- who is calling --------------------------------------------------------------

    def _user_grants(self, user: str | None) -> PolicyGrants | AllowAll | Nothing:
        if self.policy is not None:
            return PolicyGrants(self.policy, user)
        # Without rules, Distribution's semantics: a signed-in user may do everything,
        # an anonymous caller nothing.
        return AllowAll() if user is not None else Nothing()

    def identity_for(self, user: str) -> Identity:
        """The identity of a user whose credentials were already checked."""
        return Identity(user, self._user_grants(user), "basic")

    def anonymous(self) -> Identity:
        if self.mode == "none":
            return Identity(None, AllowAll(), "anonymous")
        if self.mode == "htpasswd":
            return Identity(None, self._user_grants(None), "anonymous")
        # Token auth: the registry answers only to tokens; anonymous callers get theirs
        # (with whatever anonymous rules allow) from the token service.
        return Identity(None, Nothing(), "anonymous")

    async def sign_in(self, user: str, password: str, source: str) -> Identity | None:
        """Check a user's password: the one function the UI's sign-in form needs.

        Slowed down per source address after repeated failures (``TooManyRequests`` when
        the source's queue is too long), failures logged without the password; returns
        the signed-in identity, or None.
        """
        if self.users is None:
            return None
        if self.users.remembered(user, password):
            return self.identity_for(user)
        await self.throttle.wait_turn(source)
        if await self.users.verify(user, password):
            log.debug("user %r signed in from %s", user, source)
            return self.identity_for(user)
        self.throttle.failed(source, user)
        return None

    def verify_token(self, raw: str) -> Identity:
        if self.verifier is None:
            raise AuthenticationFailed("bearer tokens are not accepted here", invalid_token=True)
        from dockyard.auth.tokens import TokenError

        try:
            verified = self.verifier.verify(raw)
        except TokenError as error:
            log.info("rejected a bearer token: %s", error)
            raise AuthenticationFailed(str(error), invalid_token=True) from None
        user = verified.subject or None
        listing = None
        if (
            self.policy is not None
            and self.token_service is not None
            and verified.issuer == self.token_service.issuer.issuer
        ):
            listing = PolicyGrants(self.policy, user)
        return Identity(user, TokenGrants(verified.access, listing), "token")

    async def identify(self, authorization: str | None, source: str) -> Identity:
        """The caller behind an ``Authorization`` header (None or empty: anonymous)."""
        if not authorization or self.mode == "none":
            # An open registry (only the token service configured, for other
            # registries): credentials change nothing here.
            return self.anonymous()
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if self.mode == "silly":
            # Distribution's "silly" controller: any Authorization header will do.
            return Identity(None, AllowAll(), "silly")
        if scheme == "basic" and self.users is not None:
            user, password = parse_basic(value)
            identity = await self.sign_in(user, password, source)
            if identity is None:
                raise AuthenticationFailed("invalid username or password")
            return identity
        if scheme == "bearer" and self.verifier is not None:
            return self.verify_token(value.strip())
        raise AuthenticationFailed(f"unsupported authorization scheme {scheme!r}")

    # --- challenges --------------------------------------------------------------------

    def realm_for(self, scheme: str, host: str, base: str) -> str:
        """The token realm clients are sent to: configured, or this server's own token
        endpoint as the client addressed it (``base`` is scheme://host[/prefix])."""
        if self.autoredirect_path is not None:
            return f"{scheme}://{host}{self.autoredirect_path}"
        if self.realm:
            return self.realm
        return base + TOKEN_PATH

    def challenge(
        self, realm: str, accesses: Sequence[Access], error: str | None = None
    ) -> str:
        if self.mode == "htpasswd":
            return f"Basic realm={go_quote(realm)}"
        header = f"Bearer realm={go_quote(realm)},service={go_quote(self.service)}"
        scope = challenge_scope(accesses)
        if scope:
            header += f",scope={go_quote(scope)}"
        if error:
            header += f",error={go_quote(error)}"
        return header

    # --- the token service --------------------------------------------------------------

    def grant(self, user: str | None, scopes: Iterable[Scope]) -> list[Scope]:
        """What of ``scopes`` the rules give ``user`` (None: anonymous); nothing more."""
        granted: list[Scope] = []
        for scope in scopes:
            actions: tuple[str, ...] = ()
            if scope.type == REPOSITORY and len(scope.name) <= 255 and NAME_PATTERN.fullmatch(scope.name):
                allowed = self._repository_actions(user, scope.name)
                requested = set(REPOSITORY_ACTIONS) if ALL_ACTIONS in scope.actions else set(scope.actions)
                actions = tuple(a for a in REPOSITORY_ACTIONS if a in allowed and a in requested)
            elif scope.type == REGISTRY and scope.name == CATALOG.name:
                if ALL_ACTIONS in scope.actions and self._user_grants(user).allows(CATALOG):
                    actions = (ALL_ACTIONS,)
            elif scope.type == REGISTRY and scope.name == ADMIN.name:
                wanted = {ADMIN.action, ALL_ACTIONS} & set(scope.actions)
                if wanted and self._user_grants(user).allows(ADMIN):
                    actions = (ADMIN.action,)
            if actions:
                granted.append(Scope(scope.type, scope.name, actions))
        return granted

    def _repository_actions(self, user: str | None, name: str) -> frozenset[str]:
        if self.policy is not None:
            return self.policy.actions(user, name)
        return frozenset(REPOSITORY_ACTIONS) if user is not None else frozenset()

    def mint_token(
        self, user: str | None, scopes: Iterable[str] | Iterable[Scope], service: str | None = None
    ) -> IssuedToken:
        """A token for ``user`` (None: anonymous) with what the rules grant of ``scopes``
        (``"repository:team/app:pull,push"`` strings or parsed scopes): what the UI
        calls once the user has signed in. Raises ``ValueError`` without a token
        service or for a service name it does not serve."""
        if self.token_service is None:
            raise ValueError("the token service is not enabled (dockyard.auth.tokenservice)")
        audience = service or self.service
        if audience not in self.token_service.services:
            raise ValueError(f"this token service does not issue tokens for service {audience!r}")
        items = list(scopes)
        parsed = [s for s in items if isinstance(s, Scope)] + parse_scopes(
            s for s in items if isinstance(s, str)
        )
        granted = self.grant(user, parsed)
        log.debug(
            "token for %r, service %s: %s",
            user or "(anonymous)",
            audience,
            " ".join(str(s) for s in granted) or "(no access)",
        )
        return self.token_service.issuer.mint(user or "", audience, granted)


def parse_basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise AuthenticationFailed("malformed basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise AuthenticationFailed("malformed basic credentials")
    return user, password


# --- building from the configuration ---------------------------------------------------


def _policy(config: Config) -> AccessPolicy | None:
    settings = config.dockyard.auth
    if settings.access is None and not settings.admins:
        return None
    try:
        return AccessPolicy.build(
            [asdict(rule) for rule in settings.access or []],
            settings.admins,
            settings.groups,
        )
    except RuleError as error:
        raise AuthConfigError(str(error)) from None


def _throttle(config: Config) -> LoginThrottle:
    backoff = config.dockyard.auth.backoff
    return LoginThrottle(
        BackoffSettings(
            free=backoff.free,
            initial=backoff.initial.total_seconds(),
            maximum=backoff.maximum.total_seconds(),
            window=backoff.window.total_seconds(),
        )
    )


def _bearer_tokens(
    token: TokenAuth | None, tokens: TokenService, service: str
) -> tuple[TokenServiceSettings | None, TokenVerifier | None]:
    """The token service and the verifier of bearer tokens, when either is configured."""
    if token is None and not tokens.enabled:
        return None, None
    from dockyard.auth.tokens import (
        SUPPORTED_ALGORITHMS,
        KeyFileError,
        SigningKey,
        TokenIssuer,
        TokenVerifier,
        TrustStore,
    )

    token_service = None
    trust = TrustStore()
    if tokens.enabled:
        if not tokens.key or not tokens.certificate:
            raise AuthConfigError(
                "dockyard.auth.tokenservice needs key and certificate paths "
                "(both are created if missing)"
            )
        issuer_name = tokens.issuer or (token.issuer if token and token.issuer else DEFAULT_ISSUER)
        try:
            key = SigningKey.load_or_create(tokens.key, tokens.certificate, f"Dockyard token signing ({issuer_name})")
        except (KeyFileError, OSError) as error:
            raise AuthConfigError(f"dockyard.auth.tokenservice: {error}") from None
        token_service = TokenServiceSettings(
            TokenIssuer(key, issuer_name, tokens.expiration.total_seconds()),
            frozenset([service, *tokens.services]),
        )
        # This registry trusts its own token service without further configuration.
        trust.add_certificate(key.certificate)

    verifier = None
    if token is not None or token_service is not None:
        try:
            if token is not None:
                extra = TrustStore.load(token.rootcertbundle, token.jwks)
                trust.roots.extend(extra.roots)
                trust.keys.update(extra.keys)
            issuer_name = (
                token.issuer
                if token is not None and token.issuer
                else token_service.issuer.issuer if token_service is not None else DEFAULT_ISSUER
            )
            algorithms = (token.signingalgorithms if token is not None else None) or SUPPORTED_ALGORITHMS
            verifier = TokenVerifier(trust, issuer_name, service, algorithms)
        except KeyFileError as error:
            raise AuthConfigError(f"auth.token: {error}") from None

    return token_service, verifier


def build_auth(config: Config) -> AuthService | None:
    """The auth of a configuration, or None when it has none (an open registry).

    Files that Distribution would create are created here (a missing htpasswd file),
    and so is a missing token signing key; anything unusable raises ``AuthConfigError``.
    """
    auth = config.auth
    settings = config.dockyard.auth
    tokens = settings.tokenservice
    policy = _policy(config)
    htpasswd = auth.htpasswd if auth is not None else None
    token = auth.token if auth is not None else None
    silly = auth.silly if auth is not None else None

    if htpasswd is None and token is None and silly is None and not tokens.enabled:
        if policy is not None:
            raise AuthConfigError(
                "dockyard.auth access rules need auth.htpasswd, auth.token "
                "or dockyard.auth.tokenservice to know who is calling"
            )
        return None

    users_path = settings.users or (htpasswd.path if htpasswd is not None else None)
    users = None
    if users_path:
        ensure_htpasswd(users_path)
        users = HtpasswdFile(users_path)

    mode: Mode = "none"
    realm: str | None = None
    service = DEFAULT_SERVICE
    autoredirect_path: str | None = None
    if htpasswd is not None:
        if not htpasswd.realm:
            raise AuthConfigError('"realm" must be set for auth.htpasswd')
        if not htpasswd.path:
            raise AuthConfigError('"path" must be set for auth.htpasswd')
        mode, realm = "htpasswd", htpasswd.realm
    elif token is not None:
        mode, realm = "token", token.realm
        service = token.service or DEFAULT_SERVICE
        if token.autoredirect:
            autoredirect_path = token.autoredirectpath or TOKEN_PATH
        if not tokens.enabled:
            for option in ("realm", "service", "issuer"):
                if not getattr(token, option) and not (option == "realm" and autoredirect_path):
                    raise AuthConfigError(f'auth.token needs "{option}"')
            if not token.rootcertbundle and not token.jwks:
                raise AuthConfigError(
                    'auth.token needs "rootcertbundle" or "jwks" (the keys tokens are signed with)'
                )
    elif silly is not None:
        mode, realm = "silly", silly.realm or "silly-realm"
        service = silly.service or "silly-service"
    elif tokens.services:
        service = tokens.services[0]

    token_service, verifier = _bearer_tokens(token, tokens, service)
    return AuthService(
        mode,
        realm=realm,
        service=service,
        users=users,
        policy=policy,
        verifier=verifier,
        token_service=token_service,
        throttle=_throttle(config),
        autoredirect_path=autoredirect_path,
    )
