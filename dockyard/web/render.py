"""Jinja2 set-up: autoescaped templates, filters, and the URL helpers pages use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from markupsafe import Markup, escape

from dockyard.web import model

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def static_version() -> str:
    """A hash of the assets, put in their URLs so browsers may cache them for good."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class Urls:
    """Every URL a page links to, built in one place so names and tags are quoted once.

    Repository names contain slashes, so a UI path puts ``/-/`` between the name and
    what follows: no name component can be ``-``.
    """

    def __init__(self, base: str, version: str) -> None:
        self.base = base.rstrip("/")
        self.version = version

    def home(self, **query: Any) -> str:
        return self._with(f"{self.base}/", query)

    def repo(self, name: str, **query: Any) -> str:
        return self._with(f"{self.base}/r/{quote(name, safe='/')}", query)

    def tag(self, name: str, tag: str) -> str:
        return f"{self.repo(name)}/-/tag/{quote(tag, safe='')}"

    def digest(self, name: str, digest: str, **query: Any) -> str:
        return self._with(f"{self.repo(name)}/-/manifest/{quote(digest, safe=':')}", query)

    def reference(self, name: str, reference: str) -> str:
        return self.digest(name, reference) if ":" in reference else self.tag(name, reference)

    def raw(self, name: str, digest: str) -> str:
        return f"{self.repo(name)}/-/raw/{quote(digest, safe=':')}"

    def delete(self, name: str, **query: Any) -> str:
        return self._with(f"{self.repo(name)}/-/delete", query)

    def delete_repository(self, name: str) -> str:
        return f"{self.repo(name)}/-/delete-repository"

    def storage(self, **query: Any) -> str:
        return self._with(f"{self.base}/storage", query)

    def gc(self) -> str:
        return f"{self.base}/storage/gc"

    def static(self, name: str) -> str:
        return f"{self.base}/static/{name}?v={self.version}"

    @staticmethod
    def _with(path: str, query: dict[str, Any]) -> str:
        pairs: list[tuple[str, str]] = []
        for key, value in query.items():
            if value is None or value == "" or value is False:
                continue
            if isinstance(value, list | tuple):
                pairs.extend((key, str(v)) for v in value)
            else:
                pairs.append((key, str(value)))
        return f"{path}?{urlencode(pairs)}" if pairs else path


def _number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def highlight_json(text: str) -> Markup:
    """Pretty JSON with keys, strings and numbers wrapped for colour.

    Each token is escaped before it is wrapped, so the result is safe whatever the
    manifest holds.
    """
    out: list[str] = []
    decoder = json.JSONDecoder()
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if char == '"':
            try:
                _, end = decoder.raw_decode(text, i)
            except ValueError:
                out.append(str(escape(text[i:])))
                break
            token = text[i:end]
            rest = text[end:].lstrip(" ")
            kind = "k" if rest.startswith(":") else "s"
            out.append(f'<span class="j{kind}">{escape(token)}</span>')
            i = end
        elif char in "-0123456789":
            end = i + 1
            while end < length and text[end] in "0123456789.eE+-":
                end += 1
            out.append(f'<span class="jn">{escape(text[i:end])}</span>')
            i = end
        elif text.startswith(("true", "false", "null"), i):
            word = (
                "true"
                if text.startswith("true", i)
                else "false"
                if text.startswith("false", i)
                else "null"
            )
            out.append(f'<span class="jb">{word}</span>')
            i += len(word)
        else:
            out.append(str(escape(char)))
            i += 1
    return Markup("".join(out))


def make_environment() -> jinja2.Environment:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        # Every value from an image (labels, annotations, env, history) is untrusted:
        # autoescaping is on for every template, and nothing from one is marked safe.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        size=model.human_size,
        short=model.short_digest,
        ago=model.ago,
        duration=model.duration,
        iso=model.iso,
        number=_number,
        highlight_json=highlight_json,
        media=lambda value: model.MEDIA_TYPE_NAMES.get(value or "", ""),
        # Jinja's tojson escapes < and > as \u003c for use inside <script>; these values
        # go into text, where autoescaping is the right tool and keeps them readable.
        jsonlist=lambda value: json.dumps(value, ensure_ascii=False),
    )
    return environment
