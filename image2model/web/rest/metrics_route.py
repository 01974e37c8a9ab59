"""GET /metrics: this process's counters (image2model/metrics.py), plus the cluster's gauges.

The gauges are read from the shared job store at scrape time (image2model/ops.py), so they are
the whole deployment's however many machines run workers: queue depth and the oldest wait,
running items, live worker processes, and the spending guard's use against its limit. Open
progress streams are this web process's. A fresh registry per scrape keeps them out of the
process-wide registry (tests build many apps in one process).
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest
from starlette.concurrency import run_in_threadpool

from image2model.errors import AppError
from image2model.metrics import PREFIX
from image2model.ops import queue_view
from image2model.runtime import Runtime
from image2model.web.security import unauthorized
from image2model.web.rest.sse import Watchers


def cluster_gauges(runtime: Runtime, watchers: Watchers) -> bytes:
    queue = queue_view(runtime.store, runtime.settings)
    registry = CollectorRegistry()

    def gauge(name: str, text: str, value: float) -> None:
        Gauge(PREFIX + name, text, registry=registry).set(value)

    gauge("queue_depth", "Items waiting for a worker (all machines)", queue.depth)
    gauge("queue_oldest_wait_seconds", "How long the longest-waiting item has waited", queue.oldest_wait_seconds)
    gauge("items_running", "Items being made right now (all machines)", queue.running)
    gauge("workers_alive", "Worker processes that said they are alive within WORKER_TTL_SECONDS", len(queue.workers))
    gauge("worker_threads", "Worker threads of the live worker processes",
          sum(w.threads or 0 for w in queue.workers))
    gauge("spending_images_hour", "Paid FAL images accepted in the last hour (the spending guard)",
          queue.fal_images_this_hour)
    gauge("spending_images_limit", "The spending guard's limit per hour (FAL_IMAGES_PER_HOUR; 0 = off)",
          queue.fal_images_limit)
    gauge("open_streams", "Progress streams (REST SSE) open on this web process", watchers.open_streams)
    return generate_latest(registry)


def add_metrics_route(app: FastAPI, runtime: Runtime, watchers: Watchers) -> None:
    token = runtime.settings.metrics_token.strip()

    async def metrics(request: Request) -> Response:
        if not token:
            raise AppError("not_found", "Metrics are off: set METRICS_TOKEN to turn /metrics on.", 404)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise unauthorized("invalid_metrics_token", "Send 'Authorization: Bearer <METRICS_TOKEN>'.")
        body = generate_latest(REGISTRY) + await run_in_threadpool(cluster_gauges, runtime, watchers)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
