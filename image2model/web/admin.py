"""The operator's page at /admin: what the queue, the workers and FAL spending look like now.

A separate Gradio Blocks, mounted only when ADMIN_KEY is set, behind Gradio's own login
(username "admin", password ADMIN_KEY), which also guards its API and queue routes under
/admin/gradio_api. It reads one snapshot from `image2model.ops` every couple of seconds (the
job store is shared, so this is the whole deployment's picture) and acts on jobs only through
the job service, like every other interface.
"""

from __future__ import annotations

import hmac
import html
import logging
import time
from collections.abc import Callable
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from image2model.errors import AppError
from image2model.jobs.model import ItemState
from image2model.ops import FailureGroup, Overview, WorkerView, job_row, overview
from image2model.runtime import Runtime
from image2model.web.envelope import app_error_response
from image2model.web.page.style import UI_THEME
from image2model.web.security import ApiSecurity

log = logging.getLogger(__name__)

ADMIN_PATH = "/admin"
ADMIN_USER = "admin"
REFRESH_SECONDS = 2.0
JOBS_SHOWN = 50  # rows in the recent-jobs table (the figures above cover the recent 200)
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
PANEL: dict[str, Any] = {"apply_default_css": False}  # our own table style, not Gradio's prose grid
JOB_HEADERS = ["job id", "created", "model", "state", "done / images", "owner"]

ADMIN_CSS = """
.gradio-container { max-width: 1400px !important; width: 100% !important; margin: 0 auto !important; }
.adm-cards { display: flex; flex-wrap: wrap; gap: 10px; }
.adm-card { flex: 1 1 150px; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 14px;
            background: var(--background-fill-secondary); }
.adm-card .label { font-size: 13px; color: var(--body-text-color-subdued); }
.adm-card .value { font-size: 26px; font-weight: 700; line-height: 1.3; }
.adm-card .sub { font-size: 12px; color: var(--body-text-color-subdued); }
.adm-card.warn { border-color: #e6a23c; background: #fdf6ec; }
.adm-card.bad { border-color: #e57373; background: #fdecec; }
.adm-table { width: 100%; border-collapse: collapse; font-size: 14px; }
.adm-table th { text-align: left; font-weight: 600; color: var(--body-text-color-subdued);
                border-bottom: 1px solid var(--border-color-primary); padding: 4px 8px; }
.adm-table td { border-bottom: 1px solid var(--border-color-primary); padding: 4px 8px; vertical-align: top; }
.adm-table .num { text-align: right; font-variant-numeric: tabular-nums; }
.adm-table code { font-size: 13px; }
.adm-table ul { margin: 0; padding-left: 18px; }
.adm-empty { color: var(--body-text-color-subdued); margin: 4px 0; }
.adm-alert { padding: 8px 12px; border-radius: 8px; background: #fdecec; color: #8a1c1c; border: 1px solid #f3b4b4; }
.adm-states { display: flex; flex-wrap: wrap; gap: 8px; }
.adm-state { padding: 4px 10px; border-radius: 14px; background: var(--neutral-100); font-size: 14px; }
.adm-state b { font-variant-numeric: tabular-nums; }
.adm-state.zero { opacity: 0.55; }
.adm-stamp { font-size: 13px; color: var(--body-text-color-subdued); margin: 0; }
#adm-actions { align-items: end; }
#adm-delete { background: #c62828; color: #fff; border-color: #c62828; }
#adm-delete:hover { background: #a31f1f; }
.adm-notice { padding: 8px 12px; border-radius: 8px; font-size: 15px; }
.adm-ok { background: #edf7ed; color: #1e4620; border: 1px solid #b7dfb9; }
.adm-info { background: #eef5ff; color: #1d3f73; border: 1px solid #bcd4f6; }
.adm-err { background: #fdecec; color: #8a1c1c; border: 1px solid #f3b4b4; }
"""


def key_checker(admin_key: str) -> Callable[[str, str], bool]:
    """Gradio's login callback: the password must be ADMIN_KEY (compared in constant time)."""
    expected = admin_key.encode()

    def check(username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.strip().encode(), ADMIN_USER.encode())
        return hmac.compare_digest(password.encode(), expected) and user_ok

    return check


LOGIN_REFUSAL = "Too many login attempts from here; try again in {wait} s."


class LoginThrottle:
    """Gradio's login route takes any number of password tries: count each try at
    /admin/login per client address (RATE_LIMIT_LOGIN, in the rate limiter every process
    shares), and answer 429 past the limit without asking Gradio."""

    def __init__(self, app: ASGIApp, security: ApiSecurity):
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/").endswith(f"{ADMIN_PATH}/login")):
            address = self.security.address(Request(scope))
            try:
                await self.security.count(f"ip:{address}", ("login",), LOGIN_REFUSAL)
            except AppError as exc:
                log.warning("admin login refused: too many tries from %s", address)
                await app_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def mount_admin(app: FastAPI, runtime: Runtime, security: ApiSecurity) -> gr.Blocks:
    """Mount the page at /admin; call before the main page's mount at "/", which would
    otherwise answer every path under it."""
    app.add_middleware(LoginThrottle, security=security)

    @app.api_route(ADMIN_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    def admin_without_slash() -> RedirectResponse:
        # a mount at /admin only matches /admin/...; relative, so it works under a proxy prefix
        return RedirectResponse("admin/", status_code=307)

    blocks = build_admin(runtime)
    gr.mount_gradio_app(
        app, blocks, path=ADMIN_PATH,
        auth=key_checker(runtime.settings.admin_key),
        auth_message="image2model operator page: username <b>admin</b>, password the server's ADMIN_KEY.",
        theme=UI_THEME, css=ADMIN_CSS, footer_links=[], show_error=True, mcp_server=False,
    )
    return blocks


def build_admin(runtime: Runtime) -> gr.Blocks:
    return AdminPage(runtime).build()


class AdminPage:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="image2model · operator") as blocks:
            gr.Markdown("# image2model · operator")
            stamp = gr.HTML(elem_id="adm-stamp", **PANEL)
            cards = gr.HTML(elem_id="adm-cards", **PANEL)
            gr.Markdown("### Jobs by state (the recent 200)")
            states = gr.HTML(elem_id="adm-states", **PANEL)
            gr.Markdown("### Workers")
            workers = gr.HTML(elem_id="adm-workers", **PANEL)
            gr.Markdown("### Failures in the last hour")
            failures = gr.HTML(elem_id="adm-failures", **PANEL)
            gr.Markdown("### Recent jobs (click a row to pick its id)")
            jobs = gr.Dataframe(headers=JOB_HEADERS, value=[], interactive=False, wrap=True,
                                elem_id="adm-jobs", show_label=False, max_height=420)
            with gr.Row(equal_height=False, elem_id="adm-actions"):
                job_id = gr.Textbox(label="Job id", placeholder="paste a job id or click a row above",
                                    elem_id="adm-job-id", scale=4)
                cancel_btn = gr.Button("Cancel job", elem_id="adm-cancel", scale=1, min_width=140)
                delete_btn = gr.Button("Delete job and files", variant="stop", elem_id="adm-delete", scale=1,
                                       min_width=180)
            result = gr.HTML(elem_id="adm-result", **PANEL)
            shown = gr.State(None)  # the table as last sent, so an unchanged table is not redrawn
            timer = gr.Timer(REFRESH_SECONDS)

            outputs = [shown, stamp, cards, states, workers, failures, jobs]
            blocks.load(self.refresh, [shown], outputs, show_progress="hidden", **PRIVATE)
            timer.tick(self.refresh, [shown], outputs, show_progress="hidden", concurrency_limit=None, **PRIVATE)
            jobs.select(pick_job, None, [job_id], show_progress="hidden", **PRIVATE)
            cancel_btn.click(self.cancel, [job_id], [result], concurrency_limit=None, show_progress="minimal", **PRIVATE)
            delete_btn.click(self.delete, [job_id], [result], concurrency_limit=None, show_progress="minimal", **PRIVATE)
        return blocks

    # --- reading ---------------------------------------------------------------------------
    def refresh(self, shown: list[list[str]] | None) -> tuple[Any, ...]:
        """One snapshot for every panel; the table only when it changed (a redraw would
        drop the operator's scroll position every two seconds)."""
        view = overview(self.runtime.store, self.runtime.settings)
        rows = [job_cells(job_row(job)) for job in view.jobs[:JOBS_SHOWN]]
        table = gr.skip() if rows == shown else rows
        return (rows, stamp_html(view), cards_html(view), states_html(view.jobs_by_state),
                workers_html(view.queue.workers, view.taken_at), failures_html(view.failures, view.taken_at), table)

    # --- acting ----------------------------------------------------------------------------
    def cancel(self, job_id: str, request: gr.Request) -> str:
        job_id = (job_id or "").strip()
        if not job_id:
            return notice("Type a job id, or click a job in the table, first.", tone="err")
        try:
            job = self.runtime.service.get(job_id)
            if job.state.terminal:
                return notice(f"Job {job_id} has already ended ({job.state.value}); there is nothing to cancel.",
                              tone="info")
            waiting = sum(1 for item in job.items if item.state == ItemState.QUEUED)
            running = sum(1 for item in job.items if item.state == ItemState.RUNNING)
            self.runtime.service.cancel(job_id)
        except AppError as exc:
            return notice(plain(exc, job_id), tone="err")
        log.info("admin cancelled a job", extra={"job_id": job_id, "user": request.username})
        parts = ([f"{count(waiting, 'waiting image')} will not start"] if waiting else []) + \
                ([f"{count(running, 'running image')} told to stop"] if running else [])
        return notice(f"Cancelled job {job_id}: {' and '.join(parts) or 'nothing was left to stop'}.")

    def delete(self, job_id: str, request: gr.Request) -> str:
        job_id = (job_id or "").strip()
        if not job_id:
            return notice("Type a job id, or click a job in the table, first.", tone="err")
        try:
            job = self.runtime.service.get(job_id)
            self.runtime.service.delete(job_id)
        except AppError as exc:
            return notice(plain(exc, job_id), tone="err")
        log.info("admin deleted a job", extra={"job_id": job_id, "user": request.username})
        stopped = " (its unfinished images were cancelled first)" if not job.state.terminal else ""
        return notice(f"Deleted job {job_id} ({count(len(job.items), 'image')}) and all its files{stopped}.")


def pick_job(evt: gr.SelectData) -> str:
    """A click on any cell of a row picks that row's job id (the first column)."""
    row = getattr(evt, "row_value", None)
    if row:
        return str(row[0])
    return str(evt.value) if evt.index and evt.index[1] == 0 else gr.skip()


def plain(exc: AppError, job_id: str) -> str:
    if exc.code == "job_not_found":
        return f"No job with id {job_id}: it may have been deleted or expired, or the id is mistyped."
    return exc.message


# --- rendering (every value from the store is escaped: error messages come from FAL) ---------
def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def notice(text: str, tone: str = "ok") -> str:
    """A plain sentence in a coloured box: ok (done), info (nothing to do), err (could not)."""
    return f'<div class="adm-notice adm-{tone}">{esc(text)}</div>'


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def ago(seconds: float | None) -> str:
    """A short age: '4 s ago', '3 min ago', '2 h 5 min ago'."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    return f"{span(seconds)} ago"


def span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def clock(timestamp: float) -> str:
    local = time.localtime(timestamp)
    today = time.localtime().tm_yday == local.tm_yday
    return time.strftime("%H:%M:%S" if today else "%b %d %H:%M:%S", local)


def job_cells(row: dict[str, Any]) -> list[str]:
    return [row["job_id"], clock(row["created_at"]), row["model"], row["state"],
            f'{row["done"]} / {row["images"]}', row["owner"]]


def stamp_html(view: Overview) -> str:
    return (f'<p class="adm-stamp">Updated {esc(clock(view.taken_at))} {esc(time.strftime("%Z"))}; '
            f"refreshes every {REFRESH_SECONDS:g} s.</p>")


def card(label: str, value: str, sub: str = "", tone: str = "") -> str:
    return (f'<div class="adm-card {tone}" data-card="{esc(label)}"><div class="label">{esc(label)}</div>'
            f'<div class="value">{esc(value)}</div><div class="sub">{esc(sub)}</div></div>')


def cards_html(view: Overview) -> str:
    queue = view.queue
    workers = len(queue.workers)
    threads = sum(w.threads or 0 for w in queue.workers)
    wait = span(queue.oldest_wait_seconds) if queue.depth else "–"
    wait_tone = "bad" if queue.depth and not workers else ("warn" if queue.oldest_wait_seconds > 60 else "")
    if queue.fal_images_limit:
        used = queue.fal_images_this_hour / queue.fal_images_limit
        left = queue.fal_images_limit - queue.fal_images_this_hour
        sub = f"{left} left before the guard refuses" if left > 0 else "guard reached: FAL jobs are refused"
        fal = card("FAL images this hour", f"{queue.fal_images_this_hour} / {queue.fal_images_limit}", sub,
                   "bad" if used >= 1 else ("warn" if used >= 0.8 else ""))
    else:
        fal = card("FAL images this hour", str(queue.fal_images_this_hour), "spending guard off (FAL_IMAGES_PER_HOUR=0)")
    return '<div class="adm-cards">' + "".join([
        card("Images waiting", str(queue.depth), "queued for a worker", "warn" if queue.depth and not workers else ""),
        card("Oldest wait", wait, "longest an image has waited", wait_tone),
        card("Running", str(queue.running), "images being made now"),
        card("Worker processes", str(workers), f"{count(threads, 'thread')} in all", "" if workers else "bad"),
        fal,
    ]) + "</div>"


def states_html(by_state: dict[str, int]) -> str:
    chips = [f'<span class="adm-state{"" if n else " zero"}" data-state="{esc(state)}">{esc(state)} <b>{n}</b></span>'
             for state, n in by_state.items()]
    return '<div class="adm-states">' + "".join(chips) + "</div>"


def table(headers: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="adm-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def workers_html(workers: list[WorkerView], now: float) -> str:
    if not workers:
        return ('<div class="adm-alert">No worker process is alive: queued images will wait until one '
                "starts (embedded worker, or <code>huey_consumer</code> on a worker machine).</div>")
    rows = [[f"<code>{esc(w.process)}</code>", esc(w.host), esc(w.pid if w.pid is not None else "?"),
             esc(w.threads if w.threads is not None else "?"), esc(w.items_in_hand),
             esc(ago(now - w.last_seen) if w.last_seen else "never")] for w in workers]
    return table(["process", "host", "pid", "threads", "images in hand", "last heartbeat"], rows, {2, 3, 4})


def failures_html(groups: list[FailureGroup], now: float) -> str:
    if not groups:
        return '<p class="adm-empty">No failed images in the last hour.</p>'
    rows = [[f"<code>{esc(g.code)}</code>", esc(g.count), esc(ago(now - g.last_at)),
             "<ul>" + "".join(f"<li>{esc(m)}</li>" for m in g.messages) + "</ul>"] for g in groups]
    return table(["code", "images", "last", "messages (newest first)"], rows, {1})


__all__ = ["ADMIN_PATH", "ADMIN_USER", "build_admin", "key_checker", "mount_admin"]
