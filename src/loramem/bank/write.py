"""Train modules straight into a bank: `loramem write FILE --bank DIR --name NAME [--partition N]`."""

from __future__ import annotations

from pathlib import Path

from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import Part, partition_file
from loramem.bank.rowkeys import row_texts
from loramem.bank.store import MemoryBank, check_name, file_sha256
from loramem.config import WriterConfig
from loramem.models import Base

ADAPTER = "bank_write"


def write_to_bank(train_file: str | Path, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
                  partition: int | None = None, limit: int | None = None,
                  view_mix: dict | None = None) -> list[ModuleInfo]:
    """Train one module per part of `train_file` and add each as the next version of NAME (or NAME-00, ...)."""
    check_name(name)
    parts = partition_file(train_file, partition, limit)
    for p in parts:
        check_name(name + p.suffix)
    known = bank.base()
    if known and known[1] != base.fingerprint:
        from loramem.errors import UserError

        raise UserError(f"bank {bank.root} holds modules for base model '{known[0]}', not '{base.name}'; "
                        f"pass --model {known[0]} or use another bank")
    return [write_part(p, bank, name + p.suffix, base, cfg, view_mix) for p in parts]


def write_part(part: Part, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
               view_mix: dict | None = None) -> ModuleInfo:
    """Train one module on a part and commit it to the bank (staged inside the bank, then renamed in)."""
    import shutil

    from loramem.writer import write_module

    staging = bank.new_staging()
    try:
        res = write_module(part.examples, base, cfg, out=staging, adapter=ADAPTER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    res.model.delete_adapter(ADAPTER)
    # a generated knowledge set has no file: its data hash stands in
    sources = {str(part.source): file_sha256(part.source) if part.source.is_file() else res.record["data_hash"]}
    return bank.add_folder(staging, name, record=res.record, key_text=part.key_text, keys=part.keys,
                           sources=sources, view_mix=view_mix or {"qa": 1.0}, move=True,
                           rows=row_texts(part.examples))
