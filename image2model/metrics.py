"""Prometheus metrics of this process (prometheus-client, its default registry).

Counters and histograms count what happens in this process: the web process counts jobs made
and uploads refused; whoever runs an item (the embedded consumer in the web process, or a
`huey_consumer`) counts items, FAL requests and durations. So in Redis mode each huey_consumer
serves its own (WORKER_METRICS_PORT) and Prometheus adds them up; the cluster-wide figures
(queue depth, live workers, spending) come from the shared store, reported by the web process
at scrape time (image2model/web/rest/metrics_route.py).

Labels are bounded: model ids come from the catalog, error codes and states from our own code,
never from a client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client import Counter, Histogram

from image2model.errors import AppError

PREFIX = "image2model_"
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800)

JOBS_CREATED = Counter(PREFIX + "jobs_created", "Jobs created", ["model"])
JOBS_FINISHED = Counter(PREFIX + "jobs_finished", "Jobs finished, by final state", ["model", "state"])
ITEMS_CREATED = Counter(PREFIX + "items_created", "Items (one model each) created", ["model"])
ITEMS_FINISHED = Counter(PREFIX + "items_finished", "Items finished, by final state", ["model", "state"])
ITEMS_FAILED = Counter(PREFIX + "items_failed", "Items failed, by error code", ["model", "code"])
ITEM_RETRIES = Counter(PREFIX + "item_retries", "Retries of an item after a transient failure", ["model", "code"])
UPLOADS_REFUSED = Counter(PREFIX + "uploads_refused", "Job requests refused, by reason (error code)", ["reason"])
FAL_REQUESTS = Counter(PREFIX + "fal_requests", "HTTP requests to FAL, by method and status class",
                       ["method", "status_class"])
FAL_RESUMES = Counter(PREFIX + "fal_resumes", "FAL requests picked up again after a worker stopped")
FAL_RECONCILIATIONS = Counter(PREFIX + "fal_reconciliations",
                              "Lost submit answers looked up in FAL's history, by outcome", ["outcome"])

QUEUE_WAIT = Histogram(PREFIX + "queue_wait_seconds", "From queued to taken by a worker", ["model"],
                       buckets=DURATION_BUCKETS)
FAL_RUN = Histogram(PREFIX + "fal_run_seconds", "How long FAL took to run a request", ["model"],
                    buckets=DURATION_BUCKETS)
DOWNLOAD = Histogram(PREFIX + "download_seconds", "Downloading a model or preview from FAL",
                     buckets=DURATION_BUCKETS)
OFFLINE_BUILD = Histogram(PREFIX + "offline_build_seconds", "Building a model with the offline model",
                          buckets=DURATION_BUCKETS)
JOB_DURATION = Histogram(PREFIX + "job_seconds", "From a job's creation to its last item's end",
                         ["model", "state"], buckets=DURATION_BUCKETS)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def count_fal_response(response: httpx.Response) -> None:
    """An httpx response hook: every answer FAL gives, by method and status class."""
    FAL_REQUESTS.labels(response.request.method, status_class(response.status_code)).inc()


def count_fal_error(method: str) -> None:
    """A request to FAL that got no answer at all (connect error, timeout, dropped)."""
    FAL_REQUESTS.labels(method, "error").inc()


@contextmanager
def refusals_counted() -> Iterator[None]:
    """An AppError raised inside is a refused job request: counted by its code (each refusal
    is counted where it is raised, once: the upload's form, its parameters, the job service)."""
    try:
        yield
    except AppError as exc:
        UPLOADS_REFUSED.labels(exc.code).inc()
        raise


@contextmanager
def timed(histogram: Histogram) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)
