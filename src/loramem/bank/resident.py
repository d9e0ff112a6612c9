"""Modules loaded on the one base model of a process: an LRU of adapters (bank modules and merged adapters).

Loading grows slower as more adapters sit on a PEFT model, so at most `capacity` stay resident and the least
recently used are deleted. Switching between resident modules is a `set_adapter` call; the base never reloads.
A merged adapter is cached under its recipe (method, weights, density, seed, module versions and checksums).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from loramem.adapters import check_loaded_keys
from loramem.bank.manifest import ModuleInfo
from loramem.bank.merging import merge_into
from loramem.bank.store import MemoryBank
from loramem.config import MergeConfig
from loramem.errors import UserError
from loramem.models import Base


def _adapter_name(key: str) -> str:
    # PEFT adapter names become ModuleDict keys: no dots, and no clash with torch attributes such as "eval"
    return "bk_" + hashlib.sha1(key.encode()).hexdigest()[:12]


class Resident:
    """The adapters loaded on `base`'s shared PEFT wrapper for one bank."""

    def __init__(self, bank: MemoryBank, base: Base, capacity: int = 64) -> None:
        self.bank = bank
        self.base = base
        self.capacity = capacity
        self.lru: OrderedDict[str, str] = OrderedDict()  # cache key -> adapter name
        self.loads = 0
        self.merges = 0
        self._layers: list | None = None  # the host's LoRA layers (fixed once PEFT wrapped the base)
        self._layers_of = None

    @property
    def host(self):
        return self.base.extra.get("peft")

    def check_base(self, m: ModuleInfo) -> None:
        if m.base_fingerprint != self.base.fingerprint:
            raise UserError(f"module {m.id} was trained for base model '{m.base_name}' (weights "
                            f"{m.base_fingerprint}), not '{self.base.name}' ({self.base.fingerprint}); "
                            f"pass --model {m.base_name}")

    def ensure(self, m: ModuleInfo, pinned: set[str] | frozenset = frozenset()) -> str:
        """The adapter name of module version `m` on the host, loading it (safetensors only) if needed."""
        key = f"{m.id}:{m.checksum[:16]}"
        if key in self.lru and self._loaded(self.lru[key]):
            self.lru.move_to_end(key)
            return self.lru[key]
        self.lru.pop(key, None)  # another Resident on the shared host (another bank, a test) deleted it: reload
        self.check_base(m)
        folder = self.bank.verified_path(m)  # a damaged or swapped module is refused, never served
        name = _adapter_name(key)
        host = self.host
        if host is None:
            from peft import PeftModel

            host = PeftModel.from_pretrained(self.base.model, str(folder), adapter_name=name, is_trainable=False)
            self.base.extra["peft"] = host
        else:
            if name in host.peft_config:
                host.delete_adapter(name)
            host.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        host.eval()
        try:
            check_loaded_keys(host, name, folder)
        except UserError:
            host.delete_adapter(name) if len(host.peft_config) > 1 else None
            raise
        self.loads += 1
        self._put(key, name, pinned | {name})
        return name

    def merged(self, modules: list[ModuleInfo], weights: list[float], cfg: MergeConfig,
               pinned: set[str] | frozenset = frozenset()) -> tuple[str, bool]:
        """(adapter name, was cached) of the merge of `modules` under `cfg` and `weights`; `pinned` adapters stay
        loaded while it is built."""
        recipe = {"method": cfg.method, "weights": [round(w, 6) for w in weights], "density": cfg.density,
                  "sign": cfg.majority_sign, "svd_rank": cfg.svd_rank, "seed": cfg.seed,
                  "modules": [f"{m.id}:{m.checksum[:16]}" for m in modules]}
        key = "merge:" + json.dumps(recipe, sort_keys=True)
        if key in self.lru and self._loaded(self.lru[key]):
            self.lru.move_to_end(key)
            return self.lru[key], True
        inputs: list[str] = []
        for m in modules:
            inputs.append(self.ensure(m, pinned=set(pinned) | set(inputs)))
        name = _adapter_name(key)
        merge_into(self.host, inputs, weights, name, cfg)
        self.merges += 1
        self._put(key, name, set(pinned) | set(inputs) | {name})
        return name, False

    def _loaded(self, name: str) -> bool:
        return self.host is not None and name in self.host.peft_config

    def _put(self, key: str, name: str, pinned: set[str]) -> None:
        self.lru[key] = name
        while len(self.lru) > self.capacity:
            victim = next((k for k, v in self.lru.items() if v not in pinned), None)
            if victim is None:
                break
            gone = self.lru.pop(victim)
            if self._loaded(gone):
                self.host.delete_adapter(gone)

    def activate(self, name: str | None):
        """Make one resident adapter answer; returns the host model.

        For inference only: PEFT's `set_adapter` walks every module and toggles requires_grad of every resident
        adapter (slow with many resident); here only the LoRA layers' active-adapter pointers change."""
        host = self.host
        if name is None:
            return host
        if name not in host.peft_config:
            raise KeyError(f"adapter {name} is not loaded")
        if self._layers is None or self._layers_of is not host:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._layers = [m for m in host.modules() if isinstance(m, BaseTunerLayer)]
            self._layers_of = host
        if any(getattr(m, "merged", False) for m in self._layers[:1]):
            host.set_adapter(name)  # weights merged into the base: let PEFT unmerge
            return host
        for m in self._layers:
            m._active_adapter = [name]
        host.base_model.active_adapter = name
        host.active_adapter = name
        return host

    def clear(self) -> None:
        """Unload every adapter this bank loaded."""
        for name in self.lru.values():
            if self.host is not None and name in self.host.peft_config:
                self.host.delete_adapter(name)
        self.lru.clear()
