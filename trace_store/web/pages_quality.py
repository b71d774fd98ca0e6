"""The Quality pages: what is blocked, block and release (a form, for users with the quality
role), the rules' alerts with their evidence, the audit trail, and the recall reports with
their export and sign-off.

The pages read through the workbench's read-only pool like every other page. The three
actions are POST forms: each opens a connection that may write (``blocks.py`` does the
change in one transaction), then redirects back to a page that says what was done (the
running trace store publishes the new blocked set within about 0.2 s). A user without the
quality role, or an open workbench without login, gets 403: audit needs a name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from trace_store.quality import alerts
from trace_store.quality import blocks as q
from trace_store.quality.recall import table
from trace_store.storage import Storage, StorageError, open_storage
from trace_store.web import params
from trace_store.web.app import Ctx, Handler, Page, WorkbenchConfig
from trace_store.web.auth import QUALITY
from trace_store.web.export import stream
from trace_store.web.params import NotFound

MAX_FORM_BYTES = 4096
AUDIT_ROWS = 200
ALERT_ROWS = 100
Endpoint = Callable[[Request], Awaitable[Response]]
ErrorPage = Callable[[Request, int, str], Response]
Form = dict[str, str]


def routes(
    page: Callable[[Handler], Endpoint], error: ErrorPage, config: WorkbenchConfig
) -> list[Route]:
    """The pages, registered by ``app.create_app``."""
    return [
        Route("/quality", page(quality_page)),
        Route("/quality/report", page(report_page)),
        Route("/quality/report/export", page(report_export)),
        Route("/quality/block", _action(config, error, _block), methods=["POST"]),
        Route("/quality/release", _action(config, error, _release), methods=["POST"]),
        Route("/quality/sign-off", _action(config, error, _sign_off), methods=["POST"]),
    ]


def quality_page(ctx: Ctx) -> Page:
    ready = q.has_tables(ctx.storage)
    return Page(
        "quality.html",
        {
            "ready": ready,
            "blocks": q.blocks(ctx.storage) if ready else [],
            "audit": q.audit(ctx.storage, AUDIT_ROWS) if ready else [],
            "reports": q.reports(ctx.storage) if ready else [],
            "alerts": alerts.alerts(ctx.storage, ALERT_ROWS) if ready else [],
            "version": q.version(ctx.storage) if ready else 0,
            "can_edit": ctx.config.access.has_role(ctx.user, QUALITY),
            "done": ctx.params.get("done", "")[:300],
            "kinds": ("lot", "serial", "product"),
        },
        "Quality",
    )


def report_page(ctx: Ctx) -> Page:
    found = _report(ctx)
    return Page(
        "quality_report.html",
        {
            "report": found,
            "can_edit": ctx.config.access.has_role(ctx.user, QUALITY),
            "done": ctx.params.get("done", "")[:300],
        },
        f"Recall report {found.id}",
    )


def report_export(ctx: Ctx) -> Response:
    found = _report(ctx)
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    name = f"recall-{found.id}-{found.kind}-{found.key}"
    return stream(ctx.pool, lambda _: table(found.rows, name), fmt, name)


def _report(ctx: Ctx) -> q.Report:
    number = params.number(ctx.params, "id")
    if number is None or number != int(number):
        raise params.BadParameter("id", "a report number is required")
    found = q.report(ctx.storage, int(number)) if q.has_tables(ctx.storage) else None
    if found is None:
        raise NotFound(f"No recall report {int(number)}.")
    return found


# ---- actions ---------------------------------------------------------------------------------


Action = Callable[[Storage, Form, str], tuple[str, str]]
"""(storage, form, user) -> (what was done, the page to go back to)."""


def _block(storage: Storage, form: Form, user: str) -> tuple[str, str]:
    kind, key = _key(form)
    done = q.block(storage, kind, key, form.get("reason", ""), user)
    if done.report is not None:
        return done.message, "/quality/report?" + urlencode({"id": done.report})
    return done.message, "/quality"


def _release(storage: Storage, form: Form, user: str) -> tuple[str, str]:
    kind, key = _key(form)
    return q.release(storage, kind, key, form.get("reason", ""), user).message, "/quality"


def _sign_off(storage: Storage, form: Form, user: str) -> tuple[str, str]:
    number = form.get("id", "")
    if not number.isdigit():
        raise q.QualityError("a report number is required")
    report = q.sign_off(storage, int(number), user, form.get("note", "")[:500])
    done = f"recall report {report.id} signed off by {report.signed_by}"
    return done, "/quality/report?" + urlencode({"id": report.id})


def _key(form: Form) -> tuple[str, str]:
    kind = form.get("kind", "")
    if kind not in ("lot", "serial", "product"):
        raise q.QualityError("choose lot, serial or product")
    return kind, form.get("key", "").strip()


def _action(config: WorkbenchConfig, error: ErrorPage, act: Action) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        user = _user(request)
        if user is None or not config.access.has_role(user, QUALITY):
            return error(
                request,
                403,
                "Blocking, releasing and signing off need a user with the quality "
                "role (the users file's NAME:HASH:quality).",
            )
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return error(request, 400, "form too large")
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        form = {k: v[0] for k, v in parsed.items() if v}
        try:
            done, target = await run_in_threadpool(_write, config.db, act, form, user)
        except q.QualityError as exc:
            return error(request, 400, str(exc))
        except StorageError as exc:
            return error(request, 503, f"The change was not made: the database said {exc}")
        sep = "&" if "?" in target else "?"
        return RedirectResponse(f"{target}{sep}{urlencode({'done': done})}", status_code=303)

    return endpoint


def _write(db: str, act: Action, form: Form, user: str) -> tuple[str, str]:
    with open_storage(db) as storage:
        return act(storage, form, user)


def _user(request: Request) -> str | None:
    user = (request.scope.get("state") or {}).get("user")
    return user if isinstance(user, str) else None
