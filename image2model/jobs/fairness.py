"""Fair turns in the work queue: every person gets one photo a round, and each person's jobs
take turns within it (issue 15).

huey runs the task with the lowest turn first (its priority is minus the turn,
worker/queue.py), first come first served within a turn. Turns count rounds from now: "now"
is the lowest turn still waiting, so a new job's first photo ties with the next one to run.

- A share is one API key, or one visitor's address (the page, the Gradio API, MCP, REST
  without keys). A share's waiting photos take consecutive turns, one a round, in
  round-robin order over its jobs: Ann with three jobs queued gets one photo a round, as Bo
  with one does, and her three jobs alternate within her turns.
- So a share's new job moves the turns of its share's photos still waiting (never anyone
  else's). huey cannot re-score a queued task, so a moved photo gets a second task with its
  new turn, and the task holding the old turn is dropped when it comes up (the runner compares
  the turn it carries with the stored one). A cancel closes up the share's turns the same way.
- Jobs stored at once by one share (the REST upload answers before it queues) are planned
  together; a job's own tasks are queued by its upload, with the turns stored by then.
- A job with no share (made by a script calling JobService) counts as its own.

The share is stored as a fingerprint, so job records hold no address or key.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence

from image2model.jobs.model import Item

Enqueue = Callable[[str, int, "int | None"], None]  # (job id, item index, its turn; None: its index)
EnqueueMany = Callable[[Sequence[tuple[str, int, "int | None"]]], None]  # many of those at once
Waiting = list[tuple[str, str, Item]]  # (job id, its share, item) of every waiting item


def share_of(identity: str) -> str:
    """A short, stable, non-reversible name for whoever queues the job ("" stays "")."""
    if not identity:
        return ""
    return "s-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def turn_of(item: Item) -> int:
    return item.index if item.turn is None else item.turn


def plan_turns(waiting: Waiting, share: str, count: int) -> tuple[list[int], dict[str, dict[int, int]]]:
    """The turns of a new job's `count` items, and the new turns of its share's waiting items
    that move ({job id: {index: turn}})."""
    now = min((turn_of(item) for _, _, item in waiting), default=0)
    if not share:
        return [now + index for index in range(count)], {}
    jobs: dict[str, list[Item]] = {}
    for job_id, item_share, item in waiting:
        if item_share == share:
            jobs.setdefault(job_id, []).append(item)
    def first_come(job: tuple[str, list[Item]]) -> tuple[int, float, str]:
        return min(map(turn_of, job[1])), min(item.queued_at for item in job[1]), job[0]

    # per job, oldest first: (job id, item index, its turn now); the new job's have no id yet
    queues: list[list[tuple[str | None, int, int | None]]] = [
        [(job_id, item.index, turn_of(item)) for item in sorted(items, key=lambda i: (turn_of(i), i.index))]
        for job_id, items in sorted(jobs.items(), key=first_come)]
    queues.append([(None, index, None) for index in range(count)])
    order = (entry for round_ in itertools.zip_longest(*queues) for entry in round_ if entry is not None)
    new_turns = [0] * count
    moved: dict[str, dict[int, int]] = {}
    for turn, (job_id, index, current) in enumerate(order, start=now):
        if job_id is None:
            new_turns[index] = turn
        elif current != turn:
            moved.setdefault(job_id, {})[index] = turn
    return new_turns, moved
