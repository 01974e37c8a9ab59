"""A real uvicorn server running the real app in a background thread, on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import uvicorn

from image2model.runtime import Runtime


class LiveServer:
    def __init__(self, runtime: Runtime, port: int):
        from app import create_app

        self.runtime = runtime
        self.port = port
        self.app = create_app(runtime)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", proxy_headers=False,
                                access_log=False,  # as app.py: ACCESS_LOG decides (image2model/web/access_log.py)
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn:{port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
