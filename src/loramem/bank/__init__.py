"""The memory bank: many LoRA modules on disk (store, manifest), chosen per question (routing), combined
(merging) and loaded (resident). See store.MemoryBank, routing.build_router, merging.merge_into; questions are
answered over a bank by loramem.answer.pipeline."""

from loramem.bank.folders import check_name
from loramem.bank.manifest import ModuleInfo
from loramem.bank.store import MemoryBank, VerifyReport

__all__ = ["MemoryBank", "ModuleInfo", "VerifyReport", "check_name"]
