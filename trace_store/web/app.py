"""The workbench's web application: routes, access control, and one error page for every
failure (a clear message and the right status, never a stack trace).

Pages are rendered on the server (Jinja2) and work without JavaScript; charts are inline SVG
(``svg.py``); the one stylesheet is package data. Each page's handler runs in a worker thread
with a read-only connection borrowed from the pool (``db.py``), so a slow query never holds
the event loop, and a database being written by the ingest at the same time is fine.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from kernel.precision import text as number_text
from trace_store.storage import Storage, StorageError, StorageUnavailable
from trace_store.web.auth import SESSION_COOKIE, SESSION_SECONDS, Access
from trace_store.web.db import Pool
from trace_store.web.params import BadParameter, NotFound
from trace_store.web.plant_time import PlantTime
from trace_store.web.prefix import PrefixMiddleware
from trace_store.web.svg import stat_text

log = logging.getLogger("trace_store.web")

MAX_FORM_BYTES = 4096
PUBLIC = ("/static/", "/login", "/healthz")


@dataclass
class WorkbenchConfig:
    db: str
    access: Access = field(default_factory=Access)
    refresh: int = 30  # seconds between reloads of the Lines and Dashboard pages; 0: never
    plant: PlantTime = field(default_factory=PlantTime)  # the zone times are shown in, shifts
    page_size: int = 100
    root_path: str = ""  # the path prefix behind a reverse proxy (``prefix.py``), "" for none


@dataclass
class Ctx:
    """What a page handler gets: the query, a borrowed read-only connection, the config."""

    params: QueryParams
    storage: Storage
    config: WorkbenchConfig
    pool: Pool
    user: str | None
    path: str


Handler = Callable[[Ctx], "Page | Response"]


@dataclass
class Page:
    template: str
    values: dict[str, Any]
    title: str = ""
    refresh: int = 0


def _environment(plant: PlantTime) -> Environment:
    env = Environment(
        loader=PackageLoader("trace_store.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: "" if v is None else number_text(v)
    env.filters["stat"] = lambda v: "" if v is None else stat_text(v)
    env.filters["ts"] = plant.shown  # the plant's local time
    env.globals["zone"] = plant.zone_name
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.globals["url"] = lambda path, **kw: (
        path + "?" + urlencode({k: v for k, v in kw.items() if v not in (None, "")}, doseq=True)
        if kw
        else path
    )
    return env


def create_app(
    config: WorkbenchConfig,
    pool: Pool | None = None,
    on_ready: Callable[[], None] | None = None,
) -> ASGIApp:
    """The application; ``on_ready`` runs once the server has started (signal handlers in
    place, the socket listening)."""
    from trace_store.web import (
        pages_dash,
        pages_lines,
        pages_lot,
        pages_quality,
        pages_serial,
        pages_window,
    )

    env = _environment(config.plant)
    pool = pool if pool is not None else Pool(config.db)

    def render(page: Page, request: Request, status: int = 200) -> HTMLResponse:
        html = env.get_template(page.template).render(
            **page.values,
            title=page.title,
            refresh=page.refresh,
            user=_user(request),
            open_access=config.access.open,
            query=request.query_params.get("q", ""),
        )
        return HTMLResponse(html, status_code=status)

    def error(request: Request, status: int, message: str) -> HTMLResponse:
        titles = {400: "Bad request", 401: "Login needed", 403: "Forbidden", 404: "Not found"}
        title = titles.get(status, "Service unavailable" if status == 503 else "Error")
        page = Page("error.html", {"status": status, "message": message}, title)
        try:
            return render(page, request, status)
        except Exception:  # the error page itself failed: still no traceback to the user
            log.exception("cannot render the error page")
            return HTMLResponse(f"<h1>{status}</h1>", status_code=status)

    def run(handler: Handler, request: Request) -> Response:
        with pool.borrow() as storage:
            ctx = Ctx(request.query_params, storage, config, pool, _user(request), request.url.path)
            result = handler(ctx)
        if isinstance(result, Page):
            return render(result, request)
        return result

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(run, handler, request)
            except BadParameter as exc:
                return error(request, 400, str(exc))
            except NotFound as exc:
                return error(request, 404, str(exc))
            except StorageUnavailable as exc:
                log.warning("database busy or unavailable: %s", exc)
                return error(
                    request, 503, "The trace database cannot be read right now (busy or "
                    "restarting). Try again in a moment."
                )  # fmt: skip
            except StorageError as exc:
                log.error("database error: %s", exc)
                return error(request, 503, "The trace database cannot be read: see the log.")
            except Exception:
                incident = secrets.token_hex(4)
                log.exception("page %s failed (incident %s)", request.url.path, incident)
                return error(
                    request, 500, f"Something went wrong on the server (incident {incident}, "
                    "in the workbench's log)."
                )  # fmt: skip

        return endpoint

    async def login(request: Request) -> Response:
        target = _local(request.query_params.get("next", "/"))
        message = ""
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_FORM_BYTES:
                return error(request, 400, "login form too large")
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
            name = (form.get("name") or [""])[0].strip()
            password = (form.get("password") or [""])[0]
            target = _local((form.get("next") or [target])[0])
            if await run_in_threadpool(config.access.login, name, password):
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(
                    SESSION_COOKIE,
                    config.access.session_cookie(name),
                    max_age=SESSION_SECONDS,
                    httponly=True,
                    samesite="strict",
                    secure=_https(request, config.access),
                )
                log.info("login %s from %s", name, _peer(request))
                return response
            log.warning("failed login for %r from %s", name[:64], _peer(request))
            message = "Unknown user or wrong password."
        if not config.access.users:
            return error(request, 404, "This workbench has no users file: nothing to log in to.")
        page_ = Page("login.html", {"next": target, "message": message}, "Log in")
        return render(page_, request, 401 if message else 200)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return error(request, 405, "This page is read-only: only GET is allowed.")
        return error(request, status, f"No page at {request.url.path}.")

    routes = [
        Route("/", page(pages_lines.home)),
        Route("/search", page(pages_serial.search)),
        Route("/serial", page(pages_serial.serial_page)),
        Route("/serial/export", page(pages_serial.export)),
        Route("/lot", page(pages_lot.lot_page)),
        Route("/lot/export", page(pages_lot.export)),
        Route("/window", page(pages_window.window_page)),
        Route("/window/export", page(pages_window.export)),
        Route("/lines", page(pages_lines.lines_page)),
        Route("/lines/export", page(pages_lines.export)),
        Route("/dashboard", page(pages_dash.dashboard_page)),
        Route("/dashboard/export", page(pages_dash.export)),
        *pages_quality.routes(page, error, config),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(packages=[("trace_store.web", "static")]), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            pool.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    guarded = AccessMiddleware(app, config.access, error)
    return PrefixMiddleware(guarded, config.root_path) if config.root_path else guarded


class AccessMiddleware:
    """Decides who the request is before any page runs (see ``auth.py``)."""

    def __init__(
        self, app: ASGIApp, access: Access, error: Callable[[Request, int, str], Response]
    ) -> None:
        self.app = app
        self.access = access
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        user: str | None = None
        if not self.access.open and not path.startswith(PUBLIC):
            user = self.access.proxy_user(_peer(request), request.headers)
            if user is None and self.access.users:
                user = self.access.session_user(request.cookies.get(SESSION_COOKIE))
                if user is None:
                    response: Response
                    if request.method == "GET":
                        target = path + (f"?{request.url.query}" if request.url.query else "")
                        response = RedirectResponse(
                            "/login?" + urlencode({"next": target}), status_code=303
                        )
                    else:
                        response = self.error(request, 401, "Log in first.")
                    await response(scope, receive, send)
                    return
            elif user is None:
                response = self.error(
                    request, 403, "This workbench is reached through the plant's reverse proxy, "
                    "which names the user."
                )  # fmt: skip
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)


def _user(request: Request) -> str | None:
    state = request.scope.get("state") or {}
    user = state.get("user")
    return user if isinstance(user, str) else None


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _https(request: Request, access: Access) -> bool:
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "")
    return proto == "https" and access.trusted_peer(_peer(request))


def _local(target: str) -> str:
    """Only a path on this site: never an open redirect to another host."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
