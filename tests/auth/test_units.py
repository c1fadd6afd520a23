"""The pieces on their own: patterns and rules, the htpasswd file, the throttle, the
configuration, and the functions the UI calls."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from click.testing import CliRunner

from dockyard.auth.backoff import BackoffSettings, LoginThrottle
from dockyard.auth.htpasswd import HtpasswdFile, ensure_htpasswd, set_password
from dockyard.auth.rules import AccessPolicy, RuleError, compile_glob
from dockyard.auth.scopes import ADMIN, CATALOG, parse_scopes, repository
from dockyard.auth.service import AuthConfigError, build_auth
from dockyard.auth.tokens import TokenVerifier, TrustStore
from dockyard.cli import main
from dockyard.config import ConfigError, load_config
from dockyard.errors import TooManyRequests
from tests.auth.support import PASSWORDS, token_config

# --- patterns and rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("team/*", ["team/app", "team/x-1"], ["team", "team/a/b", "teamx/app"]),
        ("team/**", ["team/app", "team/a/b/c"], ["team", "other/team/app"]),
        ("**", ["a", "a/b", "a/b/c"], []),
        ("**/base", ["base", "x/base", "x/y/base"], ["x/base2", "base/x"]),
        ("lib?", ["lib1", "libs"], ["lib", "lib12", "lib/"]),
        ("app-[ab]", ["app-a", "app-b"], ["app-c"]),
        ("app-[!ab]", ["app-c"], ["app-a"]),
        ("exact/name", ["exact/name"], ["exact/name2", "exact"]),
        ("dots.in.name", ["dots.in.name"], ["dotsXinXname"]),
    ],
)
def test_glob_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    compiled = compile_glob(pattern)
    for name in matches:
        assert compiled.fullmatch(name), (pattern, name)
    for name in misses:
        assert not compiled.fullmatch(name), (pattern, name)


def policy(rules: list[dict[str, Any]], admins: list[str] | None = None, groups: dict[str, list[str]] | None = None) -> AccessPolicy:
    return AccessPolicy.build(rules, admins or [], groups or {})


def test_actions_union_and_implied_pull() -> None:
    p = policy(
        [
            {"repositories": ["team/**"], "users": ["@dev"], "actions": ["push"]},
            {"repositories": ["team/secret"], "users": ["carol"], "actions": ["delete"]},
            {"repositories": ["**"], "users": ["*"], "actions": ["pull"]},
            {"repositories": ["pub/*"], "anonymous": True, "actions": ["pull"]},
        ],
        admins=["@ops"],
        groups={"dev": ["alice", "bob"], "ops": ["olga"]},
    )
    assert p.actions("alice", "team/app") == {"pull", "push"}
    assert p.actions("carol", "team/secret") == {"pull", "delete"}
    assert p.actions("carol", "elsewhere/x") == {"pull"}
    assert p.actions(None, "pub/x") == {"pull"}
    assert p.actions(None, "team/app") == frozenset()
    assert p.actions("olga", "anything/at/all") == {"pull", "push", "delete"}
    assert p.allows("olga", ADMIN) and not p.allows("alice", ADMIN)
    assert p.allows(None, CATALOG)  # anonymous rules exist
    assert p.allows("bob", repository("team/x", "push"))
    assert not p.allows("bob", repository("team/x", "*"))
    assert p.allows("olga", repository("team/x", "*"))


def test_catalog_closed_to_anonymous_without_anonymous_rules() -> None:
    p = policy([{"repositories": ["**"], "users": ["*"], "actions": ["pull"]}])
    assert not p.allows(None, CATALOG)
    assert p.allows("anyone", CATALOG)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"repositories": ["x"], "users": ["a"], "actions": ["pul"]}, "unknown action"),
        ({"repositories": [], "users": ["a"], "actions": ["pull"]}, "at least one pattern"),
        ({"repositories": ["x"], "actions": ["pull"]}, "anonymous"),
        ({"repositories": ["x"], "users": ["@nogroup"], "actions": ["pull"]}, "unknown group"),
        ({"repositories": ["x["], "users": ["a"], "actions": ["pull"]}, "unclosed"),
    ],
)
def test_bad_rules_are_errors(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        policy([rule])


def test_scope_parsing() -> None:
    scopes = parse_scopes(
        ["repository:a/b:pull", "repository:a/b:push repository:c:*", "registry:catalog:*", "garbage"]
    )
    assert [str(s) for s in scopes] == ["repository:a/b:pull,push", "repository:c:*", "registry:catalog:*"]
    (plugin,) = parse_scopes(["repository(plugin):x:pull"])
    assert plugin.type == "repository"


# --- the htpasswd file ------------------------------------------------------------------


def hashed(password: str, prefix: str = "$2b$") -> str:
    value = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return prefix + value[4:]


async def test_htpasswd_reads_bcrypt_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(
        "# comment\n\n"
        f"alice:{hashed('a-pw', '$2y$')}\n"
        "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        "carol:$apr1$abc$defghijklmnopqrstuv\n"
        f"dave:{hashed('d-pw')}\n"
    )
    users = HtpasswdFile(path)
    with caplog.at_level(logging.WARNING, "dockyard.auth"):
        assert users.users() == ["alice", "dave"]
    assert "bob" in caplog.text and "bcrypt" in caplog.text
    assert await users.verify("alice", "a-pw")
    assert await users.verify("dave", "d-pw")
    assert not await users.verify("alice", "d-pw")
    assert not await users.verify("bob", "password")
    assert not await users.verify("nobody", "x")
    assert not await users.verify("alice", "a" * 100)


async def test_htpasswd_changes_apply_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    set_password(path, "alice", "first", cost=4)
    users = HtpasswdFile(path)
    assert await users.verify("alice", "first")
    assert users.remembered("alice", "first")
    # A new password replaces the old one at once, remembered or not.
    set_password(path, "alice", "second", cost=4)
    assert not users.remembered("alice", "first")
    assert not await users.verify("alice", "first")
    assert await users.verify("alice", "second")
    # Removing the user removes the sign-in.
    path.write_text(f"bob:{hashed('b')}\n")
    assert not await users.verify("alice", "second")
    assert not users.remembered("alice", "second")


def test_missing_htpasswd_is_created_without_logging_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth" / "htpasswd"
    with caplog.at_level(logging.WARNING, "dockyard.auth"):
        secret_file = ensure_htpasswd(path)
    assert secret_file is not None
    password = secret_file.read_text().strip()
    assert len(password) >= 32
    assert password not in caplog.text
    assert str(secret_file) in caplog.text
    assert secret_file.stat().st_mode & 0o077 == 0
    assert path.stat().st_mode & 0o077 == 0
    user, _, stored = path.read_text().strip().partition(":")
    assert user == "docker"  # Distribution's provisioned user
    assert bcrypt.checkpw(password.encode(), stored.encode())
    assert ensure_htpasswd(path) is None  # an existing file is left alone


def test_passwd_command(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    runner = CliRunner()
    added = runner.invoke(main, ["passwd", str(path), "eve", "--password-stdin"], input="pw-1\n")
    assert added.exit_code == 0 and "added" in added.output
    updated = runner.invoke(main, ["passwd", str(path), "eve", "--password-stdin"], input="pw-2\n")
    assert updated.exit_code == 0 and "updated" in updated.output
    (line,) = path.read_text().splitlines()
    assert bcrypt.checkpw(b"pw-2", line.split(":", 1)[1].encode())
    bad = runner.invoke(main, ["passwd", str(path), "a:b", "--password-stdin"], input="x\n")
    assert bad.exit_code == 1


# --- the throttle --------------------------------------------------------------------------


async def test_throttle_delays_grow_and_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LoginThrottle(BackoffSettings(free=2, initial=0.05, maximum=0.2, window=60, queue_limit=0.5))
    assert [throttle.delay_for(n) for n in range(6)] == [0, 0, 0.05, 0.1, 0.2, 0.2]
    with caplog.at_level(logging.WARNING, "dockyard.auth"):
        for _ in range(3):
            throttle.failed("10.0.0.9", "mallory")
    assert "failed sign-in for user 'mallory' from 10.0.0.9" in caplog.text
    started = time.monotonic()
    await throttle.wait_turn("10.0.0.9")  # first turn: immediate
    await throttle.wait_turn("10.0.0.9")  # then one per delay
    assert time.monotonic() - started >= 0.09
    # Parallel attempts queue up; past the queue limit they are refused outright.
    with pytest.raises(TooManyRequests):
        await asyncio.gather(*(throttle.wait_turn("10.0.0.9") for _ in range(10)))
    # Other addresses are not affected.
    started = time.monotonic()
    await throttle.wait_turn("10.0.0.10")
    assert time.monotonic() - started < 0.05


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(BackoffSettings(max_sources=100))
    for index in range(1000):
        throttle.failed(f"10.0.{index // 256}.{index % 256}", "x")
    assert len(throttle._sources) == 100


# --- configuration -----------------------------------------------------------------------


def load(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.yml"
    base = {"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}}}
    path.write_text(yaml.safe_dump({**base, **data}))
    return load_config(str(path), environ=environ or {})


def test_distributions_auth_and_tls_keys_are_supported(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        {
            "auth": {"htpasswd": {"realm": "r", "path": "/x"}},
            "http": {"tls": {"certificate": "/c", "key": "/k", "minimumtls": "tls1.3", "clientcas": ["/ca"]}},
        },
    )
    assert loaded.warnings == []
    assert loaded.config.auth.htpasswd.path == "/x"
    assert loaded.config.http.tls.minimumtls == "tls1.3"
    letsencrypt = load(tmp_path, {"http": {"tls": {"letsencrypt": {"email": "a@b"}}}})
    assert any("http.tls.letsencrypt" in w for w in letsencrypt.warnings)


def test_environment_overrides_reach_auth(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {"auth": {"htpasswd": {"realm": "r", "path": "/x"}}},
        {"REGISTRY_AUTH_HTPASSWD_PATH": "/etc/registry/htpasswd"},
    ).config
    assert config.auth.htpasswd.path == "/etc/registry/htpasswd"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"auth": {"ldap": {"url": "x"}}}, "unknown auth type ldap"),
        ({"auth": {"htpasswd": {"realm": "r", "path": "/x"}, "silly": {}}}, "exactly one"),
        ({"dockyard": {"auth": {"access": [{"repositories": ["x"], "user": ["a"], "actions": ["pull"]}]}}}, "user"),
    ],
)
def test_bad_auth_config_is_an_error(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dockyard": {"auth": {"access": [{"repositories": ["x"], "users": ["a"], "actions": ["pull"]}]}}}, "need auth"),
        ({"auth": {"htpasswd": {"path": "PATH"}}}, "realm"),
        ({"auth": {"token": {"realm": "r", "service": "s", "issuer": "i"}}}, "rootcertbundle"),
        ({"auth": {"token": {"realm": "r", "service": "s", "rootcertbundle": "/b"}}}, "issuer"),
        ({"auth": {"token": {"realm": "r", "service": "s", "issuer": "i", "rootcertbundle": "/nonexistent"}}}, "cannot read"),
        ({"dockyard": {"auth": {"tokenservice": {"enabled": True}}}}, "key and certificate"),
    ],
)
def test_unusable_auth_settings_are_reported(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    text = yaml.safe_dump(data).replace("PATH", str(tmp_path / "htpasswd"))
    config = load(tmp_path, yaml.safe_load(text)).config
    with pytest.raises(AuthConfigError, match=message):
        build_auth(config)


def test_serve_refuses_unusable_auth(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({
        "version": "0.1",
        "storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
        "http": {"addr": "127.0.0.1:0"},
        "auth": {"token": {"realm": "r", "service": "s", "issuer": "i"}},
    }))
    result = CliRunner().invoke(main, ["serve", str(path)])
    assert result.exit_code == 1
    assert "rootcertbundle" in result.output


# --- what the UI calls ------------------------------------------------------------------------


async def test_sign_in_and_mint_token_for_the_ui(tmp_path: Path) -> None:
    data = token_config(tmp_path)
    config = load(tmp_path, data).config
    auth = build_auth(config)
    assert auth is not None
    assert await auth.sign_in("reader", "nope", "192.0.2.1") is None
    identity = await auth.sign_in("reader", PASSWORDS["reader"], "192.0.2.1")
    assert identity is not None and identity.user == "reader"
    assert identity.allows(repository("proj/x", "pull"))
    assert not identity.allows(repository("proj/x", "push"))
    issued = auth.mint_token("reader", ["repository:proj/x:pull,push", "registry:catalog:*"])
    verified = auth.verifier.verify(issued.token) if auth.verifier else None
    assert verified is not None and verified.subject == "reader"
    assert verified.access.allows(repository("proj/x", "pull"))
    assert not verified.access.allows(repository("proj/x", "push"))
    assert verified.access.allows(CATALOG)
    with pytest.raises(ValueError, match="does not issue"):
        auth.mint_token("reader", [], "someone-elses-registry")


def test_token_command(tmp_path: Path) -> None:
    data = token_config(tmp_path)
    config_path = tmp_path / "config.yml"
    config_path.write_text(yaml.safe_dump({
        "version": "0.1", "storage": {"filesystem": {"rootdirectory": str(tmp_path)}}, **data,
    }))
    result = CliRunner().invoke(
        main, ["token", str(config_path), "--user", "admin", "--scope", "registry:dockyard:admin"]
    )
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    trust = TrustStore.load(str(tmp_path / "token.crt"), None)
    verified = TokenVerifier(trust, data["auth"]["token"]["issuer"], data["auth"]["token"]["service"]).verify(token)
    assert verified.subject == "admin" and verified.access.allows(ADMIN)


def test_signing_key_files_are_private(tmp_path: Path) -> None:
    config = load(tmp_path, token_config(tmp_path)).config
    build_auth(config)
    assert (tmp_path / "token.key").stat().st_mode & 0o077 == 0
    assert os.path.exists(tmp_path / "token.crt")


def test_the_documented_example_works(tmp_path: Path) -> None:
    readme = Path(__file__).parents[2] / "dockyard" / "auth" / "README.md"
    text = readme.read_text()
    block = text.split("## What they may do", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    example = yaml.safe_load(block.replace("/etc/dockyard", str(tmp_path)))
    (tmp_path / "htpasswd").write_text("")
    config = load(tmp_path, example).config
    assert load(tmp_path, example).warnings == []
    auth = build_auth(config)
    assert auth is not None and auth.policy is not None
    rules = auth.policy
    assert rules.actions("alice", "team-a/app") == {"pull", "push"}
    assert rules.actions("carol", "team-a/app") == {"pull"}
    assert rules.actions("carol", "base/debian") == {"pull"}
    assert rules.actions(None, "public/tools/x") == {"pull"}
    assert rules.actions(None, "team-a/app") == frozenset()
    assert rules.actions("release-bot", "team-a/app") == {"pull", "push", "delete"}
    assert rules.is_admin("olga") and rules.is_admin("root") and not rules.is_admin("alice")
    issued = auth.mint_token("alice", ["repository:team-a/app:push"], "registry-b.example:5000")
    assert issued.expires_in == 300
