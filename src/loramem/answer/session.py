"""A bank opened on a base model: routers, resident modules and the bank's RAG index, kept warm across questions.

    s = open_session("my-bank")            # the base the bank's modules were trained for
    s.router("embed").route(question, k=3)
    name = activate(s, chosen, MergeConfig(method="ties"))

Switching modules never reloads the base; the routers and the index are re-read when the bank changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loramem.bank.resident import Resident
from loramem.bank.routing import Router, Scored, build_router
from loramem.bank.store import MANIFEST, MemoryBank
from loramem.config import AskConfig, MergeConfig
from loramem.errors import UserError
from loramem.models import Base, load_base

# routers that read the row keys (the oracle too: a training question finds its module by them)
FACT_LEVEL = ("embed", "bm25", "hybrid", "lora", "oracle")


@dataclass
class Session:
    """A bank opened on a base model, with routers and resident modules kept warm."""

    bank: MemoryBank
    base: Base
    cfg: AskConfig
    resident: Resident = field(init=False)
    _routers: dict = field(default_factory=dict, init=False)
    _stamp: float = field(default=0.0, init=False)
    _modules: list = field(default_factory=list, init=False)
    _index: tuple = field(default=(None, None), init=False)

    def __post_init__(self) -> None:
        self.resident = Resident(self.bank, self.base, self.cfg.resident)

    def modules(self):
        """Serving versions of the bank's modules (re-read when the manifest changes)."""
        stamp = (self.bank.root / MANIFEST).stat().st_mtime_ns if self.bank.exists() else 0
        if stamp != self._stamp:
            self._modules, self._stamp, self._routers = self.bank.list(), stamp, {}
        return self._modules

    def router(self, kind: str) -> Router:
        mods = self.modules()
        if kind not in self._routers:
            keys, index = self.row_keys() if kind in FACT_LEVEL else (None, None)
            self._routers[kind] = build_router(kind, mods, resident=self.resident,
                                               on_new_embeddings=self.bank.set_embeddings, keys=keys, index=index,
                                               **({"candidates": self.cfg.lora_candidates} if kind == "lora" else {}))
            self._stamp = (self.bank.root / MANIFEST).stat().st_mtime_ns  # storing embeddings touched it
        return self._routers[kind]

    def row_keys(self):
        """The serving modules' row keys and their vector index, read once per manifest change (all routers)."""
        from loramem.bank import vindex

        if "_keys" not in self._routers:
            keys = self.bank.row_keys(self.modules())
            self._routers["_keys"] = (keys, vindex.for_keys(self.bank, keys))
        return self._routers["_keys"]

    def index(self, required: bool):
        """The RAG index kept beside the bank (BANK/index), re-read when it changes."""
        from loramem.retrieval.index import INDEX_FILE, bank_index, index_dir_for_bank

        f = index_dir_for_bank(self.bank.root) / INDEX_FILE
        stamp = f.stat().st_mtime_ns if f.is_file() else None
        if stamp is None or stamp != self._index[0]:
            self._index = (stamp, bank_index(self.bank.root, required=required))
        if required and self._index[1] is None:
            bank_index(self.bank.root, required=True)
        return self._index[1]


_SESSIONS: dict[tuple, Session] = {}


def open_session(bank: str | Path | MemoryBank, model: str | None = None, cfg: AskConfig | None = None) -> Session:
    """The process-wide session of a bank (default base: the one the bank's modules were trained for)."""
    bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank, create=False)
    known = bank.base()
    if known is None:
        raise UserError(f"bank {bank.root} has no modules yet; write one with `loramem write FILE --bank "
                        f"{bank.root} --name NAME`")
    base = load_base(model or known[0])
    if base.fingerprint != known[1]:
        raise UserError(f"bank {bank.root} holds modules for base model '{known[0]}' (weights {known[1]}), "
                        f"not '{base.name}' ({base.fingerprint}); pass --model {known[0]}")
    key = (str(bank.root.resolve()), base.name, base.fingerprint)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session(bank, base, cfg or AskConfig())
    elif cfg is not None:
        _SESSIONS[key].cfg = cfg
    return _SESSIONS[key]


def activate(session: Session, chosen: list[Scored], merge: MergeConfig,
             pinned: set[str] | frozenset = frozenset()) -> tuple[str, bool]:
    """Load (and if asked, merge) the chosen modules -> (adapter name, merge was cached). `pinned`: adapters that
    must stay loaded (the other rows of a batch)."""
    from loramem.bank.merging import merge_weights

    if merge.method == "none" or len(chosen) == 1:
        return session.resident.ensure(chosen[0].module, pinned=pinned), False
    weights = merge_weights(merge, len(chosen), [s.score for s in chosen])
    return session.resident.merged([s.module for s in chosen], weights, merge, pinned=pinned)
