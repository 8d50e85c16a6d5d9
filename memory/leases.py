"""Leases with a heartbeat: at most one holder of a name at a time, across processes and hosts.

Why a lease row rather than a PostgreSQL advisory lock: an advisory lock lives as long as one connection,
does not exist on SQLite, and cannot say *who* holds it. A row does all three, and a holder that is killed
with SIGKILL (no chance to release anything) loses it on its own once it stops renewing: `expires_at` passes
and the next `acquire_lease` takes it over.

Acquisition is one conditional upsert, race-free on both backends: insert the row, or, on conflict, overwrite
it only where it has expired (or is already ours). PostgreSQL's ON CONFLICT DO UPDATE re-checks that condition
on the latest committed row under a row lock; SQLite serialises every write transaction (BEGIN IMMEDIATE).
Times come from the database server on PostgreSQL (hosts' clocks may disagree) and from this host on SQLite
(a SQLite file has one host).

`LeaseKeeper` renews a held lease from a background thread every `ttl / 3` seconds, so a live holder never
expires, and reports a lease taken over by someone else (the holder stalled past its TTL) to a callback.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, or_, select, update

from strop.memory.core import Part
from strop.memory.errors import StoreError
from strop.memory.records import StoredRecord, UTCDateTime, as_utc
from strop.memory.schema import Lease

log = logging.getLogger(__name__)


class LeaseRecord(StoredRecord):
    name: str
    holder: str
    acquired_at: UTCDateTime
    heartbeat_at: UTCDateTime
    expires_at: UTCDateTime
    previous: LeaseRecord | None = None  # on acquisition: the expired lease this one took over


class LeaseHeldError(StoreError):
    """Someone else holds the lease and it has not expired."""

    def __init__(self, lease: LeaseRecord) -> None:
        self.lease = lease
        super().__init__(
            f"lease {lease.name!r} is held by {lease.holder} since {_fmt(lease.acquired_at)} (last heartbeat "
            f"{_fmt(lease.heartbeat_at)}; it expires at {_fmt(lease.expires_at)} unless renewed)"
        )


class LeaseLostError(StoreError):
    """A renewal found the lease gone or held by someone else: this holder must stop."""


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- holders: who holds a lease, and whether that process still runs ------------------------------------------
# Here rather than beside the evolve cycle lease (training/cycle_lease.py re-exports them): the store releases
# a training job whose holder is dead (job_leases.py), and memory imports nothing above it.


@functools.cache
def _machine() -> str:
    """Which kernel and PID namespace this process runs in (boot id, pid namespace inode), hashed: two
    holders with the same host name *and* this mark can see each other's pids. Containers that share a host
    name (host networking) differ here, so a pid missing from our namespace is never read as a dead holder
    of theirs. Empty where /proc does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha1(f"{boot}:{ns}".encode()).hexdigest()[:8]


def new_holder() -> str:
    """host:pid:machine.random, so `strop schedule list`, `strop db stats` and a refused run can say which
    process holds a lease, and a rerun on the same machine can tell that the holder is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{_machine()}.{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True only when `holder` was a process of this machine (same host name, kernel boot and pid namespace)
    that no longer runs: then its lease need not wait for its TTL (a SIGKILLed run is rerun at once).
    Anything uncertain (another host, a reused pid, no /proc) is alive: the TTL decides."""
    host, _, rest = holder.partition(":")
    pid, _, tail = rest.partition(":")
    mark = _machine()
    if not mark or host != socket.gethostname() or not pid.isdigit() or tail.split(".")[0] != mark:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, someone else's
        return False
    try:  # a killed process that its parent has not reaped yet still has a pid: a zombie
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Leases(Part):
    def acquire_lease(self, name: str, holder: str, ttl: float) -> LeaseRecord:
        """Take lease `name` for `ttl` seconds, or renew it if `holder` has it already.

        Raises LeaseHeldError (with the current holder) when someone else holds it and it has not expired.
        The returned record's `previous` is the expired lease this call took over, if any.
        """
        with self.db.write() as conn:
            now = self.db.clock(conn)
            q = select(Lease).where(Lease.name == name)
            before = conn.execute(q if self.db.is_sqlite else q.with_for_update()).one_or_none()
            t = Lease.__table__
            # A holder renewing keeps its acquisition time; a takeover starts a new one. `before` is exact:
            # the row is locked (PostgreSQL) or every writer is serialised (SQLite).
            mine = before is not None and before.holder == holder
            stmt = self.db.insert(t).values(
                name=name,
                holder=holder,
                acquired_at=before.acquired_at if mine else now,
                heartbeat_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={c: stmt.excluded[c] for c in ("holder", "acquired_at", "heartbeat_at", "expires_at")},
                where=or_(t.c.expires_at < now, t.c.holder == holder),
            )
            got = conn.execute(stmt.returning(t.c.holder)).one_or_none()
            row = conn.execute(select(Lease).where(Lease.name == name)).one()
        if got is None:
            raise LeaseHeldError(LeaseRecord.model_validate(row))
        previous = (
            LeaseRecord.model_validate(before) if before is not None and before.holder != holder else None
        )
        return LeaseRecord.model_validate(row).model_copy(update={"previous": previous})

    def acquire_or_take_over(self, name: str, holder: str, ttl: float) -> LeaseRecord:
        """`acquire_lease`, taking the lease at once from a holder that is a dead process of this machine (so
        "kill it and run it again" needs no TTL wait); LeaseHeldError while a live or unknown holder has it."""
        try:
            return self.acquire_lease(name, holder, ttl)
        except LeaseHeldError as e:
            if not holder_is_dead(e.lease.holder):
                raise
            return self.take_over_lease(name, e.lease.holder, holder, ttl)

    def take_over_lease(self, name: str, from_holder: str, holder: str, ttl: float) -> LeaseRecord:
        """Take the lease from `from_holder` before it expires: for a caller that knows that holder is dead
        (a process of this host that no longer exists). Refused with LeaseHeldError if the lease changed
        hands meanwhile; a lease that is gone is simply acquired."""
        with self.db.write() as conn:
            now = self.db.clock(conn)
            q = select(Lease).where(Lease.name == name)
            before = conn.execute(q if self.db.is_sqlite else q.with_for_update()).one_or_none()
            if before is not None and before.holder == from_holder:
                conn.execute(
                    update(Lease)
                    .where(Lease.name == name, Lease.holder == from_holder)
                    .values(
                        holder=holder,
                        acquired_at=now,
                        heartbeat_at=now,
                        expires_at=now + timedelta(seconds=ttl),
                    )
                )
                lease = LeaseRecord.model_validate(conn.execute(q).one())
                return lease.model_copy(update={"previous": LeaseRecord.model_validate(before)})
        if before is None:
            return self.acquire_lease(name, holder, ttl)
        raise LeaseHeldError(LeaseRecord.model_validate(before))

    def renew_lease(self, name: str, holder: str, ttl: float) -> LeaseRecord:
        """Push the expiry `ttl` seconds ahead. An expired lease that nobody took over is still its holder's;
        one that was taken over (or released) raises LeaseLostError."""
        with self.db.write() as conn:
            now = self.db.clock(conn)
            done = conn.execute(
                update(Lease)
                .where(Lease.name == name, Lease.holder == holder)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl))
            ).rowcount
            row = conn.execute(select(Lease).where(Lease.name == name)).one_or_none()
        if not done:
            who = (
                f"taken over by {row.holder} at {_fmt(as_utc(row.acquired_at))}"
                if row is not None
                else "released"
            )
            raise LeaseLostError(f"lease {name!r} of {holder} was {who}")
        return LeaseRecord.model_validate(row)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up; False when `holder` no longer had it (expired and taken over)."""
        with self.db.write() as conn:
            return bool(
                conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder)).rowcount
            )

    def get_lease(self, name: str) -> LeaseRecord | None:
        """The lease row, expired or not (compare `expires_at` with the time to tell)."""
        with self.db.read() as conn:
            row = conn.execute(select(Lease).where(Lease.name == name)).one_or_none()
        return None if row is None else LeaseRecord.model_validate(row)

    def list_leases(self) -> list[LeaseRecord]:
        with self.db.read() as conn:
            return [LeaseRecord.model_validate(r) for r in conn.execute(select(Lease).order_by(Lease.name))]


class LeaseKeeper:
    """Holds a lease and renews it every `ttl / 3` seconds from a daemon thread until `release()`.

    A renewal that fails for a passing reason (the database briefly unreachable or locked) is retried at the
    next beat; a lease taken over by someone else calls `on_lost` once and stops the thread: the work it
    guarded must stop too, because another holder is running it now.
    """

    def __init__(
        self, store: Leases, lease: LeaseRecord, ttl: float, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.store, self.lease, self.ttl, self.on_lost = store, lease, ttl, on_lost
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{lease.name}", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.lease.name

    @property
    def holder(self) -> str:
        return self.lease.holder

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.lease = self.store.renew_lease(self.name, self.holder, self.ttl)
            except LeaseLostError as e:
                self.lost = str(e)
                log.error("%s", e)
                if self.on_lost is not None:
                    self.on_lost(self.lost)
                return
            except Exception as e:  # a passing failure: the lease has TTL left, try again at the next beat
                log.warning("lease %r: heartbeat failed, retrying: %s", self.name, e)

    def release(self) -> bool:
        """Stop renewing and delete the lease (False if it had been taken over meanwhile)."""
        self._stop.set()
        self._thread.join()
        if self.lost is not None:
            return False
        return self.store.release_lease(self.name, self.holder)

    def stop(self) -> None:
        """Stop renewing without releasing (as a killed holder would): the lease expires after its TTL."""
        self._stop.set()
        self._thread.join()
