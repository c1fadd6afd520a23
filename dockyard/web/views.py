"""The pages: handlers that ask :mod:`browse` for data and render a template."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from dockyard.web import security
from dockyard.web.app import STARTED_KEY, UIState, browser_for, state_of, stats_of
from dockyard.web.browse import Browser, is_digest
from dockyard.web.client import (
    AuthRequired,
    RegistryFailure,
    RegistryHTTPError,
    RegistrySession,
)

log = logging.getLogger("dockyard.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The grammar of repository names, tags and digests (distribution-spec); anything else
# in a UI path is a 404 before the registry is asked.
NAME = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
MAX_DELETE_ITEMS = 200


class PageError(Exception):
    """Shown to the person as an error page with this status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


# --- rendering ---------------------------------------------------------------------------


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> web.Response:
    body = render_text(request, template, context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def render_text(request: web.Request, template: str, context: dict[str, Any]) -> str:
    state = state_of(request)
    return state.templates.get_template(template).render(page_context(request, state, context))


def page_context(request: web.Request, state: UIState, context: dict[str, Any]) -> dict[str, Any]:
    stats = stats_of(request)
    started = request.get(STARTED_KEY, time.monotonic())
    settings = state.settings
    base: dict[str, Any] = {
        "urls": state.urls,
        "settings": settings,
        "pull_host": settings.registry_name or request.host,
        "csrf_field": security.CSRF_FIELD,
        "csrf": security.csrf_token(request),
        "read_only": settings.read_only,
        "is_dockyard": state.catalogue.dockyard.get(_who(request)) or False,
        "is_admin": state.catalogue.admin.get(_who(request)) or False,
        "stats": stats,
        "elapsed_ms": (time.monotonic() - started) * 1000,
        "nav": "",
        "messages": [],
        # A page sent in pieces renders its footer first, before any request is made.
        "streamed": False,
    }
    base.update(context)
    return base


def _who(request: web.Request) -> str:
    return browser_for(request).who


# --- middleware: errors, auth, CSRF --------------------------------------------------------


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED_KEY] = time.monotonic()
    stats_of(request)
    state = state_of(request)
    try:
        if request.method == "POST":
            await security.check_post(request)
        return await handler(request)
    except web.HTTPException:
        raise
    except security.CsrfFailure as failure:
        return _error(request, 403, "Request refused", str(failure))
    except PageError as error:
        return _error(request, error.status, error.title, error.message)
    except AuthRequired as failure:
        if state.settings.credentials is None:
            # Let the browser ask the person; their credentials go to the registry
            # with each request and are kept nowhere.
            response = _error(
                request,
                401,
                "Sign in to the registry",
                "The registry needs a user name and password. "
                + ("Those you entered were refused. " if failure.had_credentials else ""),
            )
            response.headers["WWW-Authenticate"] = (
                'Basic realm="Dockyard registry", charset="UTF-8"'
            )
            return response
        return _error(
            request,
            502,
            "The registry refused the UI's credentials",
            f"{failure.message}. Check REGISTRY_BASIC_AUTH (base64 of user:password).",
        )
    except RegistryHTTPError as error:
        if error.status == 404:
            return _error(request, 404, "Not found", error.message)
        if error.denied:
            return _error(request, 403, "Not allowed", error.message)
        return _error(request, 502, "The registry answered with an error", error.message)
    except RegistryFailure as failure:
        return _error(request, 502, "Cannot reach the registry", failure.message)


def _error(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "status": status},
        status=status,
    )


# --- routing -----------------------------------------------------------------------------


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", repositories)
    app.router.add_get("/storage", storage)
    app.router.add_post("/storage/gc", collect)
    app.router.add_route("*", "/r/{tail:.+}", repository_dispatch)


async def repository_dispatch(request: web.Request) -> web.StreamResponse:
    """``/r/<name>[/-/<action>[/<arg>]]``: names have slashes, so routing is by hand."""
    tail = unquote(request.match_info["tail"])
    name, _, rest = tail.partition("/-/")
    name = name.rstrip("/")
    if not NAME.match(name) or len(name) > 255:
        raise PageError(404, "Not found", "That is not a repository name.")
    action, _, arg = rest.partition("/")
    method = request.method
    if not rest and method == "GET":
        return await repository(request, name)
    if action == "tag" and TAG.match(arg) and method == "GET":
        return await image(request, name, arg)
    if action == "manifest" and DIGEST.match(arg) and method == "GET":
        return await image(request, name, arg)
    if action == "raw" and DIGEST.match(arg) and method == "GET":
        return await raw_manifest(request, name, arg)
    if action == "delete" and not arg:
        if method == "GET":
            return await confirm_delete(request, name)
        if method == "POST":
            return await delete(request, name)
    if action == "delete-repository" and not arg:
        if method == "GET":
            return await confirm_delete_repository(request, name)
        if method == "POST":
            return await delete_repository(request, name)
    raise PageError(404, "Not found", "There is no such page.")


# --- the repository list -------------------------------------------------------------------


async def repositories(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    browser = browser_for(request)
    query = request.query.get("q", "")[:200]
    last = request.query.get("last") or None
    listing = await browser.repositories(last, query, state.settings.page_size)
    usage = browser.usage_snapshot() if await browser.is_admin() else None
    deleted_repo = request.query.get("deleted_repo")
    messages = []
    # Said only when the registry confirms it: the name in the URL alone proves nothing.
    if (
        deleted_repo
        and NAME.match(deleted_repo)
        and not await browser.repository_exists(deleted_repo)
    ):
        messages.append(("ok", f"Deleted repository {deleted_repo}."))
    return render(
        request,
        "repositories.html",
        {
            "title": "Repositories",
            "nav": "repositories",
            "listing": listing,
            "query": query,
            "last": last,
            "usage": usage,
            "messages": messages,
        },
    )


# --- one repository ----------------------------------------------------------------------


SORTS = ("name", "date", "size")


async def repository(request: web.Request, name: str) -> web.StreamResponse:
    state = state_of(request)
    browser = browser_for(request)
    sort: str | None = request.query.get("sort")
    sort = sort if sort in SORTS else None
    order: str | None = request.query.get("order")
    order = order if order in ("asc", "desc") else None
    try:
        page = int(request.query.get("page", "1"))
    except ValueError:
        page = 1
    query = request.query.get("q", "")[:128]
    listing = await browser.repository(
        name, sort=sort, order=order, query=query, page=page, page_size=state.settings.page_size
    )
    messages = await _verified_deletions(browser, name, request.query.getall("deleted", []))
    return render(
        request,
        "repository.html",
        {
            "title": name,
            "name": name,
            "listing": listing,
            "messages": messages,
            # A mirror refuses deletes in the repositories it caches.
            "can_delete": listing.cache is None
            and _can_delete(request, browser, listing.delete_enabled),
            "refused": state.catalogue.delete_refused.get(browser.who),
            "is_dockyard": await browser.is_dockyard(),
            "is_admin": await browser.is_admin(),
        },
    )


def _can_delete(request: web.Request, browser: Browser, enabled: bool | None) -> bool:
    state = state_of(request)
    if state.settings.read_only or enabled is False:
        return False
    return state.catalogue.delete_refused.get(browser.who) is None


async def _verified_deletions(
    browser: Browser, name: str, claims: list[str]
) -> list[tuple[str, str]]:
    """Messages for ``?deleted=tag:x``, each said only if the registry agrees it is gone."""
    messages: list[tuple[str, str]] = []
    for claim in claims[:20]:
        kind, _, value = claim.partition(":")
        if kind == "tag" and TAG.match(value) and not await browser.exists(name, value):
            messages.append(("ok", f"Deleted tag {value}."))
        elif kind == "digest" and DIGEST.match(value) and not await browser.exists(name, value):
            messages.append(("ok", f"Deleted manifest {value} and every tag on it."))
    return messages


# --- one image -----------------------------------------------------------------------------


async def image(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    state = state_of(request)
    browser = browser_for(request)
    view = await browser.image(name, reference)
    parent = request.query.get("index")
    parent_tag = request.query.get("from")
    return render(
        request,
        "image.html",
        {
            "title": f"{name}:{reference}" if not is_digest(reference) else f"{name}@{reference}",
            "name": name,
            "view": view,
            "doc": view.manifest,
            "config": view.config,
            "parent": parent if parent and DIGEST.match(parent) else None,
            "parent_tag": parent_tag if parent_tag and TAG.match(parent_tag) else None,
            "can_delete": _can_delete(request, browser, None),
            "refused": state.catalogue.delete_refused.get(browser.who),
        },
    )


async def raw_manifest(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    """The exact bytes the registry serves, as text: never rendered as HTML."""
    browser = browser_for(request)
    response = await browser.session.get_manifest(name, digest)
    return web.Response(
        body=response.body,
        content_type="text/plain",
        charset="utf-8",
        headers={
            "Content-Disposition": "inline",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "X-Manifest-Media-Type": response.headers.get("Content-Type", ""),
        },
    )


# --- deleting ------------------------------------------------------------------------------


def _requested(values: list[str], pattern: re.Pattern[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        if pattern.match(value) and value not in seen:
            seen.append(value)
    return seen[:MAX_DELETE_ITEMS]


async def _delete_plan(
    browser: Browser, name: str, tags: list[str], digests: list[str]
) -> dict[str, Any]:
    """What each requested deletion takes with it, as the registry stands now."""
    tag_items = []
    for tag in tags:
        digest = await browser.digest_of(name, tag)
        siblings = await browser.tags_pointing_at(name, digest) if digest else []
        tag_items.append(
            {
                "tag": tag,
                "digest": digest,
                "others": [t for t in siblings if t != tag and t not in tags],
            }
        )
    digest_items = []
    for digest in digests:
        exists = await browser.exists(name, digest)
        digest_items.append(
            {
                "digest": digest,
                "exists": exists,
                "tags": await browser.tags_pointing_at(name, digest) if exists else [],
            }
        )
    return {"tags": tag_items, "digests": digest_items}


def _refuse_if_read_only(request: web.Request) -> None:
    if state_of(request).settings.read_only:
        raise PageError(
            403,
            "Read-only",
            "This UI is read-only, so nothing can be deleted from it "
            "(REGISTRY_READONLY=false or dockyard.ui.readonly: false allows deleting).",
        )


async def confirm_delete(request: web.Request, name: str) -> web.StreamResponse:
    _refuse_if_read_only(request)
    browser = browser_for(request)
    tags = _requested(request.query.getall("tag", []), TAG)
    digests = _requested(request.query.getall("digest", []), DIGEST)
    if not tags and not digests:
        raise web.HTTPFound(state_of(request).urls.repo(name))
    plan = await _delete_plan(browser, name, tags, digests)
    return render(
        request,
        "confirm_delete.html",
        {
            "title": f"Delete from {name}",
            "name": name,
            "plan": plan,
            "dockyard": await browser.is_dockyard(),
        },
    )


async def delete(request: web.Request, name: str) -> web.StreamResponse:
    _refuse_if_read_only(request)
    state = state_of(request)
    browser = browser_for(request)
    form = await request.post()
    tags = _requested([str(v) for v in form.getall("tag", [])], TAG)
    digests = _requested([str(v) for v in form.getall("digest", [])], DIGEST)
    done: list[str] = []
    failed: list[dict[str, Any]] = []
    # Digests first: deleting a manifest takes its tags along, and a tag deleted
    # afterwards would then fail as unknown for no fault of the person's.
    for digest in digests:
        outcome = await _delete_one(browser, name, digest)
        (done.append(f"digest:{digest}") if outcome is None else failed.append(outcome))
    for tag in tags:
        if any(f"digest:{d}" in done for d in digests) and not await browser.exists(name, tag):
            done.append(f"tag:{tag}")
            continue
        outcome = await _delete_one(browser, name, tag)
        (done.append(f"tag:{tag}") if outcome is None else failed.append(outcome))
    state.catalogue.forget_repository(name)
    if not failed:
        raise web.HTTPSeeOther(state.urls.repo(name, deleted=done))
    gone = [item for item in done if not await browser.exists(name, item.partition(":")[2])]
    return render(
        request,
        "delete_result.html",
        {"title": f"Delete from {name}", "name": name, "done": gone, "failed": failed},
        status=409 if not gone else 200,
    )


async def _delete_one(browser: Browser, name: str, reference: str) -> dict[str, Any] | None:
    """Delete and check it is gone; None on success, else what went wrong and why."""
    state_key = browser.who
    try:
        await browser.session.delete_manifest(name, reference)
    except RegistryHTTPError as error:
        item: dict[str, Any] = {"reference": reference, "message": error.message, "why": "error"}
        tag_refused = not is_digest(reference) and (
            error.code in ("DIGEST_INVALID", "UNSUPPORTED", "TAG_INVALID")
            or error.status in (400, 405)
        )
        if error.not_found:
            item["why"] = "missing"
        elif tag_refused and not (error.status == 405 and await _deletes_disabled(browser, name)):
            # Distribution 2.8 deletes manifests by digest only (tag deletion came with
            # OCI 1.1 and Distribution 3): offer the digest, naming what goes with it.
            digest = await browser.digest_of(name, reference)
            item.update(
                why="tag-unsupported",
                digest=digest,
                tags=await browser.tags_pointing_at(name, digest) if digest else [],
            )
        elif error.unsupported:
            item["why"] = "disabled"
            browser.catalogue.delete_refused.put(state_key, error.message)
        elif error.denied:
            item["why"] = "denied"
        return item
    if await browser.exists(name, reference):
        return {
            "reference": reference,
            "why": "still-there",
            "message": "the registry accepted the delete, yet it still serves this reference",
        }
    return None


async def _deletes_disabled(browser: Browser, name: str) -> bool:
    """Whether a 405 means "no deleting at all" rather than "not by tag".

    Asked by deleting nothing: a DELETE of a digest no manifest has is 404 where deletes
    are enabled and 405 where they are not, on Distribution and Dockyard alike.
    """
    missing = "sha256:" + "0" * 64
    try:
        await browser.session.delete_manifest(name, missing)
    except RegistryHTTPError as error:
        return error.unsupported
    return False


async def confirm_delete_repository(request: web.Request, name: str) -> web.StreamResponse:
    _refuse_if_read_only(request)
    browser = browser_for(request)
    if not await browser.is_dockyard():
        raise PageError(
            404,
            "Not available",
            "Deleting a whole repository needs Dockyard's API; this registry has none.",
        )
    tags = await browser.session.tags(name)
    return render(
        request,
        "confirm_delete_repository.html",
        {"title": f"Delete {name}", "name": name, "tags": tags},
    )


async def delete_repository(request: web.Request, name: str) -> web.StreamResponse:
    _refuse_if_read_only(request)
    state = state_of(request)
    browser = browser_for(request)
    form = await request.post()
    if form.get("confirm_name") != name:
        raise PageError(
            400, "Not deleted", "Type the repository's name to confirm; nothing was deleted."
        )
    try:
        await browser.session.dockyard_delete_repository(name)
    except RegistryHTTPError as error:
        if error.unsupported:
            state.catalogue.delete_refused.put(browser.who, error.message)
        raise PageError(409, "Not deleted", f"The registry refused: {error.message}") from None
    state.catalogue.forget_repository(name)
    raise web.HTTPSeeOther(state.urls.home(deleted_repo=name))


# --- storage and garbage collection (Dockyard) ----------------------------------------------


async def storage(request: web.Request) -> web.StreamResponse:
    browser = browser_for(request)
    if not await browser.is_admin(required=True):
        raise PageError(
            404,
            "Not available",
            "Storage usage and garbage collection need Dockyard's API, as an administrator.",
        )
    usage, status = await asyncio.gather(
        browser.usage(fresh=request.query.get("fresh") == "1"),
        browser.session.dockyard_gc_status(),
    )
    repos = sorted(
        usage.get("repositories") or [],
        key=lambda repo: (-(repo.get("referenced_bytes") or 0), repo.get("name") or ""),
    )
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    size = state_of(request).settings.page_size
    pages = max(1, -(-len(repos) // size))
    page = min(page, pages)
    return render(
        request,
        "storage.html",
        {
            "title": "Storage",
            "nav": "storage",
            "usage": usage,
            "repos": repos[(page - 1) * size : page * size],
            "repo_count": len(repos),
            "page": page,
            "pages": pages,
            "status": status,
            "now": time.time(),
        },
    )


async def collect(request: web.Request) -> web.StreamResponse:
    """Run a collection and stream its progress into the page as it goes.

    The page is sent in pieces: the head at once, a line every second while the
    registry works, then the result. That needs no JavaScript and no state shared
    between worker processes; the run itself is held by the UI, so closing the tab
    does not interrupt the registry midway.
    """
    _refuse_if_read_only(request)
    state = state_of(request)
    browser = browser_for(request)
    if not await browser.is_admin(required=True):
        raise PageError(404, "Not available", "Garbage collection needs Dockyard's API.")
    form = await request.post()
    dry_run = form.get("mode") != "collect"
    delete_untagged = form.get("untagged") == "on"
    # The run's requests are its own: the page's request counter stops at the page.
    session = state.client.session(browser.session.credentials)
    task = asyncio.ensure_future(session.dockyard_collect(dry_run, delete_untagged))
    state.runs.add(task)
    task.add_done_callback(state.runs.discard)

    marker = "<!--progress-->"
    page = render_text(
        request,
        "gc_run.html",
        {
            "title": "Dry run" if dry_run else "Garbage collection",
            "nav": "storage",
            "dry_run": dry_run,
            "delete_untagged": delete_untagged,
            "marker": marker,
            "streamed": True,
        },
    )
    head, _, tail = page.partition(marker)
    response = web.StreamResponse(
        headers={"Content-Type": "text/html; charset=utf-8", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    writer = _Writer(response)
    await writer.write(head)
    started = time.monotonic()
    while True:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            break
        elapsed = time.monotonic() - started
        note = await _registry_progress(session)
        await writer.write(
            state.templates.get_template("gc_progress.html").render(elapsed=elapsed, note=note)
        )
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        result = task.result()
    except RegistryFailure as failure:
        error = failure.message
    if result is not None and not dry_run:
        state.catalogue.usage.clear()
        state.catalogue.details.clear()
        state.catalogue.resolved.clear()
    await writer.write(
        state.templates.get_template("gc_result.html").render(
            result=result,
            error=error,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            urls=state.urls,
            csrf=security.csrf_token(request),
            csrf_field=security.CSRF_FIELD,
            read_only=state.settings.read_only,
        )
    )
    await writer.write(tail)
    if writer.open:
        await response.write_eof()
    return response


class _Writer:
    """Writes to a streamed page until the browser goes away, then quietly stops."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.open = True

    async def write(self, text: str) -> None:
        if not self.open:
            return
        try:
            await self.response.write(text.encode("utf-8"))
        except (ConnectionResetError, RuntimeError):
            self.open = False


async def _registry_progress(session: RegistrySession) -> str | None:
    try:
        status = await session.dockyard_gc_status()
    except RegistryFailure:
        return None
    running = status.get("running")
    if isinstance(running, dict) and running.get("startedAt"):
        return (
            f"the registry reports a {'dry run' if running.get('dryRun') else 'collection'} running"
        )
    return None
