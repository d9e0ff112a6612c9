"""Train modules straight into a bank: `loramem write FILE --bank DIR --name NAME [--partition N]`."""

from __future__ import annotations

from pathlib import Path

from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import Part, partition_file
from loramem.bank.rowkeys import row_texts
from loramem.bank.store import MemoryBank, NewModule, check_name, file_sha256
from loramem.config import WriterConfig, fault_point
from loramem.models import Base

ADAPTER = "bank_write"


def write_to_bank(train_file: str | Path, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
                  partition: int | None = None, limit: int | None = None,
                  view_mix: dict | None = None, data_license: str | None = None) -> list[ModuleInfo]:
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
    return write_parts(parts, bank, name, base, cfg, view_mix, data_license)


def write_parts(parts: list[Part], bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
                view_mix: dict | None = None, data_license: str | None = None) -> list[ModuleInfo]:
    """Train every part into the bank's staging area, then commit them all in one manifest transaction (a write
    killed half-way leaves every module at its old version, never some new and some old)."""
    import shutil

    staged: list[NewModule] = []
    try:
        for i, p in enumerate(parts):
            staged.append(train_part(p, bank, name + p.suffix, base, cfg, view_mix, data_license))
            if i == 0:
                fault_point("bank-part-trained")
        return bank.add_folders(staged, move=True)
    finally:
        for item in staged:
            shutil.rmtree(item.folder, ignore_errors=True)


def write_part(part: Part, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
               view_mix: dict | None = None, data_license: str | None = None) -> ModuleInfo:
    """Train one module on a part and commit it to the bank (staged inside the bank, then renamed in)."""
    return bank.add_folders([train_part(part, bank, name, base, cfg, view_mix, data_license)], move=True)[0]


def train_part(part: Part, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
               view_mix: dict | None = None, data_license: str | None = None) -> NewModule:
    """Train one module on a part into a fresh staging folder of the bank (not yet in the manifest)."""
    import shutil

    from loramem.writer import write_module

    staging = bank.new_staging()
    try:
        res = write_module(part.examples, base, cfg, out=staging, adapter=ADAPTER, data_license=data_license)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    res.model.delete_adapter(ADAPTER)
    # a generated knowledge set has no file: its data hash stands in
    sources = {str(part.source): file_sha256(part.source) if part.source.is_file() else res.record["data_hash"]}
    return NewModule(staging, name, res.record, part.key_text, part.keys, sources, view_mix or {"qa": 1.0},
                     row_texts(part.examples), facts=part.examples)
