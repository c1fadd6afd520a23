"""Read ``config.yml`` as Distribution does: the file, then ``REGISTRY_*`` overrides.

Nothing is ignored silently: a key Distribution knows that Dockyard does not act on yet
gives one warning naming it, a key nobody knows gives a warning with its line, and a
malformed file stops start-up with the file, line and reason.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dockyard.config.model import STORAGE_DRIVERS, Config, Storage

# Keys Distribution has that Dockyard reads but does not act on yet. Supporting one means
# deleting it from here; nothing else in the loader names keys.
UNSUPPORTED_KEYS: frozenset[str] = frozenset(
    {
        "middleware",
        "notifications",
        "redis",
        "proxy",
        "validation",
        "http.tls.letsencrypt",
        "http.debug",
        "http.http2",
        "http.secret",
        "http.draintimeout",
        "health.file",
        "health.http",
        "health.tcp",
        "storage.redirect",
        "storage.tag",
        "log.reportcaller",
        "storage.filesystem.maxthreads",
    }
)
# Storage drivers Distribution has and Dockyard does not: a registry cannot run without
# its storage, so these are errors, not warnings.
UNSUPPORTED_DRIVERS = frozenset({"s3", "gcs", "azure", "swift", "oss"})
# Keys whose value is Distribution's default, or a no-op here, need no warning.
_SILENT_WHEN_EMPTY = ("http.tls", "http.debug", "http.http2")

EMBEDDED_DEFAULTS: dict[str, Any] = {
    "version": "0.1",
    "log": {"fields": {"service": "registry"}},
    "storage": {
        "cache": {"blobdescriptor": "inmemory"},
        "filesystem": {"rootdirectory": "/var/lib/registry"},
    },
    "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
}


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(slots=True)
class LoadedConfig:
    config: Config
    warnings: list[str] = field(default_factory=list)


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            lines[path] = item.start_mark.line + 1
            lines.update(_key_lines(item, path))
    return lines


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, looking through ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _child(model: type[BaseModel] | None, key: str) -> tuple[bool, type[BaseModel] | None]:
    """Whether ``key`` is known below ``model``, and the model below it (None: free form)."""
    if model is None:
        return True, None
    if model is Storage and key in STORAGE_DRIVERS:
        return True, None
    info = model.model_fields.get(key)
    if info is None or key in ("driver_name", "driver_params"):
        return False, None
    return True, _model_of(info.annotation)


def _check_keys(
    data: Any,
    model: type[BaseModel] | None,
    path: tuple[str, ...],
    lines: Mapping[tuple[str, ...], int],
    warnings: list[str],
    source: str,
) -> None:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        key = str(key)
        key_path = (*path, key)
        dotted = ".".join(key_path)
        where = f" at {source}:{lines[key_path]}" if key_path in lines else ""
        if dotted in UNSUPPORTED_KEYS:
            if value in (None, {}, []) and dotted in _SILENT_WHEN_EMPTY:
                continue
            warnings.append(
                f"config: {dotted} is not supported by Dockyard yet and is ignored{where}"
            )
            continue
        known, child = _child(model, key)
        if not known:
            warnings.append(f"config: unknown key {dotted}{where}")
            continue
        if child is not None or model is None or (model is Storage and key in STORAGE_DRIVERS):
            _check_keys(value, child, key_path, lines, warnings, source)


def _apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], warnings: list[str]
) -> None:
    """``REGISTRY_SECTION_KEY=value`` overrides, as Distribution reads them."""
    storage_type = environ.get("REGISTRY_STORAGE")
    if storage_type:
        storage = data.setdefault("storage", {})
        if isinstance(storage, dict):
            for driver in STORAGE_DRIVERS:
                if driver != storage_type:
                    storage.pop(driver, None)
            storage.setdefault(storage_type, {})
    for name in sorted(environ):
        if not name.startswith("REGISTRY_") or name == "REGISTRY_STORAGE":
            continue
        parts = name[len("REGISTRY_") :].lower().split("_")
        target: dict[str, Any] = data
        model: type[BaseModel] | None = Config
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if model is None:
                # Free-form below here (driver parameters, headers, fields): the rest of
                # the name is the key.
                rest = "_".join(parts[index:])
                if parts[:index] == ["http", "headers"]:
                    # Header names keep their case.
                    rest = name.split("_", index + 1)[-1]
                    target[rest] = [environ[name]]
                else:
                    target[rest] = yaml.safe_load(environ[name])
                break
            known, child = _child(model, part)
            if not known:
                warnings.append(f"config: environment variable {name} names no known key")
                break
            if last:
                target[part] = yaml.safe_load(environ[name])
                break
            next_target = target.get(part)
            if not isinstance(next_target, dict):
                next_target = target[part] = {}
            target, model = next_target, child


def _describe(error: Mapping[str, Any], lines: Mapping[tuple[str, ...], int], source: str) -> str:
    location = tuple(str(part) for part in error["loc"])
    path = location
    # Driver parameters are validated under the names the file uses.
    line = None
    while path:
        if path in lines:
            line = lines[path]
            break
        path = path[:-1]
    dotted = ".".join(location) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{source}:{line}: {dotted}: {message}" if line else f"{source}: {dotted}: {message}"


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    lines: dict[tuple[str, ...], int] = {}
    source = path or "(embedded defaults)"
    if path is None:
        data: Any = yaml.safe_load(yaml.safe_dump(EMBEDDED_DEFAULTS))
    else:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise ConfigError(f"{path}: {error.strerror or error}") from error
        try:
            lines = _key_lines(yaml.compose(text))
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            problem = getattr(error, "problem", None) or str(error)
            if mark is not None:
                raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}") from error
            raise ConfigError(f"{path}: {problem}") from error
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping")
    _apply_environment(data, environ, warnings)
    if "version" in data and data["version"] is not None:
        # YAML reads ``version: 0.1`` as a number.
        data["version"] = str(data["version"])
    storage = data.get("storage")
    if isinstance(storage, dict):
        for driver in UNSUPPORTED_DRIVERS & set(storage):
            line = lines.get(("storage", driver))
            where = f"{source}:{line}" if line else source
            raise ConfigError(
                f"{where}: storage driver {driver!r} is not supported by Dockyard yet"
            )
    _check_keys(data, Config, (), lines, warnings, source)
    if isinstance(storage, dict) and (storage.get("cache") or {}).get("blobdescriptor") == "redis":
        warnings.append(
            "config: storage.cache.blobdescriptor: redis is not supported by Dockyard yet; "
            "the in-memory cache is used"
        )
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError("; ".join(_describe(e, lines, source) for e in error.errors())) from error
    return LoadedConfig(config, warnings)
