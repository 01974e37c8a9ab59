"""The recent-jobs list the browser keeps (gr.BrowserState), and the job id in the page URL.

The list holds only job ids and a title; the job itself is always read from the job service,
so a stale or tampered entry can at worst point at a job that no longer exists.
"""

from __future__ import annotations

import time
from typing import Any

from image2model.errors import AppError
from image2model.jobs.model import OPEN_OWNER, Job
from image2model.jobs.service import JobService
from image2model.providers.catalog import catalog
from image2model.storage import JOB_ID

MAX_RECENT = 20

# Runs in the browser once a job is chosen: put ?job=<id> in the address bar, so reloading or
# bookmarking the page comes back to the job; on a narrow screen, where the results sit below
# the form, scroll to them when the job is a new one.
SET_URL_JS = """
(jobId) => {
  if (!jobId) { return; }
  const url = new URL(window.location.href);
  url.searchParams.set("job", jobId);
  window.history.replaceState(window.history.state, "", url);
  if (window.i2mShownJob !== jobId) {
    // a new job: bring its progress into view if it is not (on a phone it is below the
    // form; on a laptop with Advanced settings open, Generate sits below the fold)
    // (before its first update the progress box is empty and has no size: use the table)
    const target = ["progress", "items"].map((id) => document.getElementById(id))
      .find((el) => el && el.getBoundingClientRect().height > 0);
    const box = target && target.getBoundingClientRect();
    if (box && (box.top < 60 || box.top > window.innerHeight - 120)) {
      const progress = document.getElementById("progress");
      (progress && progress.offsetParent ? progress : target).scrollIntoView({ behavior: "smooth", block: "start" });
    }
  }
  window.i2mShownJob = jobId;
}
"""


def job_title(job: Job) -> str:
    spec = catalog().get(job.model)
    label = spec.label if spec else job.model
    count = sum(len(item.inputs) for item in job.items)
    when = time.strftime("%d %b %H:%M", time.localtime(job.created_at))
    first = job.items[0].name if job.items else ""
    more = f" and {count - 1} more" if count > 1 else ""
    return f"{when} · {first}{more} · {label}"


def clean_recent(value: Any) -> list[dict[str, Any]]:
    """The stored list, with anything malformed dropped."""
    if not isinstance(value, list):
        return []
    entries = []
    for entry in value:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and JOB_ID.match(entry["id"]):
            entries.append({"id": entry["id"], "title": str(entry.get("title") or entry["id"])[:200]})
    return entries[:MAX_RECENT]


def remember(recent: Any, job: Job) -> list[dict[str, Any]]:
    """The list with this job first (once)."""
    entries = [e for e in clean_recent(recent) if e["id"] != job.id]
    return [{"id": job.id, "title": job_title(job)}, *entries][:MAX_RECENT]


def still_there(service: JobService, recent: Any) -> list[dict[str, Any]]:
    """Drop jobs that expired or were deleted."""
    kept = []
    for entry in clean_recent(recent):
        try:
            service.get(entry["id"], OPEN_OWNER)
        except AppError:
            continue
        kept.append(entry)
    return kept


def recent_choices(recent: Any) -> list[tuple[str, str]]:
    return [(entry["title"], entry["id"]) for entry in clean_recent(recent)]


def job_from_query(query: dict[str, str]) -> str:
    """The ?job= value when it looks like a job id, else ""."""
    job_id = (query.get("job") or "").strip().lower()
    return job_id if JOB_ID.match(job_id) else ""
