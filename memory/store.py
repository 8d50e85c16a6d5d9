"""The Store: the one object users open, made of public parts that each own the SQL of one concern.

    store = Store()                      # $STROP_DB, else ./strop.db; or Store("postgresql://...")
    store.runs          Runs             runs.py        a loop's executions
    store.episodes      Episodes         episodes.py    episodes with their steps, critiques and examples
    store.examples      Examples         examples.py    training examples; jobs that claim them once
    store.registry      Registry         registry.py    model versions, promotion and rollback
    store.queue         WorkQueue        queue.py       episodes to run, claimed by rollout workers
    store.leases        Leases           leases.py      one holder of a name at a time (cycles, schedulers)
    store.firings       Firings          firings.py     what each schedule fired, and how it ended
    store.baselines     Baselines        baselines.py   running reward baselines (self-play)
    store.reflections   Reflections      reflections.py past failures kept for reflection memory
    store.captures      Captures         captures.py    episodes written while they run (open, append, close)
    store.db            Database         core.py        the engine and read/write transactions

Every method of the first eight parts is also on the Store under its own name (`store.write_episode` is
`store.episodes.write_episode`): the flat names are what loops, jobs and the CLI call, so each part's
methods are exposed once, by `_expose`, rather than delegated by hand. Type checkers see them through the
`_FlatAPI` base, which exists only for them. The reflections part has its own vocabulary (`add`, `count`)
and is reached as `store.reflections` only; so is the captures part (`store.captures.add_examples` is not
the examples part's, and `group` or `list_open` would say little on the Store).

Methods are synchronous; an `a`-prefixed twin (`acreate_run`, `alist_episodes`, ...) runs one in a worker
thread so an event loop never blocks on the database. Each part declares its twins with `threaded`
(core.py), the one mechanism for them; `awrite_episode` alone is hand-written, because episodes awaited at
the same time share a transaction (group commit). Ids are chosen by the caller, so any write can be
retried: a second write of the same id changes nothing and returns False.

Code in `memory/` that needs SQL of its own (embeddings, exports) uses `store.db.read()` / `.write()`.
Nothing outside `memory/` touches the tables (`memory.schema`) or the transactions: add a method to the
part that owns the table instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from strop.memory import db as _db
from strop.memory.baselines import Baselines
from strop.memory.captures import Captures
from strop.memory.core import Database, Part, threaded
from strop.memory.episodes import Episodes
from strop.memory.errors import StoreError
from strop.memory.examples import Examples
from strop.memory.firings import Firings
from strop.memory.leases import Leases
from strop.memory.queue import WorkQueue
from strop.memory.reflections import Reflections
from strop.memory.registry import Registry
from strop.memory.runs import Runs

# The parts whose methods are on the Store under their own names.
FLAT_PARTS: dict[str, type[Part]] = {
    "runs": Runs,
    "episodes": Episodes,
    "examples": Examples,
    "registry": Registry,
    "queue": WorkQueue,
    "leases": Leases,
    "firings": Firings,
    "baselines": Baselines,
}
# Part methods that stay on their part: the Store has its own `close`, and `insert_rows` writes inside
# another part's transaction (the queue's), which is no call for users.
NOT_FLAT = frozenset({"close", "insert_rows"})

if TYPE_CHECKING:

    class _FlatAPI(Runs, Episodes, Examples, Registry, WorkQueue, Leases, Firings, Baselines):
        """The Store's flat names as type checkers and editors see them; `_expose` makes them at run time."""

else:
    _FlatAPI = object


class Store(_FlatAPI):
    """The trajectory store. `Store()` opens $STROP_DB or ./strop.db; `Store("postgresql://...")` a server;
    `Store("runs/x.db")` a SQLite file. A brand-new database is created at the current schema; an older one
    is refused with the `strop db upgrade` command that fixes it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        create: bool = True,
        busy_timeout: float = 30.0,
        group_commit: bool = True,
        pool_size: int | None = None,
    ) -> None:
        """`busy_timeout`: seconds a SQLite writer waits for the lock before StoreLockedError.
        `group_commit`: concurrent `awrite_episode` calls share transactions (see group_commit.py).
        `pool_size`: PostgreSQL connections kept by this process (default SQLAlchemy's 5, plus 10 on demand)."""
        self.db = Database(url, create=create, busy_timeout=busy_timeout, pool_size=pool_size)
        self.runs = Runs(self.db)
        self.episodes = Episodes(self.db, group_commit=group_commit)
        self.examples = Examples(self.db)
        self.registry = Registry(self.db)
        self.queue = WorkQueue(self.db, self.episodes)
        self.leases = Leases(self.db)
        self.firings = Firings(self.db)
        self.baselines = Baselines(self.db)
        self.reflections = Reflections(self.db)
        self.captures = Captures(self.db, self.episodes, self.examples)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database (with its password: mask it before showing it)."""
        return self.db.url

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for libraries that take one (APScheduler's job store)."""
        return self.db.engine

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    def __repr__(self) -> str:
        return f"Store({_db.masked(self.db.url)!r})"

    def close(self) -> None:
        """Write what the group committer holds, then release the database connections."""
        self.episodes.close()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Forward:
    """`store.NAME` is `store.<part>.NAME`. Not a data descriptor, so a test may still patch `store.NAME`."""

    def __init__(self, part: str, name: str, target: Any) -> None:
        self.part, self.name, self.target = part, name, target
        self.__doc__ = getattr(target, "__doc__", None)

    def __get__(self, obj: Store | None, owner: type | None = None) -> Any:
        if obj is None:
            return self.target  # Store.write_episode: the part's own function, for help() and inspect
        return getattr(getattr(obj, self.part), self.name)


def _expose(store: type[Store]) -> None:
    """Put every public method of the flat parts on the Store; a name two parts define is a mistake."""
    owner: dict[str, str] = {}
    for part, cls in FLAT_PARTS.items():
        for name, value in vars(cls).items():
            method = callable(value) or isinstance(value, threaded)
            if not method or name.startswith("_") or name in NOT_FLAT:
                continue
            if name in owner or name in vars(store):
                raise TypeError(f"Store.{name} would come from both {owner.get(name, 'Store')} and {part}")
            owner[name] = part
            setattr(store, name, _Forward(part, name, value))


_expose(Store)

__all__ = ["Store", "StoreError"]
