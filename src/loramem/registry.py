"""One way to register a method of a family (router, merge method, answer mode, generator, judge) under a name.

    from loramem.registry import ROUTERS

    @ROUTERS.register("first", help="always the first module")
    class FirstRouter: ...

    ROUTERS.get("first")        # the class (a UserError naming the choices for an unknown name)
    ROUTERS.names()             # every registered name, in registration order

Each family's built-in entries live in their own modules (`providers`), imported the first time the family is
read, so `config.py` can validate a name against the registry without importing torch at start-up. The CLI help,
the config validators and the server's request checks all read the same registry: a new method registered in one
file shows up everywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loramem.errors import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    help: str = ""
    meta: dict = field(default_factory=dict)


class Registry:
    """Named methods of one family."""

    def __init__(self, family: str, providers: tuple[str, ...] = (), flag: str = "") -> None:
        self.family = family
        self.flag = flag  # the CLI flag that picks one, for error messages
        self._providers = providers
        self._loaded = False
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, help: str = "", **meta) -> Callable:
        """Decorator: register a function or class under `name` (a later registration of a name replaces it)."""

        def add(obj):
            self._entries[name] = Entry(name, obj, help or (obj.__doc__ or "").strip().split("\n")[0], meta)
            return obj

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._providers:
                importlib.import_module(mod)

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered: the choices and an example flag."""
        self._load()
        how = f" (e.g. {self.flag} {next(iter(self._entries), '')})" if self.flag else ""
        return f"unknown {self.family} '{name}'; choose one of {', '.join(self._entries)}{how}"

    def entry(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise UserError(self.unknown(name))
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def check(self, name: str) -> str:
        self.entry(name)
        return name

    def help_text(self) -> str:
        """One line per entry, for CLI help: 'name: what it does'."""
        self._load()
        return "; ".join(f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


ROUTERS = Registry("router", ("loramem.bank.routing",), "--route")
MERGES = Registry("merge method", ("loramem.bank.merging",), "--merge")
MODES = Registry("mode", ("loramem.answer.modes",), "--mode")
GENERATORS = Registry("generator", ("loramem.generators",), "--generator")
JUDGES = Registry("judge", ("loramem.judges",), "--judge")
