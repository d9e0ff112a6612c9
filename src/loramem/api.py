"""The five-line Python API: `write`, `Bank`, `ask`, `datasheet`. Every argument takes a path or a name as
readily as an object (a bank folder or a `Bank`; a model name or a loaded `Base`), and every CLI verb is one
of these calls.

    import loramem
    loramem.write("people.csv", bank="my-bank", name="people", model="tiny-random", steps=50)
    bank = loramem.Bank("my-bank")
    bank.ls()                                   # the modules it serves
    bank.ask("What is the phone number of Ann Lee?")["answer"]
    bank.update("new.csv", "people", mode="append")   # a memory that changes: update, retire, consolidate
    bank.rollback("people")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loramem.config import DEFAULT_MODEL

if TYPE_CHECKING:  # kept out of `import loramem`: these pull in torch
    from loramem.bank.manifest import ModuleInfo
    from loramem.bank.store import MemoryBank, VerifyReport
    from loramem.formats import Example
    from loramem.models import Base

def _base(model: str | Base | None) -> Base | None:
    from loramem.models import Base, load_base

    if model is None or isinstance(model, Base):
        return model
    return load_base(str(model))


def _store(bank: str | Path | Bank | MemoryBank) -> MemoryBank:
    from loramem.bank.store import MemoryBank

    if isinstance(bank, Bank):
        return bank.store
    if isinstance(bank, MemoryBank):
        return bank
    return MemoryBank(bank)


def _examples(data: str | Path | Sequence) -> list[Example]:
    """A training file, or facts given inline: Example objects, (prompt, answer) pairs or {"prompt", "answer"} rows."""
    from loramem.data.examples import read_examples, row_to_example
    from loramem.errors import UserError
    from loramem.formats import Example

    if isinstance(data, str | Path):
        return read_examples(data)
    out = []
    for i, item in enumerate(data):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, dict):
            out.append(row_to_example(item, f"fact {i}"))
        elif isinstance(item, Sequence) and len(item) == 2:
            out.append(Example(str(item[0]), str(item[1])))
        else:
            raise UserError(f"fact {i} is {type(item).__name__}; give (prompt, answer) pairs, "
                            "{'prompt': ..., 'answer': ...} rows or a training file path")
    return out


def write(data: str | Path | Sequence, bank: str | Path | Bank | None = None, name: str | None = None,
          model: str | Base = DEFAULT_MODEL, out: str | Path | None = None, recipe: str = "fast",
          partition: int | None = None, data_license: str | None = None, **writer: Any) -> dict:
    """Train a memory module on facts and add it to a bank as NAME (or save it to the folder `out`).

    `data`: a PhoneBook CSV/JSON, a JSONL of {"prompt", "answer"} rows, or those facts inline. `writer`: any
    `WriterConfig` option (rank=8, lr=2e-3, steps=..., target_em=1.0, ...) over the `recipe` preset. Returns the
    run record (`exact_match`, `steps`, `seconds`, ...), with `modules` listing the bank ids written."""
    from loramem.config import writer_config
    from loramem.errors import UserError

    cfg = writer_config(recipe, **writer)
    base = _base(model)
    if (bank is None) == (out is None):
        raise UserError("give bank=... and name=... to add the module to a bank, or out=FOLDER, not both")
    if bank is not None:
        if name is None:
            raise UserError("writing to a bank needs name=..., e.g. loramem.write(data, bank='b', name='people')")
        infos = _write_bank(data, _store(bank), name, base, cfg, partition, data_license)
        rec = dict(infos[-1].record)
        rec["modules"] = [m.id for m in infos]
        rec["exact_match"] = min(m.record.get("exact_match", 0.0) for m in infos)
        rec["steps"] = sum(m.record.get("steps", 0) for m in infos)
        rec["seconds"] = round(sum(m.record.get("wall_s", 0.0) for m in infos), 2)
        return rec
    from loramem.writer import write_module

    res = write_module(_examples(data), base, cfg, out=out, data_license=data_license)
    return {**res.record, "seconds": res.record["wall_s"], "modules": [str(out)]}


def _write_bank(data, store: MemoryBank, name: str, base: Base, cfg, partition: int | None,
                data_license: str | None) -> list[ModuleInfo]:
    from loramem.bank.write import write_part, write_to_bank

    if isinstance(data, str | Path):
        return write_to_bank(data, store, name, base, cfg, partition, data_license=data_license)
    from loramem.bank.partition import Part, fact_key, key_text
    from loramem.errors import UserError

    if partition not in (None, 1):
        raise UserError("partition=N needs a training file; write inline facts as one module, or save them to a file")
    ex = _examples(data)
    part = Part("", ex, key_text(ex), [fact_key(e) for e in ex], Path("<inline facts>"))
    return [write_part(part, store, name, base, cfg, data_license=data_license)]


class Bank:
    """A memory bank folder: its modules, questions against them, checks and export (created on first write)."""

    def __init__(self, path: str | Path, model: str | Base | None = None) -> None:
        from loramem.bank.store import MemoryBank

        self.store = MemoryBank(path)
        self.model = model  # None: the base model the bank's modules were trained on

    @property
    def path(self) -> Path:
        return self.store.root

    def __repr__(self) -> str:
        return f"Bank({str(self.path)!r})"

    def ls(self) -> list[dict]:
        """The serving version of every module, as `loramem bank ls --json` prints them."""
        return [{**m.summary(m.version), "versions": len(self.store.versions(m.name))} for m in self.store.list()]

    def write(self, data: str | Path | Sequence, name: str, **options: Any) -> dict:
        """`loramem.write(data, bank=self, name=name, ...)`, on this bank's base model unless model= is given."""
        options.setdefault("model", self.model or self._base_name())
        return write(data, bank=self, name=name, **options)

    def ask(self, question: str, **options: Any) -> dict:
        """`loramem.ask(question, bank=self, ...)`: route, merge, answer."""
        return ask(question, bank=self, **{"model": self.model, **options})

    def update(self, data: str | Path, name: str, mode: str = "append", replay: int | None = None,
               **writer: Any) -> dict:
        """`loramem write DATA --bank self --name NAME --update MODE [--replay N]`: append / correct facts as NAME's
        next version, or new-module; `writer` options replace the module's recorded ones. Returns the report."""
        from loramem.bank.update import update_module

        info, report = update_module(data, self.store, name, self._loaded(), mode, writer, replay)
        return {"module": info.id, **report}

    def retire(self, name: str, keys: str | Path, **writer: Any) -> dict:
        """`loramem bank retire NAME --facts KEYS`: NAME's next version, rewritten without those facts."""
        from loramem.bank.update import retire_facts

        info, report = retire_facts(self.store, name, keys, self._loaded(), writer)
        return {"module": info.id, **report}

    def consolidate(self, names: list[str], into: str, method: str = "retrain", min_recall: float = 1.0,
                    **writer: Any) -> dict:
        """`loramem bank consolidate --names ... --into INTO`: one module checked to recall what they recalled."""
        from loramem.bank.consolidate import consolidate

        info, report = consolidate(self.store, names, into, self._loaded(), writer, method, min_recall)
        return {"module": info.id, **report}

    def rollback(self, name: str, to: int | None = None) -> int:
        """`loramem bank rollback NAME [--to V]`: serve an earlier version (or a retired module again)."""
        return self.store.rollback(name, to).version

    def _loaded(self) -> Base:
        return _base(self.model or self._base_name())

    def verify(self) -> VerifyReport:
        """Check that manifest and files agree (`.ok`, `.problems`, `.notes`)."""
        return self.store.verify()

    def export(self, out: str | Path, names: list[str] | None = None) -> list[Path]:
        """Write each module as a portable PEFT folder with a model card into OUT/NAME; returns the folders."""
        return self.store.export(out, names)

    def _base_name(self) -> str:
        known = self.store.base()
        return known[0] if known else DEFAULT_MODEL


def ask(question: str, bank: str | Path | Bank, model: str | Base | None = None, route: str = "embed",
        top_k: int = 1, merge: str = "none", mode: str = "lora", max_tokens: int = 32, **options: Any) -> dict:
    """Answer a question from a bank (route -> merge -> prompt -> decode, the road `loramem ask` takes); returns
    {"answer", "modules", timings, ...}.

    `mode`: lora (default), base, icl, rag, lora+rag or lora+icl. Other `options` are `AskConfig` fields
    (chunks=, overflow=, context_budget=, weights=, density=, ...)."""
    from loramem.answer.pipeline import ask as ask_bank
    from loramem.config import ask_config

    cfg = ask_config(route=route, top_k=top_k, merge=merge, mode=mode, max_new_tokens=max_tokens, **options)
    base = _base(model)
    return ask_bank(question, _store(bank), cfg, base.name if base is not None else None)


def datasheet(out: str | Path, model: str | Base = DEFAULT_MODEL, scale: str = "smoke", only: str | None = None,
              **options: Any) -> dict:
    """Run the paper's audit on a base model; writes report.html/.md, results.jsonl and findings.json into OUT.

    `scale`: smoke (minutes on a CPU), cpu (hours), paper (the paper's grid). Returns the findings and paths."""
    from loramem.datasheet import run_datasheet

    name = model.name if not isinstance(model, str) else model
    return run_datasheet(name, scale, Path(out), only=only, **options)
