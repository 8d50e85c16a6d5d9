"""Store errors. Each message says what was wrong and what to do, because the user who meets one is
usually running a loop or a training job and did not write the store code."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base of every error the store raises on purpose."""


class StoreConnectionError(StoreError):
    """The database cannot be reached or opened."""


class StoreLockedError(StoreError):
    """SQLite stayed locked by another writer for longer than the busy timeout."""


class SchemaError(StoreError):
    """The database schema is not the one this code expects."""


class SchemaOutdatedError(SchemaError):
    """The database is at an older migration: `strop db upgrade` fixes it."""


class NotFoundError(StoreError, KeyError):
    """A run, job or model version that the call names is not in the store."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class InvalidTransitionError(StoreError, ValueError):
    """A status change that the state machine forbids (a bug or a race between two workers)."""


class HeldoutLeakError(StoreError, ValueError):
    """A training example from a held-out task: it would leak evaluation data into training."""


class EpisodeStateError(StoreError):
    """The episode is not in the status the call needs (e.g. examples for one that did not finish)."""


class EpisodeClosedError(EpisodeStateError):
    """The episode is closed (finished, failed or aborted): it takes no more steps or other closings."""
