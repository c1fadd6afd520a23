"""Settings as plain dataclasses, checked by pydantic only where a file is read.

The configuration's sections are standard-library dataclasses: a worker process holds
the configuration it was given (pickled by its parent) without importing pydantic,
which with the schemas it builds costs about 12 MiB in every process. Reading a file
(``dockyard.config.load``) validates those same classes with pydantic, imported there.

Checks attach without pydantic in sight: :class:`Before` and :class:`After` mark a
field (``Annotated[str, After(check)]``), a section's ``prepare`` classmethod rewrites
its raw mapping before its fields are read, and ``__post_init__`` checks a whole section
once it is built (in code too). pydantic finds all of them through the
``__get_pydantic_core_schema__`` hooks below, which run only while it builds a schema.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Before:
    """Field marker: ``prepare`` rewrites the raw value before its type is checked."""

    prepare: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self.prepare, handler(source))


@dataclass(frozen=True, slots=True)
class After:
    """Field marker: ``check`` gets the typed value and returns it (or a corrected one);
    a ``ValueError`` it raises is reported at the field."""

    check: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self.check, handler(source))


@dataclass(kw_only=True)
class Settings:
    """A mapping of settings. Keys it does not have are dropped (the configuration's
    loader has already warned about each one, with its line)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "ignore"}

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """The raw mapping as the fields should read it; as it is by default."""
        return data

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(cls.prepare, handler(source))


@cache
def field_types(cls: type) -> Mapping[str, Any]:
    """A dataclass's fields and their annotations (``Annotated`` metadata kept)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {item.name: hints[item.name] for item in fields(cls)}


def is_settings(kind: object) -> bool:
    """Whether ``kind`` is a dataclass of settings (a section, an entry of a list)."""
    return isinstance(kind, type) and hasattr(kind, "__dataclass_fields__")


class Invalid(Exception):
    """Values that do not fit: each problem as the path of keys to it and a reason."""

    def __init__(self, problems: list[tuple[tuple[str, ...], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(path)}: {reason}" for path, reason in problems))
        self.problems = problems


@cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def validate(cls: type[T], data: object) -> T:
    """``data`` (parsed YAML, a mapping) as an instance of ``cls``, or :class:`Invalid`."""
    from pydantic import ValidationError

    try:
        return typing.cast(T, _adapter(typing.cast(type, cls)).validate_python(data))
    except ValidationError as error:
        raise Invalid([_problem(item) for item in error.errors()]) from None


def _problem(error: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    path = tuple(str(part) for part in error["loc"])
    if error["type"] == "dataclass_type":
        # pydantic's wording names the class; a file's reader wants the kind of value.
        return path, "Input should be a valid dictionary"
    return path, str(error["msg"]).removeprefix("Value error, ")
