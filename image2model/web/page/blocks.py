"""The Gradio page: photos in, 3D models to look at and download out.

The page never does the work itself: it creates jobs through the job service and then only
watches the job store, so closing the tab never stops a job, and reloading the page (its
address carries ?job=<id>) re-attaches to it. Every event here is private; the named API for
scripts lives in page/api.py.
"""

from __future__ import annotations

import asyncio
import html
import threading

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr

from image2model.errors import AppError
from image2model.examples import EXAMPLES
from image2model.jobs.model import OPEN_OWNER
from image2model.jobs.store import StoreUnavailable
from image2model.media.images import browser_preview
from image2model.providers.catalog import LOCAL_MODEL, ModelSpec, catalog
from image2model.children import CPU_COUNT
from image2model.providers.local import NOTHING_STOOD_OUT
from image2model.runtime import Runtime
from image2model.units import size_text
from image2model.web.security import ApiSecurity
from image2model.web.page.api import follow_job, register_api
from image2model.web.page.files import export_model, export_zip, gallery_picture, uploads_from
from image2model.web.page.form import (
    FAL_HINT,
    MODE_CHOICES,
    ParamForm,
    OWN_KEY_INFO,
    available_models,
    build_form,
    default_model,
    mode_props,
    model_choices,
    model_info,
    options_for,
    seed_update,
)
from image2model.web.page.state import SET_URL_JS, job_from_query, recent_choices, remember, still_there
from image2model.web.page.style import UI_CSS, UI_HEAD, UI_THEME
from image2model.web.page.view import (
    TABLE_HEADERS,
    TABLE_WIDTHS,
    finished_items,
    friendly,
    model_file,
    notice_html,
    preview_file,
    progress_html,
    shows_cutout,
    stats_text,
    table_rows,
    viewer_camera,
)

__all__ = ["UI_CSS", "UI_HEAD", "UI_THEME", "build_ui", "upload_ceiling"]

WATCH_EVERY = 0.75  # seconds between refreshes of elapsed times while nothing else changes
NOT_FOUND = "That job was not found; it may have expired."
STORE_AWAY = ("The server has lost touch with its job store for a moment. Your photos are still being "
              "worked on; this page catches up by itself when it is back.")
STORE_AWAY_NOW = "The server has lost touch with its job store for a moment; please try again in a minute."
SEEN_LABEL = "What the model saw"
# Clicks the hidden download button once its file is there (nothing when making it failed).
DOWNLOAD_NOW_JS = """() => {
  const button = document.getElementById("export");
  if (button) { button.click(); }
}"""
SEEN_NOTE = "\n\nOn the left, **what the model saw**: your photo with the background taken away."
WHOLE_PHOTO_NOTE = f"\n\nOn the left, **what the model saw**: your whole photo. {NOTHING_STOOD_OUT}"
PRIVATE: dict[str, Any] = {"api_visibility": "private"}


# Gradio deletes what it cached (uploads, examples) after an hour, checking hourly; our results
# are never in its cache (see serve_results_in_place), so this bounds only its own files.
GRADIO_CACHE_CLEANUP = (3600, 3600)  # (every seconds, older than seconds)
_served_in_place: set[Path] = set()


def serve_results_in_place(runtime: Runtime) -> None:
    """Let Gradio serve the job files from the data directory instead of copying each file a
    handler returns into its temp folder (GRADIO_TEMP_DIR). A copy would outlive its job:
    still servable after a delete or expiry, and never cleaned up. Process-wide in Gradio, so
    each directory is added once; it was already an allowed path, so nothing new is exposed."""
    root = Path(runtime.files.root).resolve()
    if root not in _served_in_place:
        gr.set_static_paths(paths=[root])
        _served_in_place.add(root)


def build_ui(runtime: Runtime, security: ApiSecurity) -> gr.Blocks:
    """The page; `security` is the REST API's, so a visitor's job starts count in one budget."""
    serve_results_in_place(runtime)  # before any component exists
    return Page(runtime, security).build()


def note(message: str, kind: str = "error") -> dict[str, Any]:
    """A message box update that hides the box when there is nothing to say."""
    return gr.update(value=notice_html(message, kind), visible=bool(message))


LEAVE_OUT = "Leave out the ones that cannot be used"
STILL_RUNNING = "This tab's job is still running: wait for it, or press Cancel first."


def upload_ceiling(max_image_mb: float) -> int:
    """Bytes the upload box takes per file: well above MAX_IMAGE_MB, so a photo a little too
    big reaches the job service, whose note says so in words; still a ceiling, so no upload
    fills the disk (above it the page leaves the file out itself, see UPLOAD_REFUSED_JS)."""
    return int(4 * max_image_mb * 1024 * 1024)


def session_of(request: gr.Request | None) -> str:
    """The browser tab's Gradio session ("" when there is none, as for API calls)."""
    return getattr(request, "session_hash", None) or ""


def refused(message: str) -> list[Any]:
    """The start outputs (job box, notice, seed, recent, recent picker) when no job starts."""
    return [gr.skip(), note(message), gr.skip(), gr.skip(), gr.skip()]


def first_model(runtime: Runtime, specs: list[ModelSpec]) -> str:
    """The configured default when it is offered here, else the first model offered."""
    ids = [spec.id for spec in specs]
    try:
        wanted = default_model(runtime.settings)
    except AppError:
        wanted = ""
    return wanted if wanted in ids else ids[0]


def count_validator(max_images: int, inputs: int):  # noqa: ANN201 - a Gradio validator
    """Refuse 0 or too many photos next to the upload box, before anything is sent on."""

    def validate(chosen: list[str] | None, *_: Any) -> list[dict[str, Any]]:
        count = len(chosen or [])
        if count == 0:
            message = "Please add at least one photo."
        elif count > max_images:
            message = f"You added {count} photos; the limit is {max_images} per job. Please remove some."
        else:
            message = ""
        return [gr.validate(not message, message)] + [gr.validate(True, "")] * (inputs - 1)

    return validate


def seen_note(item: dict[str, Any], cutout: bool) -> str:
    """Beside the cut-out: what it shows (the whole photo when nothing was separated)."""
    if not cutout:
        return ""
    whole = (item.get("stats") or {}).get("mask_source") == "full_frame"
    return WHOLE_PHOTO_NOTE if whole else SEEN_NOTE


class Page:
    """The page's components, and what each of its events does."""

    form: ParamForm

    def __init__(self, runtime: Runtime, security: ApiSecurity):
        self.runtime = runtime
        self.security = security
        self.settings = runtime.settings
        self.service = runtime.service
        self.start_model = first_model(runtime, available_models(self.settings))
        self.specs = available_models(self.settings, own_key=True)  # a pasted key offers the FAL models
        self.latest: dict[str, object] = {}  # session -> token of its newest watcher; older ones stop
        self.session_jobs: dict[str, str] = {}  # session -> the job it started last
        self.clicked: dict[str, int] = {}  # session -> item picked in the gallery while its watcher runs
        self.starting = threading.Lock()  # a double click's two starts must not both create a job

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="image2model: photos to 3D models", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
            gr.Markdown("# Photos to 3D models\nAdd photos of an object, pick a model, and press **Generate**. "
                        "You can turn each model around here and download it.", elem_id="intro")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=320):
                    self._inputs()
                with gr.Column(scale=7, min_width=320):
                    self._results()
            self.job_box = gr.Textbox(visible="hidden", elem_id="job-id")  # in the DOM: its change fires
            # What this tab shows (job id, result index). Kept in the page rather than in a
            # gr.State: a State makes every client hold a heartbeat connection open.
            self.view_state = gr.JSON({"job": "", "index": None}, visible=False)
            self.recent = gr.BrowserState([], storage_key=self.settings.browser_state_key,
                                          secret=self.settings.browser_state_secret)
            register_api(self.runtime, self.security)
            self._wire(demo)
        return demo

    # --- layout -------------------------------------------------------------------------------
    def _inputs(self) -> None:
        spec = catalog()[self.start_model]
        # No file_types: Gradio's own type check refused a whole drop with a toast that faded,
        # leaving a bare "Error"; every file is let in, and the note below says what will not do.
        self.files = gr.File(label=f"Photos (1 to {self.settings.max_images})", file_count="multiple",
                             type="filepath", elem_id="images", height=150)
        self.thumbs = gr.Gallery(label="Your photos", show_label=False, columns=6, height=150, object_fit="contain",
                                 fit_columns=False, allow_preview=False, interactive=False, buttons=[],
                                 visible=False, elem_id="thumbs")
        self.upload_note = gr.HTML(elem_id="upload-note", visible=False)
        # UPLOAD_REFUSED_JS fills this in; the same words as the server's own refusal
        limit = html.escape(size_text(self.settings.max_image_bytes))
        gr.HTML(f'<div class="i2m-refused" role="alert" data-limit="{limit}" '
                f'data-ceiling="{upload_ceiling(self.settings.max_image_mb)}" hidden></div>', elem_id="upload-refused",
                padding=False)
        self.leave_out = gr.Button(LEAVE_OUT, elem_id="leave-out", visible=False, size="sm")
        # allow_custom_value: Gradio checks a value against the choices the page was built with,
        # and a pasted FAL key adds choices later (offer_models); the catalog checks it instead
        self.model = gr.Dropdown(model_choices(self.settings), value=self.start_model, label="Model",
                                 elem_id="model", allow_custom_value=True)
        self.model_line = gr.Markdown(model_info(spec), elem_id="model-info")
        if not self.settings.fal_configured:
            gr.Markdown(FAL_HINT, elem_id="fal-hint")
        self.mode = gr.Radio(MODE_CHOICES, label="Mode", elem_id="mode", **mode_props(spec))
        with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
            with gr.Row(visible=spec.param("seed") is not None) as self.seed_row:
                self.seed = gr.Number(label="Seed", precision=0, minimum=0, elem_id="seed",
                                      info="The seed used is shown here after you press Generate.")
                self.randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="randomize")
            self.form = build_form(self.specs, self.start_model)
        with gr.Accordion("Your own FAL.AI key", open=False, elem_id="own-key-box"):
            self.own_key = gr.Textbox(label="FAL.AI key", type="password", placeholder="key-id:key-secret",
                                      info=OWN_KEY_INFO, elem_id="own-key", max_length=200)
        with gr.Row():
            self.generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            self.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", interactive=False)
        self.notice = gr.HTML(elem_id="notice", visible=False)
        # pictures rather than gr.Examples' text chips: people pick an example by what it shows
        gr.Markdown("**Examples**: click one to try it (on the offline model).", elem_id="examples-title")
        self.examples = gr.Gallery([(e.thumbnail, e.title) for e in EXAMPLES], show_label=False, columns=5,
                                   height=136, object_fit="contain", allow_preview=False, interactive=False,
                                   buttons=[], elem_id="examples")

    def _results(self) -> None:
        self.progress = gr.HTML(elem_id="progress")
        self.table = gr.Dataframe(headers=TABLE_HEADERS, datatype="str", interactive=False, wrap=True,
                                  column_widths=TABLE_WIDTHS,
                                  label="Images", elem_id="items", max_height=320)
        self.viewer = gr.Model3D(label="3D model", elem_id="viewer", height=420, clear_color=(0.94, 0.95, 0.96, 1.0))
        # every finished model at a glance; a click shows it in the viewer above
        self.results = gr.Gallery([], label="Your models: click one to look at it", show_label=False, columns=5,
                                  height=200, object_fit="contain", allow_preview=False, interactive=False,
                                  buttons=[], elem_id="results")
        with gr.Row(equal_height=False):
            # the offline model's cut-out ("what the model saw"), or the model's own preview picture
            self.seen = gr.Image(label=SEEN_LABEL, show_label=False, elem_id="seen", height=140, width=140,
                                 interactive=False, buttons=[], visible=False, scale=0, min_width=140)
            self.stats = gr.Markdown(elem_id="stats")
        with gr.Row(equal_height=True):
            self.glb_btn = gr.DownloadButton("Download GLB", elem_id="download-glb", interactive=False)
            self.zip_btn = gr.Button("Download all (ZIP)", elem_id="download-zip", interactive=False)
        with gr.Row(equal_height=True):
            self.fmt = gr.Dropdown([("OBJ (zipped with its texture)", "obj"), ("STL", "stl"), ("PLY", "ply")],
                                   value="obj", label="Other format", elem_id="format", scale=2)
            self.convert_btn = gr.Button("Download in this format", elem_id="convert", interactive=False, scale=1)
        # ZIP and other formats are made when asked for, then handed to this hidden button,
        # which the page clicks at once: one click downloads, as the GLB button does
        self.export_file = gr.DownloadButton(elem_id="export", visible="hidden")
        with gr.Accordion("Recent jobs", open=False, elem_id="recent-jobs"):
            self.recent_pick = gr.Dropdown([], label="Open a recent job", elem_id="recent-pick",
                                           info="Kept in this browser.")

    # --- wiring -------------------------------------------------------------------------------
    def _wire(self, demo: gr.Blocks) -> None:
        start_outputs = [self.job_box, self.notice, self.seed, self.recent, self.recent_pick]
        start_inputs = [self.files, self.model, self.mode, self.seed, self.randomize, self.recent, self.job_box,
                        self.own_key, *self.form.inputs]
        # Each of these may choose a job by setting the job box; its change starts the watcher.
        self.generate_btn.click(self.start, start_inputs, start_outputs, concurrency_limit=None,
                                show_progress="minimal",
                                validator=count_validator(self.settings.max_images, len(start_inputs)), **PRIVATE)
        self.examples.select(self.pick_example, None, [self.files, self.notice], concurrency_limit=None,
                             show_progress="hidden",
                             **PRIVATE).then(self.start_example, [self.files, self.recent],
                                             [self.model, *start_outputs], concurrency_limit=None,
                                             show_progress="minimal", **PRIVATE)
        self.recent_pick.input(self.open_recent, [self.recent_pick], [self.job_box, self.notice],
                               concurrency_limit=None, **PRIVATE)
        demo.load(self.on_load, [self.recent], [self.job_box, self.notice, self.recent, self.recent_pick],
                  concurrency_limit=None, **PRIVATE)
        self._watch_chosen_job()

        self.leave_out.click(self.keep_usable, [self.files], [self.files], concurrency_limit=4,
                             show_progress="hidden", **PRIVATE)
        self.files.change(self.show_uploads, [self.files], [self.thumbs, self.upload_note, self.notice, self.leave_out],
                          concurrency_limit=4, show_progress="hidden", **PRIVATE)
        self.own_key.change(self.offer_models, [self.own_key, self.model], [self.model], concurrency_limit=None,
                           show_progress="hidden", **PRIVATE)
        self.model.change(self.pick_model, [self.model, self.mode],
                          [self.mode, self.model_line, self.seed_row, self.seed, *self.form.groups.values(),
                           *self.form.inputs], concurrency_limit=None, show_progress="hidden", **PRIVATE)
        self.cancel_btn.click(self.cancel, [self.job_box], [self.notice], concurrency_limit=None, **PRIVATE)
        self.results.select(self.show_result, [self.job_box],
                            [self.viewer, self.stats, self.seen, self.glb_btn, self.notice, self.view_state],
                            concurrency_limit=None, **PRIVATE)
        self.convert_btn.click(self.export, [self.job_box, self.view_state, self.fmt],
                               [self.export_file, self.notice], concurrency_limit=2, **PRIVATE).success(
            None, None, None, js=DOWNLOAD_NOW_JS, **PRIVATE)
        self.zip_btn.click(self.export_all, [self.job_box], [self.export_file, self.notice], concurrency_limit=2,
                           **PRIVATE).success(None, None, None, js=DOWNLOAD_NOW_JS, **PRIVATE)

    def _watch_chosen_job(self) -> None:
        """When the job box changes: put the job in the URL, then follow it. Following hangs off
        the box, not off each button's event chain: a double click on Generate sends two
        starts at once, and Gradio 6.31 then dropped the chains of both (no watcher at all).
        A new watcher replaces the tab's old one, which stops at its next update."""
        watch_outputs = [self.progress, self.table, self.viewer, self.results, self.stats, self.seen, self.glb_btn,
                         self.cancel_btn, self.generate_btn, self.zip_btn, self.convert_btn, self.export_file, self.notice,
                         self.view_state]
        self.job_box.change(None, [self.job_box], None, js=SET_URL_JS, **PRIVATE).then(
            self.watch, [self.job_box, self.view_state], watch_outputs, concurrency_limit=None,
            show_progress="hidden", trigger_mode="multiple", **PRIVATE)

    # --- choosing photos, model and settings ---------------------------------------------------
    def show_uploads(self, chosen: list[str] | None) -> tuple[Any, Any, Any, Any]:
        """Thumbnails with names, and what is wrong with the photos, said at once, with a
        button that leaves out what cannot be used (when something can)."""
        uploads = uploads_from(chosen)
        usable, problems, over = self.service.sort_uploads(uploads)
        limit = self.settings.max_images
        label = LEAVE_OUT
        if over:  # the service's count message (first) speaks to API callers ("you sent")
            problems[0] = f"You added {len(uploads)} photos; the limit is {limit} per job."
            label = f"Keep the first {limit} photos" if len(problems) == 1 else f"{LEAVE_OUT}, and keep the first {limit}"
        # only what is readable gets a thumbnail: a broken picture says less than the note
        gallery = [(str(browser_preview(u.path)), u.name) for u in usable]
        # a notice about the previous photos would now be out of date
        return (gr.update(value=gallery or None, visible=bool(gallery)), note(" ".join(problems)), note(""),
                gr.update(visible=bool(problems and usable), value=label))

    def keep_usable(self, chosen: list[str] | None) -> Any:
        """The upload box with only the photos a job can take (the first max_images readable ones)."""
        usable, _, _ = self.service.sort_uploads(uploads_from(chosen))
        return [str(u.path) for u in usable] or None

    def pick_model(self, model_id: str, current_mode: str) -> list[Any]:
        """A new model: its modes, its description, its settings at their defaults."""
        spec = catalog().get(model_id)
        if spec is None:  # typed into the picker: Generate says what the models are
            return [gr.skip()] * (4 + len(self.form.groups) + len(self.form.inputs))
        row, seed_value = seed_update(spec)
        return [gr.update(**mode_props(spec, current_mode)), model_info(spec), row, seed_value,
                *self.form.reset(model_id)]

    def offer_models(self, own_key: str | None, model_id: str) -> Any:
        """With a key pasted, the FAL models are offered even when this server has no key."""
        choices = model_choices(self.settings, own_key=bool((own_key or "").strip()))
        ids = [value for _, value in choices]
        return gr.update(choices=choices, value=model_id if model_id in ids else self.start_model)

    # --- starting and attaching ----------------------------------------------------------------
    async def start(self, chosen: list[str] | None, model_id: str, mode_value: str, seed_value: Any,
                    random_seed: bool, stored: Any, current_job: str, own_key: str | None, request: gr.Request,
                    *flat: Any) -> list[Any]:
        try:
            spec = self.service.model_spec(model_id, own_key=bool((own_key or "").strip()))
            options = options_for(spec, self.form, list(flat), seed_value, random_seed)
        except Exception as exc:  # noqa: BLE001 - shown in words, never as a traceback
            return refused(friendly(exc))
        session = session_of(request)
        if await asyncio.to_thread(self.tab_busy, current_job, session):  # a double click is not counted
            return refused(STILL_RUNNING)
        try:
            visitor = await self.security.may_start(request)
        except AppError as exc:
            return refused(exc.message)
        result = await asyncio.to_thread(self.start_now, chosen, model_id, mode_value, options, stored,
                                         current_job, own_key, session, visitor)
        return await self.counted(visitor, result)

    def start_now(self, chosen: list[str] | None, model_id: str, mode_value: str, options: dict[str, Any],
                  stored: Any, current_job: str, own_key: str | None, session: str, visitor: str) -> list[Any]:
        with self.starting:  # checked and created in one step: a second click must not pay again
            if self.tab_busy(current_job, session):
                return refused(STILL_RUNNING)
            result = self.launch(chosen, model_id, mode_value, options, stored, visitor, own_key)
            if session and isinstance(result[0], str):
                self.session_jobs[session] = result[0]
        return result

    def tab_busy(self, current_job: str, session: str) -> bool:
        return self.still_running(current_job) or self.still_running(self.session_jobs.get(session))

    async def counted(self, visitor: str, result: list[Any]) -> list[Any]:
        """A job that was made counts against the visitor's starts (a refused one does not)."""
        if isinstance(result[0], str):
            await self.security.count_start(visitor)
        return result

    def still_running(self, job_id: str | None) -> bool:
        if not job_id:
            return False
        try:
            return not self.service.get(job_id, OPEN_OWNER).state.terminal
        except Exception:  # noqa: BLE001 - an expired or unknown job is not running
            return False

    async def pick_example(self, chosen: gr.SelectData, request: gr.Request) -> tuple[Any, Any]:
        """The example's photos in the upload box, as if the person had added them; when this
        visitor may not start a job now, the box keeps what it had (matching the results shown)
        and the notice says why (start_example, next, says it again and starts nothing)."""
        try:
            await self.security.may_start(request)
        except AppError as exc:
            return gr.skip(), note(exc.message)
        return EXAMPLES[chosen.index].paths, gr.skip()

    async def start_example(self, chosen: list[str] | None, stored: Any, request: gr.Request) -> list[Any]:
        """Examples always run on the offline model with its defaults."""
        try:
            visitor = await self.security.may_start(request)
        except AppError as exc:
            return [gr.skip(), *refused(exc.message)]
        launched = await asyncio.to_thread(self.launch, chosen, LOCAL_MODEL, "per_image", {}, stored, visitor)
        return [gr.update(value=LOCAL_MODEL), *await self.counted(visitor, launched)]

    def launch(self, chosen: list[str] | None, model_id: str, mode_value: str, options: dict[str, Any],
               stored: Any, visitor: str, own_key: str | None = None) -> list[Any]:
        """Create the job through the job service, in the visitor's fair share of the queue;
        errors become a notice in plain words."""
        uploads = uploads_from(chosen)
        try:
            job = self.service.create_job(uploads, model=model_id, mode=mode_value, params=options,
                                          fal_key=own_key, share=visitor)
        except Exception as exc:  # noqa: BLE001
            usable, problems, _ = self.service.sort_uploads(uploads)
            if problems:  # already said under the photos: point there
                return refused(f"Some photos cannot be used: see the note under them, or press “{LEAVE_OUT}”."
                               if usable else "None of these files can be used: see the note under the photos.")
            return refused(friendly(exc))
        used_seed = job.params.get("seed")
        updated = remember(stored, job)
        return [job.id, note(""), used_seed if used_seed is not None else gr.skip(), updated,
                gr.update(choices=recent_choices(updated), value=None)]

    def on_load(self, stored: Any, request: gr.Request) -> list[Any]:
        """Re-attach to ?job=<id>, and drop expired jobs from the recent list. With the job
        store away, follow the job anyway (the watcher says so, and catches up) and keep the
        list as it is."""
        query = dict(request.query_params) if request else {}
        job_id = job_from_query(query)
        try:
            kept = still_there(self.service, stored)
            choices = gr.update(choices=recent_choices(kept), value=None)
            if (query.get("job") and not job_id) or (job_id and not self.job_exists(job_id)):
                return ["", note(NOT_FOUND), kept, choices]
        except StoreUnavailable:
            return [job_id or "", note(STORE_AWAY if job_id else STORE_AWAY_NOW, "info"), gr.skip(), gr.skip()]
        return [job_id, note(""), kept, choices]

    def open_recent(self, job_id: str | None) -> list[Any]:
        if not job_id:  # the list was opened and closed without a choice
            return [gr.skip(), gr.skip()]
        try:
            if not self.job_exists(job_id):
                return [gr.skip(), note(NOT_FOUND)]
        except StoreUnavailable:
            return [job_id, note(STORE_AWAY, "info")]  # the watcher catches up when it is back
        return [job_id, note("")]

    def job_exists(self, job_id: str) -> bool:
        try:
            self.service.get(job_id, OPEN_OWNER)
        except AppError:
            return False
        return True

    # --- following a job --------------------------------------------------------------------
    async def watch(self, job_id: str, viewing: dict[str, Any] | None,
                    request: gr.Request) -> AsyncIterator[dict[Any, Any]]:
        """Follow the job in the store and refresh the page; stops when the job finishes, when
        the tab closes, or when this tab starts watching another job."""
        if not job_id:  # nothing to follow: leave any watcher this tab already has alone
            yield {self.progress: gr.skip()}
            return
        session = session_of(request)
        token = object()
        self.latest[session] = token
        viewing = viewing if isinstance(viewing, dict) else {}
        resume = viewing.get("job") == job_id  # same job: keep what the tab shows
        shown = viewing.get("index") if resume else None
        offered, away = -1, False
        update: dict[Any, Any] = {self.progress: gr.skip()}
        try:
            async for status in follow_job(self.service, job_id, every=WATCH_EVERY):
                if self.latest.get(session) is not token:
                    return
                if status is None:
                    away = True
                    yield {self.notice: note(STORE_AWAY, "info")}
                    continue
                update = self.refresh(status)
                if away:
                    away = False
                    update.setdefault(self.notice, note(""))
                if not resume:
                    update.update(self.clear_results(job_id))
                    resume = True
                done = finished_items(status)
                if shown is None and done:
                    shown = done[0]["index"]
                    update.update(self.show_item(job_id, done[0]))
                if len(done) != offered:
                    offered = len(done)
                    pictures = await asyncio.to_thread(self.gallery, job_id, done)
                    # the highlight follows the model in the viewer, wherever new ones come in
                    in_view = self.clicked.get(session, shown)
                    picked = {"selected_index": next((n for n, i in enumerate(done) if i["index"] == in_view), None)}
                    update[self.results] = gr.update(value=pictures, **picked)
                    update[self.zip_btn] = gr.update(interactive=bool(done))
                    update[self.convert_btn] = gr.update(interactive=bool(done))
                yield update
            # Gradio repeats a generator's last update when it completes, so end on one that
            # changes nothing: repeated, the finishing update cleared a notice shown since (a
            # refused Generate), and a second identical Model3D value while its 3D code is still
            # loading left the viewer blank (seen on 6.31 when re-attaching to a finished job).
            yield {self.cancel_btn: gr.update(interactive=False)}
        except Exception as exc:  # noqa: BLE001
            yield {self.notice: note(friendly(exc)), self.cancel_btn: gr.update(interactive=False),
                   self.generate_btn: gr.update(interactive=True)}
        finally:
            if self.latest.get(session) is token:
                del self.latest[session]
                self.clicked.pop(session, None)

    def refresh(self, status: dict[str, Any]) -> dict[Any, Any]:
        """What changes on every status: the bar, the table, whether Cancel makes sense."""
        update = {self.progress: progress_html(status), self.table: table_rows(status, *self.pace(status)),
                  self.cancel_btn: gr.update(interactive=not status["finished"]),
                  self.generate_btn: gr.update(interactive=status["finished"])}
        if status["finished"]:
            update[self.notice] = note("")  # "Cancelling..." or "still running" is out of date
        return update

    def pace(self, status: dict[str, Any]) -> tuple[float | None, int]:
        """(usual seconds per photo, photos run at once) for the queue estimate: the offline
        model runs one photo per core, FAL ones up to FAL_CONCURRENCY at once."""
        spec = catalog().get(status.get("model") or "")
        if spec is None:
            return None, 1
        parallel = CPU_COUNT if spec.provider == "local" else self.settings.fal_concurrency
        return spec.typical_seconds, parallel

    def gallery(self, job_id: str, done: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(picture, model file name) of each finished item; rendering a thumbnail takes a
        few tens of milliseconds, once per model."""
        return [(str(gallery_picture(self.runtime.files, job_id, item)), model_file(item)["name"])  # type: ignore[index]
                for item in done]

    def clear_results(self, job_id: str) -> dict[Any, Any]:
        """Another job: forget the last one's viewer, picks and downloads."""
        return {self.viewer: None, self.stats: "", self.results: gr.update(value=[], selected_index=None),
                self.seen: gr.update(value=None, visible=False),
                self.glb_btn: gr.update(value=None, interactive=False),
                self.export_file: None,
                self.view_state: {"job": job_id, "index": None}}

    def show_item(self, job_id: str, item: dict[str, Any]) -> dict[Any, Any]:
        path = str(self.runtime.files.result_path(job_id, model_file(item)["name"]))  # type: ignore[index]
        preview = preview_file(item)
        cutout = shows_cutout(item)
        seen = (gr.update(value=str(self.runtime.files.result_path(job_id, preview["name"])), visible=True,
                          label=SEEN_LABEL if cutout else "Preview")
                if preview else gr.update(value=None, visible=False))
        return {self.viewer: gr.update(value=path, camera_position=viewer_camera(item)),
                self.stats: stats_text(item) + seen_note(item, cutout), self.seen: seen,
                self.glb_btn: gr.update(value=path, interactive=True),
                self.view_state: {"job": job_id, "index": item["index"]}}

    # --- results ------------------------------------------------------------------------------
    def show_result(self, job_id: str, chosen: gr.SelectData, request: gr.Request) -> dict[Any, Any]:
        """The model clicked in the gallery, found by its file name (the caption): positions
        move when an earlier photo finishes after a later one."""
        caption = (chosen.value or {}).get("caption") if isinstance(chosen.value, dict) else None
        try:
            status = self.service.status(self.service.get(job_id, OPEN_OWNER))
            item = next(i for i in finished_items(status) if model_file(i)["name"] == caption)  # type: ignore[index]
            session = session_of(request)
            if session in self.latest:  # the running watcher keeps the highlight on it
                self.clicked[session] = item["index"]
            return self.show_item(job_id, item)
        except StopIteration:
            return {self.notice: note("That model is not ready yet.")}
        except Exception as exc:  # noqa: BLE001
            return {self.notice: note(friendly(exc))}

    def cancel(self, job_id: str) -> dict[str, Any]:
        if not job_id:
            return note("There is no job to cancel.")
        try:
            status = self.service.status(self.service.cancel(job_id, OPEN_OWNER))
        except Exception as exc:  # noqa: BLE001
            return note(friendly(exc))
        if status["finished"]:
            return note("The job had already finished; its results are kept.", "info")
        return note("Cancelling: images that are waiting will not start, running ones stop.", "info")

    def export(self, job_id: str, viewing: dict[str, Any] | None, chosen_fmt: str) -> dict[Any, Any]:
        """The shown model in another format, made now (and kept for the next download)."""
        index = viewing.get("index") if isinstance(viewing, dict) and viewing.get("job") == job_id else None
        try:
            if index is None:
                raise AppError("file_not_found", "Pick a finished model first.", 404)
            path = export_model(self.service, self.runtime.files, job_id, int(index), chosen_fmt)
        except Exception as exc:  # noqa: BLE001
            return {self.export_file: None, self.notice: note(friendly(exc))}
        return {self.export_file: str(path), self.notice: note("")}

    def export_all(self, job_id: str) -> dict[Any, Any]:
        try:
            path = export_zip(self.service, self.runtime.files, job_id)
        except Exception as exc:  # noqa: BLE001
            return {self.export_file: None, self.notice: note(friendly(exc))}
        return {self.export_file: str(path), self.notice: note("")}
