"""Many small modules become one: `loramem bank consolidate --bank B --names a,b,c --into Y`.

Two ways, both checked the same way before anything changes:
- `retrain` (default): Y is written from a fresh init on the union of their facts, of rank sum(ranks) unless given
  (the same parameter count, so capacity is not what a failure comes from; `loramem plan` says what fits);
- `cat`: Y is their exact sum in weight-update space (merging.cat with weight 1 each: rank = sum of ranks,
  Y's update = a's + b's + c's, no training). Exact as weights, not as answers: each module's update now also acts
  on the others' questions, which is what the check measures.

The check: every fact that a, b or c recalled (teacher-forced exact match, each with its own module) must be
recalled by Y (`min_recall`: the share of them that must be, default all). Passed, Y is added and a, b, c stop
being served in the same manifest transaction (their versions stay: `bank rollback a` serves a again); failed,
nothing changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loramem.bank.folders import check_name
from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import KEY_TEXT_CHARS, fact_key
from loramem.bank.rowkeys import row_texts
from loramem.bank.store import MemoryBank, NewModule
from loramem.bank.update import (
    CheckFailed,
    check_base,
    module_config,
    recalled_by,
    record_update,
    share,
    train_version,
)
from loramem.errors import UserError
from loramem.formats import Example
from loramem.models import Base

METHODS = ("retrain", "cat")
ADAPTER = "bank_consolidated"


def _inputs(bank: MemoryBank, names: list[str], into: str) -> list[ModuleInfo]:
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--names needs two or more different modules, got {','.join(names) or 'none'}")
    check_name(into)
    infos = [bank.get(n) for n in names]  # each must be served
    if into not in names and bank.versions(into):
        raise UserError(f"module '{into}' already exists; pick a new --into name, or list it in --names to make "
                        "its next version the consolidated one")
    for k in ("targets", "layers", "format", "loss"):
        got = {str(i.record.get("config", {}).get(k)) for i in infos}
        if len(got) > 1:
            raise UserError(f"--names modules differ in {k} ({', '.join(sorted(got))}); consolidate modules of one "
                            "shape at a time")
    return infos


def union_facts(bank: MemoryBank, infos: list[ModuleInfo]) -> tuple[list[Example], list[list[Example]]]:
    """The union of the modules' facts (each key once) and each module's own facts; two values for one key are
    refused."""
    per = [bank.facts(i) for i in infos]
    seen: dict[str, tuple[Example, str]] = {}
    for info, facts in zip(infos, per, strict=True):
        for e in facts:
            k = fact_key(e)
            if k in seen and seen[k][0].answer != e.answer:
                raise UserError(f"{seen[k][1]} and {info.id} hold different values for {k!r}; correct one of them "
                                "first (`loramem write FILE --update correct`)")
            seen.setdefault(k, (e, info.id))
    return [e for e, _ in seen.values()], per


def consolidate(bank: MemoryBank, names: list[str], into: str, base: Base, given: dict | None = None,
                method: str = "retrain", min_recall: float = 1.0) -> tuple[ModuleInfo, dict]:
    """Write Y = one module for the facts of `names`, check it recalls what they recalled, then serve Y in their
    place. Returns (Y's version, what was measured)."""
    if method not in METHODS:
        raise UserError(f"unknown --method '{method}'; choose from {', '.join(METHODS)}")
    if not 0 <= min_recall <= 1:
        raise UserError(f"--min-recall must be in [0, 1], got {min_recall}")
    check_base(bank, base)
    infos = _inputs(bank, names, into)
    union, per = union_facts(bank, infos)
    before = [recalled_by(i, bank, base, f) for i, f in zip(infos, per, strict=True)]
    recalled = {fact_key(e) for f, hits in zip(per, before, strict=True) for e, h in zip(f, hits, strict=True) if h}
    if method == "cat":
        folder, record, hits = _cat(bank, infos, base, union)
    else:
        given = dict(given or {})
        given.setdefault("rank", None)
        if given["rank"] is None:
            given["rank"] = sum(i.rank for i in infos)
        cfg = module_config(infos[0], given, keep_shape=False)
        folder, record, hits = train_version(bank, into, base, cfg, union, union, {})
        hits = hits["union"]
    after = {fact_key(e) for e, h in zip(union, hits, strict=True) if h}
    lost = sorted(recalled - after)
    recall = 1.0 if not recalled else 1 - len(lost) / len(recalled)
    report = {"mode": "consolidate", "method": method, "from": [i.id for i in infos], "merged": len(infos),
              "n_facts": len(union), "recalled_before": len(recalled), "recall_of_recalled": round(recall, 4),
              "exact_match": share(hits), "exact_match_before": [share(h) for h in before],
              "rank": record["config"]["rank"], "n_params": record.get("n_params"), "train_s": record.get("train_s")}
    if recall < min_recall:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckFailed(f"{into} recalls {recall:.3f} of the {len(recalled)} facts {', '.join(names)} recalled "
                          f"(lost e.g. {lost[0]!r}; --min-recall {min_recall}); nothing was changed. Train longer "
                          "(--steps), give a larger --rank, or lower --min-recall")
    item = NewModule(folder, into, record_update(folder, record, report),
                     "; ".join(i.key_text for i in infos)[:KEY_TEXT_CHARS], [fact_key(e) for e in union],
                     {k: v for i in infos for k, v in i.sources.items()}, infos[0].view_mix, row_texts(union),
                     facts=union)
    return bank.add_folders([item], move=True, retire=[n for n in names if n != into])[0], report


def _cat(bank: MemoryBank, infos: list[ModuleInfo], base: Base, union: list[Example]):
    """Y = the exact sum of the modules' updates, saved as a PEFT folder in the bank's staging area."""
    import time

    from loramem.adapters import adapter_params, load_adapter, package_versions, save_adapter
    from loramem.bank.merging import merge_into
    from loramem.config import MergeConfig
    from loramem.evaluate import teacher_forced_em
    from loramem.formats import knowledge_tokens

    t0 = time.time()
    adapters = [f"bank_in_{k}" for k in range(len(infos))]
    for a, info in zip(adapters, infos, strict=True):
        host = load_adapter(base, bank.verified_path(info), a)
    staging = bank.new_staging()
    try:
        merge_into(host, adapters, [1.0] * len(infos), ADAPTER, MergeConfig(method="cat"))
        host.set_adapter(ADAPTER)
        rank = sum(i.rank for i in infos)
        conf = {**infos[0].record.get("config", {}), "rank": rank, "alpha": float(rank), "rslora": False}
        fmt = conf.get("format", "plain")
        hits = teacher_forced_em(host, base, union, fmt)
        record = {"base": infos[0].record["base"], "config": conf, "n_examples": len(union),
                  "knowledge_tokens": knowledge_tokens(union, base.tokenizer, fmt), "steps": 0, "stopped": "merged",
                  "exact_match": share(hits), "n_params": sum(p.numel() for p in adapter_params(host, ADAPTER)),
                  "merge": {"method": "cat", "weights": [1.0] * len(infos), "inputs": [i.id for i in infos]},
                  "train_s": 0.0, "wall_s": round(time.time() - t0, 2), "packages": package_versions(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        save_adapter(host, ADAPTER, staging, record)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for a in [*adapters, ADAPTER]:
            if a in host.peft_config:
                host.delete_adapter(a)
    return Path(staging), record, hits
