"""Running baselines in the store: SPIRAL's role-conditioned advantage estimation (RAE) needs one
exponential moving average of returns per (game, role), b <- decay * b + (1 - decay) * R.

They live in the database rather than in a process because collection is resumable and distributed: a run
killed mid-cycle, the next cycle, or another worker on the same PostgreSQL must continue the same averages,
not restart them at zero. Two things make that safe:
- each update is one transaction that locks its baseline row (PostgreSQL `FOR UPDATE`; SQLite's writer lock
  serialises every write anyway), so concurrent episodes never lose an update;
- each update carries an id and is logged under it (`baseline_updates`), so a retried update (an episode
  whose last node ran again after a kill) changes nothing and returns exactly what it returned the first
  time, in particular the baseline *before* it, which is what the episode's advantages subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from strop.memory.core import Part, threaded
from strop.memory.errors import StoreError
from strop.memory.records import BaselineRecord, BaselineUpdate, BaselineUpdateResult, utcnow
from strop.memory.schema import Baseline, BaselineUpdateLog


class Baselines(Part):
    def update_baselines(self, updates: Sequence[BaselineUpdate]) -> list[BaselineUpdateResult]:
        """Fold each return into its baseline, in order, in one transaction; one result per update.

        A baseline that does not exist yet starts at 0 (the expected return of a zero-sum game between equals).
        An update whose id was applied before is not applied again: its result is the stored one, with
        `replayed=True`. Rows are locked in a fixed order, so two concurrent batches cannot deadlock.
        """
        updates = list(updates)  # read twice below: an iterator must not run dry
        if not updates:
            return []
        with self.db.write() as conn:
            now = utcnow()
            keys = sorted({(u.namespace, u.game, u.role) for u in updates})
            for key in keys:  # create missing rows, then lock them all, always in the same order
                ns, game, role = key
                conn.execute(
                    self.db.insert(Baseline.__table__)
                    .values(
                        namespace=ns,
                        game=game,
                        role=role,
                        value=0.0,
                        count=0,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["namespace", "game", "role"])
                )
            state: dict[tuple[str, str, str], tuple[float, int]] = {}
            for key in keys:
                q = select(Baseline.value, Baseline.count).where(*_key(*key))
                if not self.db.is_sqlite:
                    q = q.with_for_update()
                value, count = conn.execute(q).one()
                state[key] = (float(value), int(count))
            out = [self._apply(conn, u, state, now) for u in updates]
            for key, (value, count) in state.items():
                conn.execute(
                    update(Baseline).where(*_key(*key)).values(value=value, count=count, updated_at=now)
                )
        return out

    def _apply(
        self,
        conn: Connection,
        u: BaselineUpdate,
        state: dict[tuple[str, str, str], tuple[float, int]],
        now: Any,
    ) -> BaselineUpdateResult:
        done = conn.execute(select(BaselineUpdateLog).where(BaselineUpdateLog.id == u.id)).one_or_none()
        if done is not None:
            if (done.namespace, done.game, done.role) != (u.namespace, u.game, u.role):
                raise StoreError(
                    f"baseline update id {u.id!r} was used for ({done.namespace}, {done.game}, {done.role}) and now "
                    f"for ({u.namespace}, {u.game}, {u.role}); update ids must be unique per update"
                )
            return BaselineUpdateResult(
                id=u.id,
                namespace=u.namespace,
                game=u.game,
                role=u.role,
                reward=done.reward,
                before=done.value_before,
                after=done.value_after,
                count=done.count,
                replayed=True,
            )
        key = (u.namespace, u.game, u.role)
        before, count = state[key]
        after = u.decay * before + (1.0 - u.decay) * u.reward
        state[key] = (after, count + 1)
        conn.execute(
            BaselineUpdateLog.__table__.insert().values(
                id=u.id,
                namespace=u.namespace,
                game=u.game,
                role=u.role,
                reward=u.reward,
                decay=u.decay,
                value_before=before,
                value_after=after,
                count=count + 1,
                created_at=now,
            )
        )
        return BaselineUpdateResult(
            id=u.id,
            namespace=u.namespace,
            game=u.game,
            role=u.role,
            reward=u.reward,
            before=before,
            after=after,
            count=count + 1,
        )

    def get_baseline(self, namespace: str, game: str, role: str) -> BaselineRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(Baseline).where(*_key(namespace, game, role))).one_or_none()
        return None if row is None else BaselineRecord.model_validate(row)

    def list_baselines(self, namespace: str | None = None, game: str | None = None) -> list[BaselineRecord]:
        q = select(Baseline).order_by(Baseline.namespace, Baseline.game, Baseline.role)
        if namespace is not None:
            q = q.where(Baseline.namespace == namespace)
        if game is not None:
            q = q.where(Baseline.game == game)
        with self.db.read() as conn:
            return [BaselineRecord.model_validate(r) for r in conn.execute(q)]

    aupdate_baselines = threaded(update_baselines)
    aget_baseline = threaded(get_baseline)
    alist_baselines = threaded(list_baselines)


def _key(namespace: str, game: str, role: str) -> tuple[Any, ...]:
    return (Baseline.namespace == namespace, Baseline.game == game, Baseline.role == role)
