"""Train modules straight into a bank: `loramem write FILE --bank DIR --name NAME [--partition N]`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loramem.bank.folders import check_name, file_sha256
from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import Part, partition_file
from loramem.bank.rowkeys import row_texts
from loramem.bank.store import MemoryBank, NewModule
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
    """Train every part into the bank's staging area, all in one pass over the base (`write_modules`: each part
    its own module, optimizer and early stop), then commit them all in one manifest transaction (a write killed
    half-way leaves every module at its old version, never some new and some old)."""
    import shutil

    from loramem.writer import WriteJob, write_modules

    stagings = []
    try:
        for _ in parts:
            stagings.append(bank.new_staging())
        jobs = [WriteJob(p.examples, cfg, out=st, adapter=f"{ADAPTER}{i}", data_license=data_license)
                for i, (p, st) in enumerate(zip(parts, stagings, strict=True))]
        results = write_modules(jobs, base)
        for r in results:
            r.model.delete_adapter(r.adapter)
        fault_point("bank-part-trained")
        staged = [_new_module(p, name + p.suffix, r.record, st, view_mix)
                  for p, r, st in zip(parts, results, stagings, strict=True)]
        return bank.add_folders(staged, move=True)
    finally:
        for st in stagings:
            shutil.rmtree(st, ignore_errors=True)


def write_part(part: Part, bank: MemoryBank, name: str, base: Base, cfg: WriterConfig,
               view_mix: dict | None = None, data_license: str | None = None) -> ModuleInfo:
    """Train one module on a part and commit it to the bank (staged inside the bank, then renamed in)."""
    return write_parts([dataclasses.replace(part, suffix="")], bank, name, base, cfg, view_mix, data_license)[0]


def _new_module(part: Part, name: str, record: dict, staging: Path, view_mix: dict | None) -> NewModule:
    # a generated knowledge set has no file: its data hash stands in
    sources = {str(part.source): file_sha256(part.source) if part.source.is_file() else record["data_hash"]}
    return NewModule(staging, name, record, part.key_text, part.keys, sources, view_mix or {"qa": 1.0},
                     row_texts(part.examples), facts=part.examples)
