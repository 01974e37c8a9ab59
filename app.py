"""image2model: `python app.py` serves the page at / and the REST API at /api/v1 on port 7860.

One FastAPI app: our routes first, then the Gradio Blocks mounted at "/" (routes added after
the mount would be shadowed by it). The embedded huey consumer runs inside this process
unless REDIS_URL points the work at separate `huey_consumer` machines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Gradio and gradio_client send usage telemetry to huggingface.co unless told not to: this app
# talks to no one but FAL (and an operator can still set GRADIO_ANALYTICS_ENABLED=True).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402 - after the telemetry setting, which it reads
import uvicorn
from fastapi import FastAPI

from image2model.config import get_settings
from image2model.logs import setup_logging
from image2model.memory import freeze_startup_objects, limit_malloc_arenas
from image2model.runtime import Runtime, get_runtime
from image2model.web.access_log import AccessLog
from image2model.web.admin import ADMIN_PATH, mount_admin
from image2model.web.rest.api import build_api
from image2model.web.mcp_tools import LoopbackToSelf, repair_mcp_server
from image2model.web.page.blocks import UI_CSS, UI_HEAD, UI_THEME, build_ui, upload_ceiling

log = logging.getLogger("image2model.app")


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or get_runtime()
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.run_embedded_worker:
            runtime.start_consumer()
        log.info("image2model ready: data_dir=%s queue=%s fal=%s mcp=%s admin=%s", settings.data_dir,
                 "redis" if settings.use_redis else "sqlite", "configured" if settings.fal_configured else "off",
                 "/gradio_api/mcp/" if settings.mcp_enabled else "off", ADMIN_PATH if settings.admin_key else "off")
        try:
            yield
        finally:
            runtime.stop_consumer()  # drain in-flight items; results are written atomically

    app = FastAPI(title="image2model", version="1.0", lifespan=lifespan,
                  description="Turn photos into 3D models.")
    build_api(app, runtime)
    if settings.admin_key:  # before the page at "/", which would answer every path under it
        admin = mount_admin(app, runtime, app.state.rest_api.security)
        quiet_gradio_queue(admin)
        check_file_paths(admin)
    blocks = build_ui(runtime, app.state.rest_api.security)
    quiet_gradio_queue(blocks)
    gr.mount_gradio_app(
        app, blocks, path="/",
        allowed_paths=[str(runtime.files.root)],
        max_file_size=upload_ceiling(settings.max_image_mb),
        theme=UI_THEME, css=UI_CSS, head=UI_HEAD,
        footer_links=["api"],
        show_error=True,
        mcp_server=settings.mcp_enabled,  # tools for AI agents at /gradio_api/mcp/
    )
    check_file_paths(blocks)
    if settings.mcp_enabled:
        repair_mcp_server(blocks, settings.max_images)
        app.add_middleware(LoopbackToSelf, blocks=blocks)
    if settings.access_log != "off":  # added last, so it is the outermost layer and sees every answer
        app.add_middleware(AccessLog, errors_only=settings.access_log == "errors")
    return app


def check_file_paths(blocks: gr.Blocks) -> None:
    """Gradio 6.31 checks the file paths a client names (only files uploaded to it may be
    inputs; gradio/processing_utils.py _check_allowed) only once `has_launched` is set, which
    launch() does and mount_gradio_app does not. Unset, a caller could name any picture on
    this server, in the working or temp directory or our data directory, and get it back as a
    model's texture. tests/test_ui_api.py fails if this stops working."""
    blocks.has_launched = True


GRADIO_IDLE_SLEEP = 0.01


def quiet_gradio_queue(blocks: gr.Blocks) -> None:
    """Gradio 6.31's queue loop sleeps 1 ms between checks when it has nothing to do
    (gradio/queueing.py:149): a thousand wake-ups a second, most of an idle app's CPU. Ten
    milliseconds keeps events starting promptly and the idle process near zero."""
    queue = getattr(blocks, "_queue", None)
    if queue is not None and getattr(queue, "sleep_when_free", 0) < GRADIO_IDLE_SLEEP:
        queue.sleep_when_free = GRADIO_IDLE_SLEEP


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format)
    limit_malloc_arenas()
    app = create_app()
    freeze_startup_objects()
    uvicorn.run(app, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), port=settings.port,
                log_config=None, access_log=False,  # ACCESS_LOG: image2model/web/access_log.py
                timeout_graceful_shutdown=30,
                proxy_headers=False)  # TRUSTED_PROXIES alone decides whom to believe


if __name__ == "__main__":
    main()
