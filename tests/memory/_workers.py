"""Subprocess workers for the reliability tests: run as `python -m tests.memory._workers CMD ...`.

They must be separate processes: the point is what happens to the database when a process dies or when
two processes race, which threads in one process cannot show.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from strop.memory import Store
from strop.memory.records import EpisodeRecord, TrainingJobRecord


def claim_until_empty(url: str, out: str, batch: int, go: str | None = None) -> None:
    """Consume SFT examples job by job until none are left; write the ids this process got.

    With `go`, it says it is ready (`out + ".ready"`) and starts only once that file exists, so two workers
    really race: on a loaded machine one process's imports can take longer than the other's whole run.
    """
    store = Store(url)
    if go is not None:
        Path(out + ".ready").touch()
        deadline = time.monotonic() + 60
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"no start signal at {go} within 60 s")
            time.sleep(0.01)
    got: list[str] = []
    while True:
        job = store.start_job(TrainingJobRecord(algorithm="sft", model_in="m0"))
        claimed = store.claim_examples(job.id, role="policy", kind="sft", limit=batch)
        if not claimed:
            store.fail_job(job.id, "nothing to train on")
            break
        got.extend(x.id for x in claimed)
        # "Training": long enough that the other worker, backing off in SQLite's busy handler (sleeps of up to
        # 100 ms), gets the write lock between our claims instead of finding the table empty.
        time.sleep(0.02)
        store.finish_job(job.id)
    Path(out).write_text(json.dumps(got))
    store.close()


def write_and_hang(url: str, episode_file: str, ready_file: str) -> None:
    """Start writing an episode and stop dead inside its transaction, after every row was inserted and
    before the commit (the latest, most dangerous moment), so the parent can SIGKILL a writer that is
    provably mid-episode."""
    store = Store(url)
    episode = EpisodeRecord.model_validate_json(Path(episode_file).read_text())
    insert = store.episodes.insert_rows

    def insert_then_hang(conn: Any, episodes: Any) -> Any:
        result = insert(conn, episodes)
        Path(ready_file).write_text("rows inserted, transaction open")
        time.sleep(120)
        return result

    store.episodes.insert_rows = insert_then_hang  # type: ignore[method-assign]
    store.write_episode(episode)
    raise SystemExit("the hang hook never fired: the test no longer kills the writer mid-episode")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "claim":
        claim_until_empty(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else None)
    elif command == "hang":
        write_and_hang(*args)
    else:
        raise SystemExit(f"unknown worker command {command!r}")
