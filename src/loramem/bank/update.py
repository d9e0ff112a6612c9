"""Memory that changes: add facts to a bank module, correct them and retire them, each change a new version.

    update_module("new.jsonl", bank, "people", base, "append")          # people@v(n+1): v(n) trained further
    update_module("fixes.jsonl", bank, "people", base, "correct")       # new values replace old ones by key
    update_module("more.jsonl", bank, "people", base, "new-module")     # people.u1: its own module, routing decides
    retire_facts(bank, "people", "gone.jsonl", base)                    # people@v(n+1) rewritten without them

- `append` and `correct` start from the serving version's weights (`write_module(init_from=...)`) and train on the
  new facts plus a replay sample of the module's own untouched facts (`replay`: how many; None: all of them, so the
  writer's early stop at exact match is on the whole union; 0: the new facts only). The new version keeps the
  module's shape (rank, alpha, targets, layers, format), since it continues the same weights.
- `correct` replaces, by key (`partition.fact_key`: a PhoneBook name, else the prompt), the value of every fact
  the module holds; the old value is checked after training, and a version that still gives an old value is
  refused (nothing changes), as is one whose new value is not learnt where the old one was.
- `retire` rewrites the module from a fresh init on its remaining facts rather than training it to abstain: a
  fine-tune towards "I don't know" leaves the retired facts in the weights (a few steps of further training bring
  them back, and paraphrases may still reach them), while a version trained without them never saw them. It costs
  a full write of the remaining facts. Older versions still hold them until `loramem bank rm`; rollback needs them.

Every change is a new version of the name, so `MemoryBank.rollback` serves the previous answers exactly. The
facts each version should know are kept in the manifest (bank/facts.py), so replay needs no source file.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loramem.bank.folders import check_name, file_sha256
from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import KEY_TEXT_CHARS, fact_key, key_text
from loramem.bank.rowkeys import row_texts
from loramem.bank.store import MemoryBank, NewModule
from loramem.config import WriterConfig, user_error
from loramem.errors import UserError
from loramem.formats import Example
from loramem.models import Base

MODES = ("append", "correct", "new-module")
SHAPE = ("rank", "alpha", "rslora", "targets", "layers", "format")  # what init_from needs unchanged
ADAPTER = "bank_update"


class CheckFailed(Exception):
    """An update trained but failed its check (an old value still given, a fact lost): the bank is unchanged."""


@dataclass
class Trained:
    """A staged module version and what its checks measured."""

    item: NewModule
    report: dict = field(default_factory=dict)


def check_base(bank: MemoryBank, base: Base) -> None:
    known = bank.base()
    if known and known[1] != base.fingerprint:
        raise UserError(f"bank {bank.root} holds modules for base model '{known[0]}', not '{base.name}'; "
                        f"pass --model {known[0]} or use another bank")


def module_config(info: ModuleInfo, given: dict | None = None, keep_shape: bool = True) -> WriterConfig:
    """The writer config recorded by `info`, with the options `given` explicitly replacing it; with `keep_shape`
    a given shape option that differs from the module's is refused (its weights would not fit)."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    rec = {k: v for k, v in info.record.get("config", {}).items() if k in WriterConfig.model_fields}
    unknown = sorted(set(given) - set(WriterConfig.model_fields))
    if unknown:
        raise UserError(f"unknown writer option(s) {', '.join(unknown)}")
    for k in SHAPE if keep_shape else ():
        if k in given and k in rec and given[k] != rec[k]:
            raise UserError(f"{info.id} has {k} {rec[k]!r} and an update continues its weights: drop "
                            f"--{k.replace('_', '-')}, or use --update new-module for a module of another shape")
    if "rank" in given and "alpha" not in given and rec.get("rank"):  # keep the module's alpha / rank scaling
        given["alpha"] = float(rec.get("alpha") or 2 * rec["rank"]) * given["rank"] / rec["rank"]
    try:
        return WriterConfig.model_validate({**rec, **given})
    except Exception as exc:  # pydantic's ValidationError
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise user_error(exc, "writer option") from None
        raise


def read_new_facts(path: str | Path, limit: int | None = None) -> list[Example]:
    """The facts of an update file (any kind `loramem write` reads), each key once."""
    from loramem.data.examples import read_examples

    facts = read_examples(path)[:limit]
    if not facts:
        raise UserError(f"{path} holds no facts; pass a file with at least one row")
    seen: dict[str, int] = {}
    for n, e in enumerate(facts, start=1):
        k = fact_key(e)
        if k in seen:
            raise UserError(f"{path}: rows {seen[k]} and {n} have the same key {k!r}; keep one value per key")
        seen[k] = n
    return facts


def read_keys(path: str | Path) -> list[str]:
    """Keys to retire: JSONL lines that are a JSON string, {"key": ...}, or a fact row (its key); or any file
    `loramem write` reads (the keys of its facts)."""
    from loramem.data.examples import read_examples, row_to_example
    from loramem.data.reading import loads, read_text

    p = Path(path)
    if not p.is_file():
        raise UserError(f"keys file not found: {p}; pass a JSONL file with one key per line, e.g. {{\"key\": \"...\"}}")
    if p.suffix.lower() != ".jsonl":
        return [fact_key(e) for e in read_examples(p)]
    keys = []
    for n, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        row = loads(line, f"{p}:{n}")
        if isinstance(row, str):
            keys.append(row)
        elif isinstance(row, dict) and set(row) == {"key"}:
            keys.append(str(row["key"]))
        elif isinstance(row, dict):
            keys.append(fact_key(row_to_example(row, f"{p}:{n}")))
        else:
            raise UserError(f"{p}:{n}: expected a JSON string or an object with a \"key\", got {type(row).__name__}")
    if not keys:
        raise UserError(f"{p} names no keys; write one per line, e.g. {{\"key\": \"Ann Lee\"}}")
    return list(dict.fromkeys(keys))


def replay_sample(facts: list[Example], n: int | None, seed: int) -> list[Example]:
    """`n` of `facts` at random (seeded; None: all), in their order."""
    if n is None or n >= len(facts):
        return list(facts)
    if n < 0:
        raise UserError(f"--replay must be 0 or more (or 'all'), got {n}")
    idx = sorted(random.Random(seed).sample(range(len(facts)), n))
    return [facts[i] for i in idx]


def updated_key_text(info: ModuleInfo, old: list[Example], union: list[Example]) -> str:
    """Routing's key text for the new version: rebuilt from the facts when it was made from them, else the old
    text (a document title and summary) with the new keys after it."""
    if info.key_text == key_text(old):
        return key_text(union)
    added = "; ".join(k for k in (fact_key(e) for e in union) if k not in set(info.keys))
    return (info.key_text + ("; " + added if added else ""))[:KEY_TEXT_CHARS]


def train_version(bank: MemoryBank, name: str, base: Base, cfg: WriterConfig, train: list[Example],
                  union: list[Example], checks: dict[str, list[Example]], init_from: Path | None = None,
                  data_license: str | None = None) -> tuple[Path, dict, dict[str, list[bool]]]:
    """Train on `train` into a fresh staging folder of the bank (from `init_from`'s weights when given), then
    teacher-forced exact match on `union` and on each named check set. Returns (folder, record, hits)."""
    from loramem.evaluate import teacher_forced_em
    from loramem.writer import write_module

    staging = bank.new_staging()
    try:
        res = write_module(train, base, cfg, out=staging, adapter=ADAPTER, data_license=data_license,
                           init_from=init_from)
        hits = {k: teacher_forced_em(res.model, base, v, cfg.format) if v else []
                for k, v in {"union": union, **checks}.items()}
        res.model.delete_adapter(ADAPTER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = res.record
    record["exact_match_union"] = share(hits["union"])
    return staging, record, hits


def share(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def record_update(staging: Path, record: dict, update: dict) -> dict:
    """Record what the update did beside the training record (in the manifest and the folder's loramem.json)."""
    from loramem.adapters import RECORD_FILE

    record["update"] = update
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return record


def update_module(train_file: str | Path, bank: MemoryBank, name: str, base: Base, mode: str,
                  given: dict | None = None, replay: int | None = None, limit: int | None = None,
                  data_license: str | None = None) -> tuple[ModuleInfo, dict]:
    """Add the facts of `train_file` to module `name` as its next version (append / correct), or as a module of
    its own (new-module). Returns (the new version, what the update measured)."""
    if mode not in MODES:
        raise UserError(f"unknown --update '{mode}'; choose from {', '.join(MODES)}")
    check_name(name)
    check_base(bank, base)
    if not bank.exists() or bank.head(name) is None:
        raise UserError(f"no module '{name}' served in bank {bank.root} to update; write it first with `loramem "
                        f"write FILE --bank {bank.root} --name {name}` (no --update)")
    info = bank.get(name)
    new = read_new_facts(train_file, limit)
    src = {str(Path(train_file)): file_sha256(Path(train_file))}
    if mode == "new-module":
        return _new_module(bank, info, base, new, given, src, data_license)
    cfg = module_config(info, given, keep_shape=True)
    old = _old_facts(bank, info, needed=replay != 0 or mode == "correct")
    old_keys = set(info.keys) if old is None else {fact_key(e) for e in old}
    clash = [fact_key(e) for e in new if fact_key(e) in old_keys]
    if mode == "append" and clash:
        raise UserError(f"{len(clash)} facts of {train_file} have keys {name} already holds (e.g. {clash[0]!r}); "
                        "use --update correct to change their values")
    corrected = {fact_key(e): e for e in new if fact_key(e) in old_keys}
    known = old if old is not None else []
    union = [corrected.get(fact_key(e), e) for e in known] + [e for e in new if fact_key(e) not in corrected]
    untouched = [e for e in known if fact_key(e) not in corrected]
    sample = replay_sample(untouched, replay, cfg.seed)
    # the old values of corrected facts (a "correction" to the same value has nothing to forget)
    was = [e for e in known if fact_key(e) in corrected and e.answer != corrected[fact_key(e)].answer]
    folder, record, hits = train_version(bank, name, base, cfg, sample + new, union,
                                         {"new": new, "old_values": was, "replayed": sample},
                                         init_from=bank.verified_path(info), data_license=data_license)
    report = {"mode": mode, "from": info.id, "new": len(new), "corrected": len(corrected), "replay": len(sample),
              "replay_of": len(untouched), "n_facts": len(union) if old is not None else len(info.keys) + len(new),
              "exact_match": record["exact_match_union"], "exact_match_new": share(hits["new"]),
              "exact_match_replayed": share(hits["replayed"]), "old_value_given": share(hits["old_values"]),
              "train_s": record.get("train_s"), "source": str(train_file)}
    still = [fact_key(e) for e, h in zip(was, hits["old_values"], strict=True) if h]
    if still:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckFailed(f"{name}: {len(still)} of {len(was)} corrected facts still give their old value (e.g. "
                          f"{still[0]!r}) after training; nothing was changed. Train longer or harder (e.g. "
                          "--steps, --lr) or correct fewer facts at once")
    keys = [fact_key(e) for e in union] if old is not None else [*info.keys, *(fact_key(e) for e in new)]
    ktext = updated_key_text(info, old, union) if old is not None else (
        info.key_text + "; " + key_text(new))[:KEY_TEXT_CHARS]
    item = NewModule(folder, name, record_update(folder, record, report), ktext, keys, {**info.sources, **src},
                     info.view_mix, row_texts(union) if old is not None else None,
                     facts=union if old is not None else None)
    return bank.add_folders([item], move=True)[0], report


def _old_facts(bank: MemoryBank, info: ModuleInfo, needed: bool) -> list[Example] | None:
    """The module's facts; None only when they are not `needed` (append without replay) and cannot be read (a
    version from before the bank kept facts whose source file is gone): the update then knows the new ones."""
    try:
        return bank.facts(info)
    except UserError:
        if needed:
            raise
        return None


def recalled_by(info: ModuleInfo, bank: MemoryBank, base: Base, facts: list[Example]) -> list[bool]:
    """Which of `facts` module version `info` recalls (teacher-forced exact match)."""
    from loramem.adapters import load_adapter
    from loramem.evaluate import teacher_forced_em

    host = load_adapter(base, bank.verified_path(info), "bank_before")
    try:
        return teacher_forced_em(host, base, facts, info.format)
    finally:
        host.delete_adapter("bank_before")


def next_module_name(bank: MemoryBank, name: str) -> str:
    """NAME.u1, NAME.u2, ...: the first that has never been written to the bank."""
    k = 1
    while bank.versions(f"{name}.u{k}"):
        k += 1
    return check_name(f"{name}.u{k}")


def _new_module(bank: MemoryBank, info: ModuleInfo, base: Base, new: list[Example], given: dict | None,
                src: dict, data_license: str | None) -> tuple[ModuleInfo, dict]:
    """The new facts as a module of their own, of the updated module's shape unless given otherwise."""
    name = next_module_name(bank, info.name)
    cfg = module_config(info, given, keep_shape=False)
    folder, record, hits = train_version(bank, name, base, cfg, new, new, {}, data_license=data_license)
    shadowed = sorted({fact_key(e) for e in new} & set(info.keys))
    report = {"mode": "new-module", "from": info.id, "new": len(new), "corrected": 0, "replay": 0,
              "n_facts": len(new), "exact_match": record["exact_match_union"], "exact_match_new":
              record["exact_match_union"], "shadows": len(shadowed), "train_s": record.get("train_s"),
              "source": next(iter(src))}
    item = NewModule(folder, name, record_update(folder, record, report), key_text(new), [fact_key(e) for e in new], src,
                     info.view_mix, row_texts(new), facts=new)
    return bank.add_folders([item], move=True)[0], report


def retire_facts(bank: MemoryBank, name: str, keys_file: str | Path, base: Base,
                 given: dict | None = None) -> tuple[ModuleInfo, dict]:
    """The next version of `name`: rewritten from a fresh init on its facts without those `keys_file` names,
    checked not to answer them (beyond what the base model alone answers)."""
    check_name(name)
    check_base(bank, base)
    info = bank.get(name)
    keys = read_keys(keys_file)
    facts = bank.facts(info)
    have = {fact_key(e) for e in facts}
    missing = [k for k in keys if k not in have]
    if missing:
        raise UserError(f"{len(missing)} of the keys in {keys_file} are not facts of {info.id} (e.g. "
                        f"{missing[0]!r}); see `loramem bank show {name} --bank {bank.root}` and fix the file")
    gone = set(keys)
    keep = [e for e in facts if fact_key(e) not in gone]
    retired = [e for e in facts if fact_key(e) in gone]
    if not keep:
        raise UserError(f"that retires every fact of {info.id}; remove the module with `loramem bank rm {name} "
                        f"--bank {bank.root}` instead")
    cfg = module_config(info, given, keep_shape=False)
    folder, record, hits = train_version(bank, name, base, cfg, keep, keep, {"retired": retired})
    by_base = _base_recalls(base, retired, cfg.format)
    answered = [fact_key(e) for e, h, b in zip(retired, hits["retired"], by_base, strict=True) if h and not b]
    report = {"mode": "retire", "from": info.id, "retired": len(retired), "n_facts": len(keep),
              "exact_match": record["exact_match_union"], "retired_answered": share(hits["retired"]),
              "retired_answered_by_base": share(by_base), "method": "rewrite without the facts (fresh init)",
              "train_s": record.get("train_s"), "source": str(keys_file)}
    if answered:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckFailed(f"{name}: the rewritten version still answers {len(answered)} retired facts the base "
                          f"model alone does not (e.g. {answered[0]!r}); nothing was changed")
    item = NewModule(folder, name, record_update(folder, record, report), updated_key_text(info, facts, keep),
                     [fact_key(e) for e in keep], info.sources, info.view_mix, row_texts(keep), facts=keep)
    return bank.add_folders([item], move=True)[0], report


def _base_recalls(base: Base, facts: list[Example], fmt: str) -> list[bool]:
    """Which facts the base model answers with no module active."""
    from loramem.answer.pipeline import memory_off
    from loramem.evaluate import teacher_forced_em

    model, off = memory_off(base)
    with off:
        return teacher_forced_em(model, base, facts, fmt)
