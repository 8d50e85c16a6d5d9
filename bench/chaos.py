"""Chaos test: SIGKILL `strop evolve`, `strop worker` and `strop train` at random moments, drop strop's
PostgreSQL connections, and check that the store ends as an uninterrupted run of the same work leaves it.

    .venv/bin/python bench/chaos.py --seed 0 --kills 20 --pg-drops 2      # `make chaos`
    .venv/bin/python bench/chaos.py --seed 1 --kills 6 --pg-drops 1 --keep

The work, run twice on PostgreSQL, each time in a fresh schema of its own:
- `strop evolve` on bench/chaos-recipe.toml: two best-of-N stages on the tiny model, cycles of collect, SFT,
  evaluate, decide; its collection goes through the store's queue (`[scale] external = true`), served by
- two `strop worker --wait` processes, and, on the same store at the same time,
- hand-run `strop train sft --role critic` jobs, one after another until their pool of examples is used up
  (a pool of critic SFT examples written at the start, so these jobs never compete with the stages for the
  policy's examples: what each stage trains on is then the same as in the reference).

The reference runs all of it once, untouched. The chaos run runs it again while a seeded RNG picks moments
(points of the work's progress, then a delay) to SIGKILL one of those processes and, `--pg-drops` times, terminates every PostgreSQL connection strop holds
on the chaos schema (`pg_terminate_backend` on the connections carrying the application_name the harness put
in that store's URL; strop sets none of its own). A killed evolve is rerun, a killed worker restarted, a
killed train rerun with the same command (it continues its job, or, if another process's claim settled the
job as abandoned first, starts the next attempt). A kill waits up to 20 s for its target to be in the middle
of something (a worker holding episodes, a train holding examples); evolve is killed wherever it is.

Then each store is checked on its own (SQL through SQLAlchemy, and the Store's public API): every example
consumed exactly once, by its consumer (<role>:<kind>), through a succeeded job whose count matches; none
still claimed; each cycle's stage trained on exactly what its collection emitted; one candidate per cycle and
stage, promoted or rejected, from one succeeded job; no training job, run, queue item or lease left behind;
each collection with one episode per task, no episode id twice. And the chaos store against the reference
(differences, target none): the same collection runs with the same episode ids (run ids are a function of
the recipe, cycle and stage; episode ids of run and task), a decided candidate for the same cycles and
stages, the same number of hand-run jobs having consumed the same examples. What follows from a
candidate's weights is reported, not counted: a job trains on its examples in the order the workers wrote
them, which differs between any two runs, killed or not (`--kills 0 --pg-drops 0` shows it), so held-out
scores, decisions and, after a decision differs, the next collections' examples can differ. Token-level
equality is not compared.

The exit status is 0 when both stores are consistent and the chaos store matches the reference, 1 when
they differ, 2 when the run could not be completed as asked (fewer kills landed than --kills: the work ended
first), 3 on a harness error (PostgreSQL unreachable, a process that keeps failing, a time-out).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "bench" / "chaos-recipe.toml"
PG_ADMIN = os.environ.get("STROP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
HAND_POOL = 80  # critic SFT examples for the hand-run trains
HAND_PER_JOB = 8  # each hand-run job claims this many (max_examples): HAND_POOL / HAND_PER_JOB jobs
HAND_RUN = "chaos-hand-pool"
WORKERS = 2
WORKER_CONCURRENCY = 6
WORKER_LEASE_TTL = 10.0  # seconds a killed worker's episodes wait before the other worker re-runs them
MAX_UNPLANNED = 8  # exits nobody asked for, per kind, before the harness gives up
KINDS = ("evolve", "worker", "train")
MAX_DELAY_S = 6.0  # an event fires up to this long after the work reached its point
BUSY_WAIT_S = 20.0  # how long a kill waits for its target to be in the middle of something
HUNG_S = 30.0  # a process alive this long after printing a traceback is hung
ERROR_LINE = re.compile(r"^([A-Za-z_.]*(Error|Exception|Group)|nothing to train)\b.*")


class HarnessError(RuntimeError):
    """The run could not go on (not a finding about the store)."""


# ----------------------------------------------------------------------------------------------- database
def store_url(admin: str, schema: str, app: str) -> str:
    """A SQLAlchemy URL on `schema` (search_path) whose connections carry application_name `app`."""
    base = admin.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}&application_name={app}"


def admin_exec(admin: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def drop_connections(admin: str, app: str) -> int:
    """pg_terminate_backend on every connection of this store's processes (not the harness's own)."""
    rows = admin_exec(
        admin,
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND application_name = %s",
        app,
    )
    return sum(1 for _, ok in rows if ok)


def seed_hand_pool(url: str) -> None:
    """The hand-run trains' examples: critic SFT rows (three-digit sums and their answers), one episode each."""
    from strop.agents.loops.base import stable_id
    from strop.memory import Store
    from strop.memory.records import EpisodeRecord, ExampleKind, ExampleRecord, Role, RunRecord
    from strop.sandbox.tasks import Split, load_task_set

    tasks = load_task_set("arithmetic", digits=3).tasks(Split.TRAIN, HAND_POOL)
    with Store(url) as store:
        store.create_run(RunRecord(id=HAND_RUN, loop="chaos_seed"))
        episodes = []
        for t in tasks:
            eid = stable_id(HAND_RUN, t.id)
            payload = {
                "prompt": [{"role": "user", "content": t.prompt}],
                "completion": [{"role": "assistant", "content": t.answer}],
            }
            example = ExampleRecord(
                id=stable_id(eid, "example"), kind=ExampleKind.SFT, role=Role.CRITIC, payload=payload
            )
            episodes.append(
                EpisodeRecord(id=eid, run_id=HAND_RUN, task_id=t.id, loop="chaos_seed", examples=[example])
            )
        store.write_episodes(episodes)
        store.finish_run(HAND_RUN)


# ---------------------------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """One role in the fleet (evolve, worker-1, train...): the process now playing it and its history."""

    kind: str
    name: str
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: int = 0
    killed: bool = False  # the current process was SIGKILLed by the harness
    traceback_at: float | None = None  # when its log first showed a traceback (it should exit soon)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Kill:
    at: float
    kind: str
    name: str
    pid: int
    during: str


@dataclass
class Drop:
    at: float
    connections: int


@dataclass
class Exit:
    """A process that ended without the harness asking: a finding unless it is the work's normal end."""

    at: float
    name: str
    code: int
    tail: str


@dataclass
class Outcome:
    label: str
    wall: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    unplanned: list[Exit] = field(default_factory=list)
    hand_continued: int = 0  # reruns of a killed `strop train` that said they continued its job
    hand_nothing: list[str] = field(default_factory=list)
    kills_short: int = 0
    evolve_done_at: float = 0.0
    hand_done_at: float = 0.0


class Fleet:
    """Runs the work (evolve, workers, the hand-run trains) on one store and keeps every role played:
    a process the harness killed is started again, the next hand-run train follows the last one."""

    def __init__(self, root: Path, url: str, out: Outcome) -> None:
        self.root, self.url, self.out = root, url, out
        self.env = {
            **os.environ,
            "STROP_DB": url,  # in the environment, not on command lines (ps)
            "OMP_NUM_THREADS": "1",  # four processes share the machine's cores
            "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "160",
        }
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / "hand").mkdir(exist_ok=True)
        self.procs = [Proc("evolve", "evolve")]
        self.procs += [Proc("worker", f"worker-{i + 1}") for i in range(WORKERS)]
        self.procs.append(Proc("train", "train"))
        self.evolve_done = False
        self.hand_done = False
        self.hand_slot = 1  # the hand-run job now running: a killed one is rerun with the same command

    def _cmd(self, p: Proc) -> list[str]:
        py = [sys.executable, "-m", "strop"]
        if p.kind == "evolve":
            return [*py, "evolve", "--recipe", str(RECIPE), "--no-progress"]
        if p.kind == "worker":
            return [
                *py,
                "worker",
                "--wait",
                "--lease-ttl",
                str(WORKER_LEASE_TTL),
                "--poll",
                "0.5",
                "--concurrency",  # a stage's episodes in several claims, shared by the two workers
                str(WORKER_CONCURRENCY),
            ]
        name = f"chaos-hand-{self.hand_slot}"
        return [
            *py,
            "train",
            "sft",
            "-m",
            "tiny",
            "--role",
            "critic",
            "--name",
            name,
            "--output-dir",
            str(self.root / "hand" / name),
            "--no-progress",
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--set",
            f"max_examples={HAND_PER_JOB}",
        ]

    def start(self, p: Proc) -> None:
        p.starts += 1
        p.log = self.root / "logs" / f"{p.name}-{p.starts}.log"
        with p.log.open("wb") as log:
            p.popen = subprocess.Popen(
                self._cmd(p), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        p.killed, p.traceback_at = False, None

    def start_all(self) -> None:
        for p in self.procs:
            self.start(p)

    def last_line(self, p: Proc) -> str:
        """The last line of the process's own output (not a traceback's frame)."""
        if p.log is None or not p.log.exists():
            return ""
        lines = [ln.strip() for ln in p.log.read_text(errors="replace").splitlines()]
        text = [ln for ln in lines if ln and ln[0].isalnum() and not ln.startswith("Loading weights")]
        return text[-1] if text else ""

    def error(self, p: Proc) -> str:
        """What a process that failed said: its exception lines (rich boxes stripped), else its last line."""
        if p.log is None or not p.log.exists():
            return ""
        lines = [ln.strip("│ ").strip() for ln in p.log.read_text(errors="replace").splitlines()]
        errors = [ln for ln in lines if ERROR_LINE.match(ln)]
        return "; ".join(dict.fromkeys(errors)) if errors else self.last_line(p)

    def poll(self, t0: float) -> None:
        """Restart what was killed, follow each hand-run train with the next, note any other exit (and a
        process that printed a traceback but has not exited within HUNG_S: killed, restarted, noted)."""
        now = time.monotonic()
        for p in self.procs:
            if p.popen is None:
                continue
            code = p.popen.poll()
            if code is None and p.kind != "worker" and p.log is not None:
                if p.traceback_at is None and "Traceback (most recent call last)" in p.log.read_text(
                    errors="replace"
                ):
                    p.traceback_at = now
                if p.traceback_at is not None and now - p.traceback_at > HUNG_S:
                    p.popen.kill()
                    p.popen.wait()
                    self.out.unplanned.append(
                        Exit(
                            now - t0, f"{p.name}-{p.starts}", -9, f"hung {HUNG_S:g} s after: {self.error(p)}"
                        )
                    )
                    self.start(p)
                continue
            if code is None:
                continue
            if p.killed:
                self.start(p)
                continue
            if p.kind == "evolve" and code == 0:
                p.popen = None
                self.evolve_done, self.out.evolve_done_at = True, now - t0
                continue
            if p.kind == "train" and code == 0:
                if "continuing training job" in (p.log.read_text(errors="replace") if p.log else ""):
                    self.out.hand_continued += 1
                self.hand_slot += 1
                self.start(p)
                continue
            tail = self.error(p)
            if p.kind == "train" and "nothing to train" in tail:
                p.popen = None
                self.hand_done, self.out.hand_done_at = True, now - t0
                left = self._unconsumed_critic()
                if left:  # the pool is not empty: some are held by a job nobody runs any more
                    self.out.hand_nothing.append(
                        f"{p.name}-{p.starts}: nothing to train while {left} critic examples are unconsumed"
                    )
                continue
            self.out.unplanned.append(Exit(now - t0, f"{p.name}-{p.starts}", code, tail))
            if sum(e.name.startswith(p.name) for e in self.out.unplanned) > MAX_UNPLANNED:
                raise HarnessError(f"{p.name} keeps exiting on its own ({code}); last output:\n{tail}")
            self.start(p)

    def _unconsumed_critic(self) -> int:
        from strop.memory import Store

        with Store(harness_url(self.url), create=False) as store:
            return store.count_examples("critic", "sft", unconsumed_by="critic:sft")

    @property
    def finished(self) -> bool:
        return self.evolve_done and self.hand_done

    def stop_workers(self) -> None:
        """SIGTERM: a worker finishes what it runs and exits 0."""
        for p in self.procs:
            if p.alive and p.popen is not None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                self.out.unplanned.append(Exit(0.0, p.name, -9, "did not stop within 60 s of SIGTERM"))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.alive and p.popen is not None:
                p.popen.kill()
                p.popen.wait()


def harness_url(url: str) -> str:
    """The harness's own connections carry another application_name, so a drop spares them."""
    return url.replace("&application_name=", "&application_name=h_", 1)


# ----------------------------------------------------------------------------------------------- the chaos
@dataclass
class Event:
    """A kill (of a kind) or a connection drop, armed once the work has come `at` of the way (its kind's
    progress: the collections' queue for evolve, workers and drops, the hand-run jobs for train), fired
    `delay` seconds later. Tied to progress rather than to the clock, so every event lands while there is
    still work to hit, whatever the machine's speed and load, and at a different phase each time."""

    what: str  # a kind to kill, or "pg-drop"
    at: float
    delay: float
    armed: float | None = None  # when its progress was reached


def schedule(rng: random.Random, kills: int, drops: int) -> list[Event]:
    """`kills` kills spread over the three kinds (evolve and worker get the remainder first) and `drops`
    connection drops, each at a seeded point of its kind's progress and a seeded delay."""
    share, extra = divmod(kills, len(KINDS))
    whats = [k for i, k in enumerate(KINDS) for _ in range(share + (i < extra))] + ["pg-drop"] * drops
    # A drop waits for the first collection to be under way: before it, few processes hold a connection.
    return sorted(
        (
            Event(w, rng.uniform(0.05 if w == "pg-drop" else 0.0, 0.85), rng.uniform(0.0, MAX_DELAY_S))
            for w in whats
        ),
        key=lambda e: (e.at, e.what),
    )


def progress(engine: Any, items: int) -> dict[str, float]:
    """How far the work has come, per event kind: the collections' queue items done of all `items` the
    recipe will enqueue (evolve, workers, drops), the hand-run jobs succeeded of those the pool makes."""
    from sqlalchemy import text

    with engine.connect() as conn:
        done = conn.scalar(text("SELECT count(*) FROM work_items WHERE state = 'done'")) or 0
        hand = conn.scalar(
            text("SELECT count(*) FROM training_jobs WHERE role = 'critic' AND status = 'succeeded'")
        )
    queue = done / items
    return {
        "evolve": queue,
        "worker": queue,
        "pg-drop": queue,
        "train": (hand or 0) / (HAND_POOL // HAND_PER_JOB),
    }


def doing(fleet: Fleet, p: Proc, engine: Any) -> tuple[bool, str]:
    """Whether the process is in the middle of something, and a few words on what."""
    from sqlalchemy import text

    assert p.popen is not None
    if p.kind == "worker":
        with engine.connect() as conn:
            n = conn.scalar(
                text("SELECT count(*) FROM work_items WHERE state = 'claimed' AND owner LIKE :o"),
                {"o": f"{socket.gethostname()}:{p.popen.pid}:%"},
            )
        return bool(n), f"holding {n} episode(s)" if n else "idle"
    if p.kind == "train":
        # Its own job's claims: the job whose lease (train-job:<id>) this process holds.
        with engine.connect() as conn:
            n = conn.scalar(
                text(
                    "SELECT count(*) FROM consumption c JOIN leases l ON l.name = 'train-job:' || c.job_id "
                    "WHERE c.state = 'claimed' AND l.holder LIKE :o"
                ),
                {"o": f"{socket.gethostname()}:{p.popen.pid}:%"},
            )
        return bool(n), f"training on its {n} claimed examples" if n else "starting (no job yet)"
    # evolve: which phase, from the store (a policy job running, a collection queue open), else its output
    with engine.connect() as conn:
        training = conn.scalar(
            text("SELECT count(*) FROM training_jobs WHERE status = 'running' AND role = 'policy'")
        )
        queued = conn.scalar(text("SELECT count(*) FROM work_items WHERE state IN ('todo', 'claimed')"))
    last = fleet.last_line(p)
    if training:
        return True, "training a stage"
    if queued:
        return True, "collecting (waiting for the workers)"
    if not last:
        return True, "starting"
    return True, "evaluating or deciding" if ":" in last else "starting"


def pick_victim(fleet: Fleet, kind: str, engine: Any, waited: float, i: int) -> tuple[Proc | None, str]:
    """Whom a `kind` kill takes: a process of that kind in the middle of something (a worker holding
    episodes, a train holding examples, evolve at any moment); after BUSY_WAIT_S one of that kind doing
    nothing; after twice that, any process still running (the drawn kind has finished its work)."""
    for k in [kind] if waited < 2 * BUSY_WAIT_S else [kind, *KINDS]:
        states = [(p, *doing(fleet, p, engine)) for p in fleet.procs if p.kind == k and p.alive]
        pool = [x for x in states if x[1]] or (states if waited >= BUSY_WAIT_S else [])
        if pool:
            p, _, during = pool[i % len(pool)]  # the two workers by turns
            return p, during
    return None, ""


def recipe_items() -> int:
    """Queue items the recipe enqueues in all: one per training task of each stage and cycle."""
    from strop.training.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    return recipe.cycles * sum(stage.tasks.train_per_cycle for stage in recipe.stages)


def fire(
    ev: Event, fleet: Fleet, engine: Any, admin: str, app: str, out: Outcome, at: float, waited: float
) -> bool:
    """Drop the connections, or SIGKILL a process for a kill; False while a kill waits for its target."""
    if ev.what == "pg-drop":
        n = drop_connections(admin, app)
        out.drops.append(Drop(at, n))
        print(f"[{out.label}] {at:6.1f} s  pg drop: {n} connections terminated", flush=True)
        return True
    victim, during = pick_victim(fleet, ev.what, engine, waited, len(out.kills))
    if victim is None or victim.popen is None:
        return False
    victim.killed = True
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait()
    out.kills.append(Kill(at, victim.kind, victim.name, victim.popen.pid, during))
    print(f"[{out.label}] {at:6.1f} s  SIGKILL {victim.name} (pid {victim.popen.pid}): {during}", flush=True)
    return True


def run_work(
    label: str,
    root: Path,
    url: str,
    admin: str,
    app: str,
    events: list[Event],
    timeout: float,
) -> Outcome:
    """Run the work on one store; fire `events` (none for the reference) while it runs."""
    from sqlalchemy import create_engine

    out = Outcome(label)
    fleet = Fleet(root, url, out)
    engine = create_engine(harness_url(url), pool_pre_ping=True)
    t0 = time.monotonic()
    pending = list(events)
    last_fired = 0.0
    items = recipe_items()
    print(
        f"[{label}] started: evolve, {WORKERS} workers, hand-run trains; logs in {root / 'logs'}", flush=True
    )
    try:
        fleet.start_all()
        while not fleet.finished:
            now = time.monotonic()
            if now - t0 > timeout:
                raise HarnessError(f"{label}: not finished after {timeout:.0f} s; logs in {root / 'logs'}")
            fleet.poll(t0)
            if pending:
                where = progress(engine, items)
                for ev in pending:
                    if ev.armed is None and where[ev.what] >= ev.at:
                        ev.armed = now
                for ev in pending if now - last_fired >= 1.0 else []:
                    late = now - (ev.armed + ev.delay) if ev.armed is not None else -1.0
                    if late >= 0 and fire(ev, fleet, engine, admin, app, out, now - t0, late):
                        pending.remove(ev)
                        last_fired = now
                        break
            time.sleep(0.2)
        out.kills_short = sum(1 for ev in pending if ev.what != "pg-drop")
        fleet.stop_workers()
    except BaseException:
        fleet.kill_all()
        raise
    finally:
        engine.dispose()
    out.wall = time.monotonic() - t0
    print(f"[{label}] done in {out.wall:.0f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ checks
@dataclass
class Facts:
    """What one store holds, as the comparison needs it."""

    problems: list[str]
    collect: dict[str, set[str]]  # "cycle k stage" -> episode ids of its collection run
    runs: set[str]  # every run id (evaluation runs included)
    decisions: dict[str, str]  # "cycle k stage" -> candidate status
    emitted: dict[str, set[str]]  # "cycle k stage" -> example ids its collection emitted
    hand_jobs: int
    hand_examples: set[str]
    hand_abandoned: int  # killed hand-run jobs another process's claim settled (claims back in the pool)


def inspect_store(url: str) -> Facts:
    """Check one store on its own (Facts.problems) and gather what the comparison needs."""
    from sqlalchemy import create_engine, text

    from strop.memory import Store
    from strop.training.evolve import Evolution
    from strop.training.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    problems: list[str] = []
    engine = create_engine(harness_url(url))

    def q(sql: str, **params: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    try:
        for jid, algo, role in q("SELECT id, algorithm, role FROM training_jobs WHERE status = 'running'"):
            problems.append(f"training job {jid} ({algo}, {role}) still running")
        for consumer, n in q(
            "SELECT consumer, count(*) FROM consumption WHERE state = 'claimed' GROUP BY consumer"
        ):
            problems.append(f"{n} example(s) still claimed by {consumer}")
        # Exactly once: the (consumer, example) primary key makes "at most"; here "at least", by the
        # consumer the example's role and kind name, through a job that succeeded.
        for role, kind, n in q(
            "SELECT e.role, e.kind, count(*) FROM examples e WHERE e.split <> 'heldout' AND NOT EXISTS "
            "(SELECT 1 FROM consumption c WHERE c.example_id = e.id AND c.state = 'consumed' "
            "AND c.consumer = e.role || ':' || e.kind) GROUP BY e.role, e.kind"
        ):
            problems.append(f"{n} {role} {kind} example(s) never consumed (lost)")
        for consumer, n in q(
            "SELECT c.consumer, count(*) FROM consumption c JOIN examples e ON e.id = c.example_id "
            "WHERE c.consumer <> e.role || ':' || e.kind GROUP BY c.consumer"
        ):
            problems.append(f"{n} example(s) consumed by {consumer}, not their own role:kind")
        for n, status in q(
            "SELECT count(*), j.status FROM consumption c JOIN training_jobs j ON j.id = c.job_id "
            "WHERE c.state = 'consumed' AND j.status <> 'succeeded' GROUP BY j.status"
        ):
            problems.append(f"{n} example(s) consumed by {status} jobs")
        consumed: dict[str, set[str]] = {}
        for job_id, example_id in q("SELECT job_id, example_id FROM consumption WHERE state = 'consumed'"):
            consumed.setdefault(job_id, set()).add(example_id)
        with Store(harness_url(url), create=False) as store:
            jobs = store.list_jobs()
            for j in jobs:
                if j.status == "succeeded" and j.metrics.get("examples") != len(consumed.get(j.id, ())):
                    problems.append(
                        f"job {j.id} trained on {j.metrics.get('examples')} examples but consumed "
                        f"{len(consumed.get(j.id, ()))}"
                    )
            evo = Evolution(recipe, store, progress=False)
            decisions: dict[str, str] = {}
            collect: dict[str, set[str]] = {}
            emitted: dict[str, set[str]] = {}
            models = {m.id: m for m in store.list_models()}
            for k in range(1, recipe.cycles + 1):
                for s, stage in enumerate(recipe.stages):
                    key = f"cycle {k} {stage.name}"
                    run_id = evo.collect_run_id(k, s)
                    ids = {evo.job_id(k, s, a) for a in range(20)}
                    ok = [j for j in jobs if j.id in ids and j.status == "succeeded"]
                    made = [m for m in models.values() if m.job_id in ids]
                    cand = models.get(evo.candidate_id(k, s))
                    decisions[key] = cand.status if cand is not None else "none"
                    if cand is None or cand.status not in ("promoted", "rejected"):
                        problems.append(f"{key}: candidate {decisions[key]}, not promoted or rejected")
                    if len(ok) != 1 or len(made) != 1:
                        problems.append(
                            f"{key}: {len(ok)} succeeded job(s), {len(made)} model(s); want 1 and 1"
                        )
                    eps = store.list_episodes(run_id, children=False)
                    collect[key] = {e.id for e in eps}
                    want = stage.tasks.train_per_cycle
                    if len(eps) != want or len({e.task_id for e in eps}) != want:
                        problems.append(
                            f"{key}: {len(eps)} episodes on {len({e.task_id for e in eps})} tasks; want {want}"
                        )
                    emitted[key] = {x.id for x in store.list_examples(run_id=run_id)}
                    # Each cycle's stage trains on what its own collection emitted, all of it, once.
                    if ok and consumed.get(ok[0].id, set()) != emitted[key]:
                        got = consumed.get(ok[0].id, set())
                        problems.append(
                            f"{key}: its job consumed {len(got - emitted[key])} example(s) not of its collection "
                            f"and left {len(emitted[key] - got)} of them"
                        )
            hand = [j for j in jobs if j.role == "critic" and j.status == "succeeded"]
            abandoned = [
                j
                for j in jobs
                if j.role == "critic" and j.status == "failed" and (j.error or "").startswith("abandoned")
            ]
            for j in hand:
                if len(consumed.get(j.id, ())) != HAND_PER_JOB:
                    problems.append(f"hand-run job {j.id} consumed {len(consumed.get(j.id, ()))} examples")
        for rid, loop, status in q("SELECT id, loop, status FROM runs WHERE status <> 'finished'"):
            problems.append(f"run {rid} ({loop}) left {status}")
        for rid, state, n in q(
            "SELECT run_id, state, count(*) FROM work_items WHERE state <> 'done' GROUP BY run_id, state"
        ):
            problems.append(f"{n} queue item(s) of run {rid} left {state}")
        for name, holder in q("SELECT name, holder FROM leases"):
            problems.append(f"lease {name} left held by {holder}")
        total, distinct = q("SELECT count(*), count(DISTINCT id) FROM episodes")[0]
        if total != distinct:
            problems.append(f"{total - distinct} episode id(s) stored twice")
        runs = {rid for (rid,) in q("SELECT id FROM runs")}
        hand_examples = {
            eid
            for (eid,) in q(
                "SELECT c.example_id FROM consumption c JOIN examples e ON e.id = c.example_id "
                "WHERE e.role = 'critic' AND c.state = 'consumed'"
            )
        }
    finally:
        engine.dispose()
    return Facts(problems, collect, runs, decisions, emitted, len(hand), hand_examples, len(abandoned))


def compare(ref: Facts, got: Facts) -> tuple[list[str], list[str]]:
    """(differences, notes) between the chaos store and the reference's, beyond each store's own problems.

    Differences: what the recipe and the seeded pool fix whatever the timing: each collection run's episode
    ids, a decided candidate for each cycle and stage, the hand-run jobs and the examples they consumed.
    Notes: what follows from the candidates' weights. A stage's job trains on its examples in the order the
    workers wrote them (claims go oldest first), which differs between any two runs, killed or not; so the
    weights, the held-out scores and the decisions can differ, and from the first differing promotion on, the
    policy that samples the next collections too (their examples, the evaluation runs made)."""
    diffs: list[str] = []
    for key, eids in ref.collect.items():
        mine = got.collect.get(key, set())
        if mine != eids:
            diffs.append(
                f"{key}: collection has {len(eids - mine)} episode(s) missing, {len(mine - eids)} extra"
            )
    if set(got.decisions) != set(ref.decisions):
        diffs.append(f"stages decided: {sorted(got.decisions)}, reference {sorted(ref.decisions)}")
    if got.hand_jobs != ref.hand_jobs:
        diffs.append(f"hand-run trains: {got.hand_jobs} succeeded jobs, reference {ref.hand_jobs}")
    if got.hand_examples != ref.hand_examples:
        diffs.append(
            f"hand-run trains consumed {len(got.hand_examples)} critic examples, reference {len(ref.hand_examples)}"
        )
    notes: list[str] = []
    same = [k for k in ref.emitted if got.emitted.get(k) == ref.emitted[k]]
    if len(same) == len(ref.emitted):
        notes.append("every collection emitted the same examples as the reference's")
    else:
        first = next(k for k in ref.emitted if got.emitted.get(k) != ref.emitted[k])
        notes.append(
            f"collections emitted the same examples as the reference's up to {first} (exclusive); "
            f"{len(ref.emitted) - len(same)} of {len(ref.emitted)} differ from there"
        )
    for key, status in ref.decisions.items():
        if got.decisions.get(key) != status:
            notes.append(f"{key}: candidate {got.decisions.get(key)}, reference {status}")
    if got.runs != ref.runs:
        notes.append(
            f"runs: {len(ref.runs - got.runs)} of the reference's not here, {len(got.runs - ref.runs)} not there "
            "(evaluations of versions that one run promoted and the other did not)"
        )
    return diffs, notes


# ------------------------------------------------------------------------------------------------ report
def report(
    ref: Outcome,
    chaos: Outcome,
    ref_facts: Facts,
    facts: Facts,
    diffs: list[str],
    notes: list[str],
    asked: int,
) -> str:
    lines = ["", "| target | kills | landed while | exits on its own |", "|---|---:|---|---:|"]
    for kind in KINDS:
        mine = [k for k in chaos.kills if k.kind == kind]
        busy = [k.during for k in mine]
        summary = "; ".join(f"{d} ×{busy.count(d)}" if busy.count(d) > 1 else d for d in dict.fromkeys(busy))
        own = sum(1 for e in chaos.unplanned if e.name.startswith(kind))
        lines.append(f"| `strop {kind}` | {len(mine)} | {summary or '-'} | {own} |")
    lines.append(
        f"| PostgreSQL connection drops | {len(chaos.drops)} | "
        f"{', '.join(str(d.connections) for d in chaos.drops) or '-'} connections terminated | - |"
    )
    lines.append("")
    lines.append(
        f"kills: {len(chaos.kills)} of {asked} landed"
        + (f" ({chaos.kills_short} not: the work ended first)" if chaos.kills_short else "")
    )
    for o in (ref, chaos):
        lines.append(
            f"{o.label}: {o.wall:.0f} s (evolve done at {o.evolve_done_at:.0f} s, hand-run trains at "
            f"{o.hand_done_at:.0f} s)"
        )
    lines.append(
        f"hand-run train jobs: reference {ref_facts.hand_jobs}, chaos {facts.hand_jobs} succeeded; of the killed "
        f"ones, {chaos.hand_continued} continued by their rerun, {facts.hand_abandoned} settled as abandoned by "
        "another process's claim (their claims back in the pool)"
    )
    for o in (ref, chaos):
        for e in o.unplanned:
            after = [d for d in o.drops if 0 <= e.at - d.at <= 30]
            lost = re.search(r"OperationalError|connection", e.tail)
            cause = f", {e.at - after[-1].at:.0f} s after a connection drop" if after and lost else ""
            lines.append(
                f"[{o.label}] {e.name} exited on its own (status {e.code}) at {e.at:.0f} s{cause}: {e.tail[:300]}"
            )
        for n in o.hand_nothing:
            lines.append(f"[{o.label}] {n}")
    for label, f in (("reference", ref_facts), ("chaos", facts)):
        for p in f.problems:
            lines.append(f"[{label} store] {p}")
    for d in diffs:
        lines.append(f"[chaos vs reference] {d}")
    for n in notes:
        lines.append(f"[varies with training order, not a difference] {n}")
    n_diff = len(diffs) + len(facts.problems) + len(ref_facts.problems)
    lines.append(f"differences: {n_diff} (target: none)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seeds which process dies when")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs, spread over evolve, workers and train")
    ap.add_argument("--pg-drops", type=int, default=2, help="times strop's connections are terminated")
    ap.add_argument("--db-url", default=PG_ADMIN, help="PostgreSQL to make the two schemas in")
    ap.add_argument("--keep", action="store_true", help="keep both schemas and the run folder")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds each run may take")
    args = ap.parse_args()

    import psycopg

    tag = uuid.uuid4().hex[:8]
    schemas = {"reference": f"strop_chaos_{tag}_ref", "chaos": f"strop_chaos_{tag}_run"}
    try:
        for schema in schemas.values():
            admin_exec(args.db_url, f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as e:
        print(f"PostgreSQL unreachable at {args.db_url}: {str(e).strip()}; start it or pass --db-url")
        return 3
    root = Path(tempfile.mkdtemp(prefix="strop-chaos-"))
    urls = {label: store_url(args.db_url, s, s) for label, s in schemas.items()}
    print(f"chaos test, seed {args.seed}: schemas {', '.join(schemas.values())}; folder {root}", flush=True)
    rc, logs_wanted = 3, True
    try:
        for url in urls.values():
            seed_hand_pool(harness_url(url))
        ref = run_work("reference", root / "reference", urls["reference"], args.db_url, "", [], args.timeout)
        events = schedule(random.Random(args.seed), args.kills, args.pg_drops)
        chaos = run_work(
            "chaos", root / "chaos", urls["chaos"], args.db_url, schemas["chaos"], events, args.timeout
        )
        ref_facts, facts = inspect_store(urls["reference"]), inspect_store(urls["chaos"])
        diffs, notes = compare(ref_facts, facts)
        print(report(ref, chaos, ref_facts, facts, diffs, notes, args.kills), flush=True)
        rc = 1 if diffs or facts.problems or ref_facts.problems else 2 if chaos.kills_short else 0
        logs_wanted = rc != 0 or bool(ref.unplanned or chaos.unplanned)
    except HarnessError as e:
        print(f"chaos test could not finish: {e}")
    finally:
        # What a failure needs to be looked into stays: both schemas, and the processes' logs.
        if args.keep or rc != 0:
            print(f"kept: schemas {', '.join(schemas.values())} in {args.db_url}, folder {root}")
        else:
            for schema in schemas.values():
                admin_exec(args.db_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            if logs_wanted:
                print(f"kept the processes' logs (some exited on their own): {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
