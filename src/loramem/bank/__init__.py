"""The memory bank: many LoRA modules on disk (store, manifest), chosen per question (routing), combined
(merging) and applied (ask). See store.MemoryBank, routing.build_router, merging.merge_adapters, ask.prepare."""

from loramem.bank.manifest import ModuleInfo
from loramem.bank.store import MemoryBank, VerifyReport, check_name

__all__ = ["MemoryBank", "ModuleInfo", "VerifyReport", "check_name"]
