"""Fair turns in the work queue: every job, and every person, gets a share (issue 15).

huey runs the task with the lowest turn first (its priority is minus the turn,
worker/queue.py), first come first served within a turn. A job's photo number i gets turn
i x (1 + the jobs of the same share still waiting). So:

- jobs take turns photo by photo: everyone's first photo, then everyone's second...;
- a share is one API key, or one visitor's address (the page, the Gradio API, MCP, REST
  without keys). Someone who queues ten jobs at once does not get ten turns a round: their
  later jobs' photos are spread out, to about 1 + 1/2 + ... + 1/10 (2.9) turns a round.
  Turns are fixed when a job is queued, so the turns of jobs already waiting do not shrink,
  which exact round-robin by share would need;
- a job with no share (made by a script calling JobService) counts as its own.

The share is stored as a fingerprint, so job records hold no address or key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from image2model.jobs.store import JobStore

Enqueue = Callable[[str, int, "int | None"], None]  # (job id, item index, its turn; None: its index)


def share_of(identity: str) -> str:
    """A short, stable, non-reversible name for whoever queues the job ("" stays "")."""
    if not identity:
        return ""
    return "s-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def turns_for(store: JobStore, share: str, count: int) -> list[int]:
    """The turns of a new job's `count` items, spread by the share's jobs already waiting."""
    waiting = store.queued_jobs_in_share(share) if share else 0
    return [index * (1 + waiting) for index in range(count)]
