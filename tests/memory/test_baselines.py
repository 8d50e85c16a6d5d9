"""RAE baselines in the store on both backends: the EMA update, keys kept apart, idempotent retries,
persistence across a reopened store, and no lost updates under concurrent writers."""

from __future__ import annotations

import threading

import pytest

from strop.memory import Store, StoreError
from strop.memory.records import BaselineUpdate


def _u(
    uid: str,
    reward: float,
    *,
    role: str = "0",
    game: str = "tictactoe",
    ns: str = "run1",
    decay: float = 0.95,
) -> BaselineUpdate:
    return BaselineUpdate(id=uid, namespace=ns, game=game, role=role, reward=reward, decay=decay)


def test_ema_update_math_from_zero(store: Store) -> None:
    assert store.get_baseline("run1", "tictactoe", "0") is None
    [first, second] = store.update_baselines([_u("a", 1.0), _u("b", -1.0)])
    assert (first.before, first.after, first.count) == (0.0, pytest.approx(0.05), 1)
    # Applied in order inside one batch: the second sees the first's result.
    assert second.before == pytest.approx(0.05)
    assert second.after == pytest.approx(0.95 * 0.05 - 0.05) and second.count == 2
    got = store.get_baseline("run1", "tictactoe", "0")
    assert got is not None and got.value == pytest.approx(second.after) and got.count == 2


def test_keys_are_kept_apart(store: Store) -> None:
    store.update_baselines(
        [
            _u("a", 1.0, role="0"),
            _u("b", -1.0, role="1"),
            _u("c", 1.0, game="kuhn_poker"),
            _u("d", 1.0, ns="run2", decay=0.5),
        ]
    )
    values = {(b.namespace, b.game, b.role): b.value for b in store.list_baselines()}
    assert values == {
        ("run1", "tictactoe", "0"): pytest.approx(0.05),
        ("run1", "tictactoe", "1"): pytest.approx(-0.05),
        ("run1", "kuhn_poker", "0"): pytest.approx(0.05),
        ("run2", "tictactoe", "0"): pytest.approx(0.5),
    }
    assert [b.role for b in store.list_baselines("run1", "tictactoe")] == ["0", "1"]


def test_a_retried_update_changes_nothing_and_returns_the_first_result(store: Store) -> None:
    [first] = store.update_baselines([_u("a", 1.0)])
    store.update_baselines([_u("b", 1.0)])
    [again] = store.update_baselines([_u("a", 1.0)])
    assert again.replayed and (again.before, again.after, again.count) == (first.before, first.after, 1)
    assert store.get_baseline("run1", "tictactoe", "0").count == 2  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="must be unique"):
        store.update_baselines([_u("a", 1.0, role="1")])


def test_baselines_persist_across_a_reopened_store(db_url: str) -> None:
    store = Store(db_url)
    store.update_baselines([_u("a", 1.0), _u("b", 1.0)])
    store.close()
    again = Store(db_url)
    [third] = again.update_baselines([_u("c", 1.0)])
    assert third.before == pytest.approx(1 - 0.95**2) and third.after == pytest.approx(1 - 0.95**3)
    assert third.count == 3
    again.close()


def test_concurrent_writers_lose_no_update(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                stores[i].update_baselines(
                    [_u(f"{i}-{j}-0", 1.0, role="0", decay=0.5), _u(f"{i}-{j}-1", -1.0, role="1", decay=0.5)]
                )
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    b0 = stores[0].get_baseline("run1", "tictactoe", "0")
    assert b0 is not None and b0.count == 40 and b0.value == pytest.approx(1 - 0.5**40)
    for s in stores:
        s.close()


async def test_async_twins(store: Store) -> None:
    [r] = await store.aupdate_baselines([_u("a", -1.0)])
    assert r.after == pytest.approx(-0.05)
    assert (await store.aget_baseline("run1", "tictactoe", "0")).count == 1  # type: ignore[union-attr]
    assert len(await store.alist_baselines("run1")) == 1
