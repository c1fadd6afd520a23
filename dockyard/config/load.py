"""Read ``config.yml`` as Distribution does: the file, then ``REGISTRY_*`` overrides.

Nothing is ignored silently. A key Distribution knows and Dockyard does not act on yet
gives one warning naming it; a key nobody knows gives a warning with its line; a
malformed file, or a value of the wrong type, stops start-up with the file, the line
and the reason.
"""

from __future__ import annotations

import os
import pickle
import traceback
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from dockyard.config.model import LOG_LEVELS, STORAGE_DRIVERS, Config, expand_choice
from dockyard.schema import Invalid, field_types, is_settings, validate

# PyYAML is imported where a file or a variable is read, not here: the serving process
# imports this module, and its workers, forked from it, would hold PyYAML for good.
if TYPE_CHECKING:
    import yaml

KeyPath = tuple[str, ...]

# Distribution keys that Dockyard reads but does not act on yet: each one present in a
# configuration (with a value other than "off" or empty) gives one warning at start-up.
# Supporting a key means deleting it from here; nothing else in the loader names keys.
# "key=value" entries name a value of the key that is not supported, where the key's
# other values are. An unsupported storage driver (or auth type) is an error instead:
# without it there is nothing to serve from (or no access control the operator asked for).
UNSUPPORTED_KEYS: Final[frozenset[str]] = frozenset(
    {
        "log.hooks",
        "log.reportcaller",
        "storage.s3.loglevel",
        "storage.gcs",
        "storage.azure",
        "storage.swift",
        "storage.oss",
        "storage.filesystem.maxthreads",
        "storage.tag",
        "middleware",
        "reporting",
        "compatibility",
        "policy",
        "http.tls.letsencrypt",
        "http.tls.clientauth=request-client-cert",
        "http.tls.clientauth=require-any-client-cert",
        "http.tls.clientauth=verify-client-cert-if-given",
        "http.h2c",
        "health.file",
        "health.http",
        "health.tcp",
        "validation",
    }
)

# Old names Distribution still reads, and the names that replace them.
DEPRECATED_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {"loglevel": "log.level", "storage.cache.layerinfo": "storage.cache.blobdescriptor"}
)

# REGISTRY_* variables that are not configuration overrides: Distribution's own way to
# name the file, and docker-registry-web's settings, which Dockyard's UI also reads.
NOT_OVERRIDES: Final[frozenset[str]] = frozenset(
    {
        "REGISTRY_CONFIGURATION_PATH",
        "REGISTRY_URL",
        "REGISTRY_NAME",
        "REGISTRY_BASIC_AUTH",
        "REGISTRY_TRUST_ANY_SSL",
        "REGISTRY_READONLY",
    }
)

# What the registry:2 image ships as /etc/docker/registry/config.yml.
EMBEDDED_CONFIG: Final[str] = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""
EMBEDDED_SOURCE: Final[str] = "(embedded defaults)"

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


@dataclass(slots=True)
class LoadedConfig:
    config: Config
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Context:
    """Where every key came from, and what has been said about them."""

    source: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # Plain YAML scalars that did not read as strings, as written: Distribution's
    # decoder gives a string field the text ("secret: 0123" is "0123", not 83).
    raw: dict[KeyPath, str] = field(default_factory=dict)
    # Keys set by REGISTRY_* variables, and the variable that set each.
    variables: dict[KeyPath, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def location(self, path: KeyPath) -> str:
        """The variable or file line that set ``path`` (or its nearest parent)."""
        for size in range(len(path), 0, -1):
            prefix = path[:size]
            if prefix in self.variables:
                return f"environment variable {self.variables[prefix]}"
            if prefix in self.lines:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source

    def origin(self, path: KeyPath) -> str:
        """`` (line N)`` or `` (set by REGISTRY_X)`` for a warning about ``path``."""
        if path in self.lines:
            return f" (line {self.lines[path]})"
        for size in range(len(path), 0, -1):
            if path[:size] in self.variables:
                return f" (set by {self.variables[path[:size]]})"
        below = [name for key, name in self.variables.items() if key[: len(path)] == path]
        if below:
            return f" (set by {below[0]})"
        # A key the file names only by its parent, as "storage: s3" names storage.s3.
        for size in range(len(path) - 1, 0, -1):
            if path[:size] in self.lines:
                return f" (line {self.lines[path[:size]]})"
        return ""

    def set_by(self, path: KeyPath, variable: str) -> None:
        """``path`` now holds what ``variable`` says; what the file had there is gone."""
        self.lines = {key: line for key, line in self.lines.items() if key[: len(path)] != path}
        self.variables = {
            key: name for key, name in self.variables.items() if key[: len(path)] != path
        }
        self.variables[path] = variable


# --- the file -----------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from error


def _yaml_problem(error: yaml.YAMLError, source: str) -> str:
    import yaml

    if not isinstance(error, yaml.MarkedYAMLError):
        return f"{source}: {error}"
    mark = error.problem_mark or error.context_mark
    reason = error.problem or error.context or "invalid YAML"
    if error.problem and error.context:
        started = error.context_mark
        at = f" at line {started.line + 1}" if started is not None and started is not mark else ""
        reason = f"{error.problem} ({error.context}{at})"
    if mark is None:
        return f"{source}: {reason}"
    return f"{source}:{mark.line + 1}:{mark.column + 1}: {reason}"


def _index(node: yaml.Node, path: KeyPath, context: _Context, active: set[int]) -> None:
    """Record the line of every key and the text of every non-string plain scalar."""
    import yaml

    if id(node) in active:
        return  # an alias of one of its own parents
    active.add(id(node))
    children: list[tuple[str, int, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                # Distribution keeps the last one too, and says nothing.
                context.warnings.append(
                    f"config: {'.'.join((*path, key))} is set twice, at lines {seen[key]} "
                    f"and {line}; the second is used"
                )
            seen[key] = line
            children.append((key, line, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [
            (str(index), item.start_mark.line + 1, item) for index, item in enumerate(node.value)
        ]
    for key, line, child in children:
        here = (*path, key)
        context.lines[here] = line
        if isinstance(child, yaml.ScalarNode) and child.tag != _STR_TAG and child.style is None:
            context.raw[here] = str(child.value)
        _index(child, here, context, active)
    active.discard(id(node))


def _parse(text: str, context: _Context) -> dict[str, Any]:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(error, context.source)) from error
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{context.source}: the configuration must be a mapping of keys")
    if node is not None:
        _index(node, (), context, set())
    return data


# --- the model's shape --------------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """The type a field holds, without ``Annotated`` metadata or ``| None``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union or origin is types.UnionType:
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return Any
            annotation = args[0]
        else:
            return annotation


def _allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _allows_none(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return type(None) in typing.get_args(annotation)
    return annotation is Any


def _model(annotation: Any) -> type | None:
    kind = _unwrap(annotation)
    return kind if is_settings(kind) else None


def _is_mapping(annotation: Any) -> bool:
    kind = _unwrap(annotation)
    return kind is Any or kind is dict or typing.get_origin(kind) is dict


def _is_list(annotation: Any) -> bool:
    kind = _unwrap(annotation)
    return kind is list or typing.get_origin(kind) is list


def _item_type(annotation: Any) -> Any:
    """What a mapping's values or a list's items hold (``Any`` when free-form)."""
    args = typing.get_args(_unwrap(annotation))
    return args[-1] if args else Any


def _choices(model: type | None) -> tuple[str, ...]:
    return tuple(getattr(model, "choices", ()))


# --- Go's reading of scalars ----------------------------------------------------------------


def _go_scalars(value: Any, annotation: Any, path: KeyPath, context: _Context) -> Any:
    """Give string fields the text the file has, as Distribution's decoder does."""
    if _unwrap(annotation) is str:
        if path in context.raw and not isinstance(value, str) and value is not None:
            return context.raw[path]
        return value
    model = _model(annotation)
    if model is not None and isinstance(value, dict):
        for key, item in value.items():
            field_type = field_types(model).get(str(key))
            if field_type is not None:
                value[key] = _go_scalars(item, field_type, (*path, str(key)), context)
    elif _is_mapping(annotation) and isinstance(value, dict):
        for key, item in value.items():
            value[key] = _go_scalars(item, _item_type(annotation), (*path, str(key)), context)
    elif _is_list(annotation) and isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _go_scalars(item, _item_type(annotation), (*path, str(index)), context)
    return value


# --- REGISTRY_* overrides ---------------------------------------------------------------------


def _env_field(model: type, part: str) -> str | None:
    name = part.lower()
    if name in field_types(model):
        return name
    aliases: Mapping[str, str] = getattr(model, "env_aliases", {})
    return aliases.get(name)


def _matching_key(mapping: dict[Any, Any], name: str) -> Any:
    for key in mapping:
        if str(key).lower() == name.lower():
            return key
    return None


def _assign(
    container: dict[Any, Any] | list[Any],
    key: Any,
    annotation: Any,
    override: tuple[str, str],
    path: KeyPath,
    context: _Context,
) -> None:
    variable, text = override
    context.set_by(path, variable)
    if text == "":
        # An empty variable clears the key, so its default applies.
        if isinstance(container, dict):
            container.pop(key, None)
        else:
            container[key] = None
        return
    if _unwrap(annotation) is str:
        # A string field takes the text as is, as Distribution's decoder does.
        container[key] = text
        return
    import yaml

    try:
        container[key] = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(
            f"environment variable {variable}: not a YAML value: {problem}"
        ) from error


def _unknown_variable(variable: str, context: _Context) -> None:
    context.warnings.append(
        f"config: environment variable {variable} names no configuration key and is ignored"
    )


def _container_for(value: Any, annotation: Any) -> dict[Any, Any] | list[Any] | None:
    """``value`` made ready to hold keys below it, or None when it is a plain value."""
    choices = _choices(_model(annotation))
    if choices:
        value = expand_choice(value, choices)
    if _unwrap(annotation) is Any:
        return value if isinstance(value, dict | list) else {}
    if _model(annotation) is not None or _is_mapping(annotation):
        return value if isinstance(value, dict) else {}
    if _is_list(annotation):
        return value if isinstance(value, list) else []
    return None


def _override(
    container: dict[Any, Any] | list[Any],
    annotation: Any,
    parts: list[str],
    override: tuple[str, str],
    path: KeyPath,
    context: _Context,
) -> None:
    """Set the key ``parts`` names below ``container``, as Distribution walks its structs.

    Struct fields take one part each. Below a free-form mapping (driver parameters,
    ``log.fields``, ``http.headers``) an existing key is followed when the name goes on
    past it; otherwise the rest of the name is the key, so keys with "_" in them
    (Azure's ``max_retries``) can be set.
    """
    variable = override[0]
    model = _model(annotation)
    if isinstance(container, list):
        if not parts[0].isdigit():
            _unknown_variable(variable, context)
            return
        index = int(parts[0])
        if index > len(container):
            raise ConfigError(
                f"environment variable {variable}: index {index} is past the end of "
                f"{'.'.join(path)}, which has {len(container)} items"
            )
        key: Any = index
        item_type = _item_type(annotation)
        rest = parts[1:]
    elif model is not None:
        name = _env_field(model, parts[0])
        if name is None:
            _unknown_variable(variable, context)
            return
        key, item_type, rest = name, field_types(model)[name], parts[1:]
    else:
        item_type = _item_type(annotation)
        for size in range(len(parts), 0, -1):
            key = _matching_key(container, "_".join(parts[:size]))
            if key is not None and (size == len(parts) or isinstance(container[key], dict | list)):
                rest = parts[size:]
                break
        else:
            # Distribution stores new map keys lower-cased.
            key, rest = "_".join(parts).lower(), []
    here = (*path, str(key))
    # An index one past the end appends, as Distribution does, once the name resolves.
    appending = isinstance(container, list) and key == len(container)
    if not rest:
        if isinstance(container, list) and appending:
            container.append(None)
        _assign(container, key, item_type, override, here, context)
        return
    current = (
        None if appending else container[key] if isinstance(container, list) else container.get(key)
    )
    child = _container_for(current, item_type)
    if child is None:
        _unknown_variable(variable, context)
        return
    if isinstance(container, list) and appending:
        container.append(child)
    else:
        container[key] = child
    _override(child, item_type, rest, override, here, context)


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str], context: _Context) -> None:
    # In name order, as Distribution applies them, so that REGISTRY_STORAGE replaces
    # the storage section before REGISTRY_STORAGE_S3_BUCKET adds to it.
    for variable in sorted(environ):
        if not variable.startswith("REGISTRY_") or variable in NOT_OVERRIDES:
            continue
        parts = variable[len("REGISTRY_") :].split("_")
        if parts == ["VERSION"]:
            # Distribution checks the version before it reads the environment.
            context.warnings.append(
                f"config: environment variable {variable} cannot change the configuration "
                "version and is ignored"
            )
            continue
        if "" in parts:
            _unknown_variable(variable, context)
            continue
        _override(data, Config, parts, (variable, environ[variable]), (), context)


# --- review: unknown, unsupported and deprecated keys ------------------------------------------


def _inert(value: Any) -> bool:
    """Whether a value asks for nothing: absent, off, zero or empty all through."""
    if value is None or value is False or value == "" or value == []:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, dict):
        return all(_inert(item) for item in value.values())
    return False


def _essential(path: KeyPath) -> bool:
    """A storage driver or auth type: ignoring one cannot leave a working registry."""
    return len(path) == 2 and (
        (path[0] == "storage" and path[1] in STORAGE_DRIVERS) or path[0] == "auth"
    )


def _not_supported(path: KeyPath, context: _Context) -> ConfigError:
    supported = [
        driver for driver in STORAGE_DRIVERS if f"storage.{driver}" not in UNSUPPORTED_KEYS
    ]
    kind = "storage driver" if path[0] == "storage" else "auth type"
    return ConfigError(
        f"{context.location(path)}: {'.'.join(path)}: the {path[1]} {kind} is not supported "
        f"by Dockyard yet"
        + (f" (use {' or '.join(supported)})" if kind == "storage driver" else "")
    )


def _review(data: dict[Any, Any], model: type, path: KeyPath, context: _Context) -> None:
    for key in list(data):
        name = str(key)
        here = (*path, name)
        dotted = ".".join(here)
        field_type = field_types(model).get(name)
        if field_type is None:
            line = context.lines.get(here)
            at = f" at line {line}" if line is not None else context.origin(here)
            context.warnings.append(f"config: unknown key {dotted}{at}")
            continue
        value = data[key]
        if value is None and not _allows_none(field_type):
            # A key left empty means its default, as Go's zero values mostly do.
            del data[key]
            continue
        child_model = _model(field_type)
        if _choices(child_model):
            value = data[key] = expand_choice(value, _choices(child_model))
        if dotted in DEPRECATED_KEYS:
            context.warnings.append(
                f"config: {dotted} is deprecated; use {DEPRECATED_KEYS[dotted]}"
                f"{context.origin(here)}"
            )
        if dotted in UNSUPPORTED_KEYS:
            if _essential(here):
                raise _not_supported(here, context)
            if not _inert(value):
                context.warnings.append(
                    f"config: {dotted} is not supported by Dockyard yet and is ignored"
                    f"{context.origin(here)}"
                )
            continue
        if isinstance(value, str) and f"{dotted}={value}" in UNSUPPORTED_KEYS:
            context.warnings.append(
                f"config: {dotted}: {value} is not supported by Dockyard yet and is ignored"
                f"{context.origin(here)}"
            )
            continue
        if child_model is not None and isinstance(value, dict):
            _review(value, child_model, here, context)
        elif _is_list(field_type) and isinstance(value, list):
            item_model = _model(_item_type(field_type))
            for index, item in enumerate(value):
                if item_model is not None and isinstance(item, dict):
                    _review(item, item_model, (*here, str(index)), context)


def _describe(path: KeyPath, reason: str, context: _Context) -> str:
    return f"{context.location(path)}: {'.'.join(path) or '(top level)'}: {reason}"


def _old_log_level(data: dict[str, Any]) -> None:
    """``loglevel`` stands for ``log.level`` where the file does not set the latter."""
    level, log = data.get("loglevel"), data.get("log")
    # A level that is not one is reported at loglevel, by its own check, and only there.
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        return
    if log is None or (isinstance(log, dict) and log.get("level") is None):
        data["log"] = {**(log or {}), "level": level}


# --- the entry point --------------------------------------------------------------------------


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """The configuration at ``path`` with ``environ``'s overrides, and what to warn about.

    ``path=None`` reads ``REGISTRY_CONFIGURATION_PATH`` as Distribution does, and
    without it the registry:2 image's own configuration. ``environ`` defaults to the
    process environment.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get("REGISTRY_CONFIGURATION_PATH") or None
    context = _Context(EMBEDDED_SOURCE if path is None else path)
    data = _parse(EMBEDDED_CONFIG if path is None else _read(path), context)
    _go_scalars(data, Config, (), context)
    _apply_environment(data, environ, context)
    _review(data, Config, (), context)
    for required, example in (("version", "version: 0.1"), ("storage", "a storage driver")):
        if data.get(required) is None:
            raise ConfigError(
                f"{context.source}: {required}: missing; Distribution's configuration "
                f"needs {example}"
            )
    _old_log_level(data)
    try:
        config = validate(Config, data)
    except Invalid as error:
        problems = [_describe(path, reason, context) for path, reason in error.problems]
        raise ConfigError("\n".join(problems)) from None
    return LoadedConfig(config, context.warnings)


def load_config_apart(path: str | None) -> LoadedConfig:
    """:func:`load_config`, run in a child process that sends back what it read.

    For a process that goes on to serve (``dockyard serve``): its workers are forked
    from it, and each would hold what checking the file took (pydantic and the schemas
    it builds, about 12 MiB) for as long as it runs. The configuration itself is plain
    dataclasses, which cost nothing to receive.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            try:
                outcome: tuple[str, object] = ("loaded", load_config(path))
            except ConfigError as error:
                outcome = ("refused", str(error))
            except Exception:  # noqa: BLE001 - a fault in the loader: the parent reports it
                outcome = ("failed", traceback.format_exc())
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(outcome, pipe)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        sent = pipe.read()
    os.waitpid(pid, 0)
    if not sent:
        raise ConfigError("the process reading the configuration ended without an answer")
    kind, value = pickle.loads(sent)
    if kind == "loaded" and isinstance(value, LoadedConfig):
        return value
    if kind == "refused":
        raise ConfigError(str(value))
    raise RuntimeError(f"reading the configuration failed:\n{value}")
