"""One registry type for everything strop finds by name: loops, trainer kinds, task sets, games and critics.

The registry pattern used to be written once per concept, each copy with its own unknown-name error, its own
loader and its own gaps (an entry-point loop silently replaced a built-in one; an entry point that returned
the wrong thing was ignored). `Registry` is the one implementation, so every concept behaves the same:

- Names are normalised per registry (loops: 'best-of-n' and 'best_of_n' are one name).
- An unknown name raises `UnknownNameError`, a `KeyError` whose message lists the known names and the CLI
  command that lists them. Each concept keeps its own subclass (`UnknownLoopError`, ...) for `except`.
- Built-in modules (which register their items when imported) are imported on the first look-up, once, and
  thread-safely: a second thread looking up meanwhile waits for the imports instead of seeing a half-filled
  registry. Then the registry's entry-point group is loaded.
- A name that is taken is refused with both origins named (the module or the entry point that registered
  each), unless the newcomer asks to replace: `register(..., replace=True)`, or for an entry point, a
  zero-argument factory with the attribute `replace = True`.
- An entry point names an item, a zero-argument callable that returns one, or a module that registers its
  items when imported. Anything else is an `EntryPointError` naming the entry point and the type it gave.

This module is dependency-free on purpose: it imports only the standard library and nothing from strop's
rooms, so every room, the leaves `strop.sandbox` and `strop.memory` included, may build its registry on it.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from types import ModuleType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name no one registered; the message lists the known names (and the command that lists them)."""

    def __init__(self, message: str, *, name: str = "", known: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.known = builtins.list(known)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class NameClashError(ValueError):
    """A second item under a taken name, without asking to replace the first; names both origins."""


class EntryPointError(TypeError):
    """An entry point that gave something other than the registry's item type."""


def underscores(name: str) -> str:
    """The normalisation of registries whose names users type with dashes: 'best-of-n' -> 'best_of_n'."""
    return name.strip().replace("-", "_")


def exact(name: str) -> str:
    """The normalisation of registries whose names are used verbatim elsewhere (labels, stored records)."""
    return name


class Registry(Generic[T]):
    """Items of one type by name, with built-in modules and an entry-point group loaded on first look-up.

    `kind` is what the messages call one item ('loop', 'trainer kind'); `plural` defaults to kind + 's'.
    `name_of` reads an item's own name (the name an entry point's item is registered under; without it, the
    entry point's name). `list_command` is the CLI command that lists the names, quoted in the unknown-name
    message. `error` is the `UnknownNameError` subclass raised. `sort`: names in alphabetical order, else in
    registration order (the order a CLI listing shows).
    """

    def __init__(
        self,
        kind: str,
        item_type: type | tuple[type, ...],
        *,
        plural: str | None = None,
        name_of: Callable[[Any], str] | None = None,
        normalize: Callable[[str], str] = exact,
        builtin_modules: Sequence[str] = (),
        entry_point_group: str | None = None,
        list_command: str | None = None,
        error: type[UnknownNameError] = UnknownNameError,
        sort: bool = True,
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.item_type = item_type
        self.name_of = name_of
        self.normalize = normalize
        self.builtin_modules = tuple(builtin_modules)
        self.entry_point_group = entry_point_group
        self.list_command = list_command
        self.error = error
        self.sort = sort
        self._reset({}, {})

    def _reset(self, items: dict[str, T], origins: dict[str, str]) -> None:
        self._items = items
        self._origins = origins
        self._loaded = False
        self._write = threading.Lock()  # short: never held while importing (no deadlock with import locks)
        self._loading = threading.RLock()  # held while importing built-ins and entry points
        self._local = threading.local()  # per thread: loading now? which entry point is registering?

    def copy(self) -> Registry[T]:
        """The same settings and entries, loaded again on its first look-up (a plugin installed since is found).

        Tests swap a copy in to register throw-away items and leave the real registry as it was. This registry
        is loaded first: built-in modules register into whichever registry their module global names when they
        are first imported, so a copy swapped in before the first look-up would keep them from this one.
        """
        self._ensure_loaded()
        clone: Registry[T] = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._reset(dict(self._items), dict(self._origins))
        return clone

    # --- registering -----------------------------------------------------------------------------------------

    def register(
        self, name: str, item: T, *, replace: bool = False, origin: str | None = None, stacklevel: int = 1
    ) -> T:
        """Add `item` under `name`; a taken name is refused (naming both origins) unless `replace`.

        Registering the same object again is harmless (a module imported twice). `origin` says who registers
        (default: the entry point being loaded, else the calling module; `stacklevel` as in `warnings.warn`,
        so a wrapper such as `register_loop` names its own caller).
        """
        if not isinstance(item, self.item_type):
            raise TypeError(f"the {self.kind} registry holds {_type_names(self.item_type)}; got {_a(item)}")
        key = self.normalize(name)
        origin = origin or getattr(self._local, "origin", None) or f"module {_module_of(stacklevel)}"
        with self._write:
            old = self._items.get(key)
            if old is item:
                return item
            if old is not None and not replace:
                raise NameClashError(
                    f"a {self.kind} named {key!r} is already registered by {self._origins[key]}; "
                    f"{origin} cannot register another under that name. Pick another name, or replace it "
                    "explicitly: register with replace=True (an entry point's factory: `replace = True`)"
                )
            self._items[key] = item
            self._origins[key] = origin
        return item

    def unregister(self, name: str) -> None:
        """Remove a name (a test's or a notebook's throw-away item); unknown names raise as `get` does."""
        key = self.normalize(name)
        with self._write:
            if key not in self._items:
                raise self._unknown(name)
            del self._items[key]
            del self._origins[key]

    # --- looking up ------------------------------------------------------------------------------------------

    def get(self, name: str) -> T:
        """The item registered under `name` (normalised); an unknown name lists the known ones."""
        self._ensure_loaded()
        try:
            return self._items[self.normalize(name)]
        except KeyError:
            raise self._unknown(name) from None

    def names(self) -> builtins.list[str]:
        self._ensure_loaded()
        return sorted(self._items) if self.sort else builtins.list(self._items)

    def list(self) -> builtins.list[T]:
        """Every item, in the order of `names()`."""
        return [self._items[k] for k in self.names()]

    def origin(self, name: str) -> str:
        """Who registered `name`: 'module strop.agents.loops.best_of_n', 'entry point ...'."""
        self.get(name)
        return self._origins[self.normalize(name)]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return isinstance(name, str) and self.normalize(name) in self._items

    def _unknown(self, name: str) -> UnknownNameError:
        known = self.names()
        see = f" (see `{self.list_command}`)" if self.list_command else ""
        return self.error(
            f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(known) or '(none)'}{see}",
            name=name,
            known=known,
        )

    # --- loading ---------------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded or getattr(self._local, "loading", False):
            return  # loaded; or this thread is loading and a module being imported looks a name up
        with self._loading:
            if self._loaded:
                return  # another thread finished the imports while this one waited
            self._local.loading = True
            try:
                for module in self.builtin_modules:
                    importlib.import_module(module)
                if self.entry_point_group:
                    self._load_entry_points(self.entry_point_group)
                self._loaded = True  # only when all loaded: a failed import is retried on the next look-up
            finally:
                self._local.loading = False

    def _load_entry_points(self, group: str) -> None:
        for ep in metadata.entry_points(group=group):
            where = f"entry point {ep.name!r} = {ep.value!r} (group {group})"
            self._local.origin = where  # what a module that registers itself on import is called
            try:
                obj = ep.load()  # a broken plugin fails loudly, with its own traceback
                if isinstance(obj, ModuleType):
                    continue  # it registered its items when imported
                item, replace = obj, False
                if not isinstance(obj, self.item_type) and callable(obj):
                    replace = getattr(obj, "replace", False) is True
                    item = obj()
                if not isinstance(item, self.item_type):
                    got = _a(obj) if item is obj else f"{_a(obj)}, which returned {_a(item)}"
                    raise EntryPointError(
                        f"{where} gave {got}; it must name {_type_names(self.item_type)}, a zero-argument "
                        "callable that returns one, or a module that registers its items"
                    )
                name = self.name_of(item) if self.name_of else ep.name
                self.register(name, item, replace=replace, origin=where)
            finally:
                self._local.origin = None


def _module_of(stacklevel: int) -> str:
    """The module of the frame `stacklevel` calls above the caller of this function."""
    try:
        frame = sys._getframe(stacklevel + 1)
    except ValueError:  # the stack is shallower than asked
        return "?"
    return str(frame.f_globals.get("__name__", "?"))


def _type_names(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return "a " + " or a ".join(names)


def _a(obj: object) -> str:
    """How a message names what it got: 'a function make_spec', 'a str'."""
    what = type(obj).__name__
    label = getattr(obj, "__qualname__", None)
    return f"a {what} {label}" if isinstance(label, str) and not isinstance(obj, str) else f"a {what}"
