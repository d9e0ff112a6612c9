"""The shared set-up of the multi-module recipes (Q8-Q11): one PhoneBook split into N small modules in a real
bank, plus one large module of the same total parameter budget trained on all of it.

The bank is cached under $LORAMEM_HOME/experiments/<hash of model, facts and writer>, so the four recipes (and a
rerun) train it once; each module is written only if the bank lacks it, so an interrupted set-up resumes.
Evaluation is teacher-forced exact match (the same verdict as greedy generation, one forward pass); each fact's
argmax answer, its scores and the module(s) that answered are kept in the row (`predictions`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import fact_key, key_text, split_even, suffixes
from loramem.bank.resident import Resident
from loramem.bank.store import MemoryBank
from loramem.config import WriterConfig, loramem_home
from loramem.data import phonebook
from loramem.errors import UserError
from loramem.formats import Example
from loramem.models import Base, load_base
from loramem.reads import Read
from loramem.runs.runner import RecipeOptions

# Smoke: 48 facts over 4 rank-1 all-linear modules on the top 6 layers vs one rank-4 module on the same layers
# (same parameter count, same epochs). Small batches: more updates per token, so facts stick within minutes.
SCALES: dict[str, dict] = {
    "smoke": {"facts": 48, "modules": 4, "small_rank": 1, "top_k": 3, "icl_questions": 48,
              "writer": {"targets": "all-linear", "layers": "top 6", "lr": 5e-3, "epochs": 20, "batch_size": 4}},
    # cpu: smoke's recipe (which decided oracle-multi-beats-single at n = 48) on 160 facts over 8 modules
    "cpu": {"facts": 160, "modules": 8, "small_rank": 1, "top_k": 3, "icl_questions": 100,
            "writer": {"targets": "all-linear", "layers": "top 6", "lr": 5e-3, "epochs": 25, "batch_size": 4}},
    # the paper's 128K PhoneBook in its 16 released sectors (needs --paper-data), all-linear modules
    "paper": {"facts": None, "modules": 16, "small_rank": 16, "top_k": 3, "icl_questions": 200,
              "writer": {"targets": "all-linear", "lr": 1e-3, "epochs": 100, "batch_size": 8}},
}


@dataclass
class Setup:
    """A trained multi-module bank: the N part modules, the single large module, and every fact's gold part."""

    bank: MemoryBank
    base: Base
    parts: list[ModuleInfo]
    single: ModuleInfo
    entries: list[phonebook.Entry]
    gold: list[int]  # part index of each entry
    grid: dict
    resident: Resident

    def examples(self, idx: list[int] | None = None) -> list[Example]:
        idx = range(len(self.entries)) if idx is None else idx
        return [self.entries[i].example() for i in idx]



def budget_ablation(scale: str) -> dict | None:
    """findings.ABLATIONS: the bank (its parts and the single module) trained at half the learning rate for twice
    the epochs. In the cpu run the single rank-8 module's loss went from 2.44 only to 1.61 in 1,000 steps at a
    constant 5e-3 (exact match 0 on its 160 facts), while each rank-1 part fell to 0.006 in under 100 steps: a step
    too large for the larger rank is the likelier cause, and the longer run keeps the total step budget."""
    w = SCALES[scale]["writer"]
    if not w.get("epochs"):
        return None
    return {"writer": {"epochs": 2 * w["epochs"], "lr": w["lr"] / 2}}

def grid(opts: RecipeOptions) -> dict:
    """The scale's settings with the recipe's --modules/--facts/--top-k overrides."""
    g = {**SCALES[opts.scale]}
    g["writer"] = dict(g["writer"])
    for k, v in (opts.params.get("writer") or {}).items():  # None removes a setting (e.g. layers: all layers)
        if v is None:
            g["writer"].pop(k, None)
        else:
            g["writer"][k] = v
    for k in ("facts", "modules", "top_k", "small_rank"):
        if opts.params.get(k) is not None:
            g[k] = opts.params[k]
    if g["modules"] < 2:
        raise UserError("multi-module recipes need --modules 2 or more")
    return g


def _facts(g: dict, opts: RecipeOptions) -> tuple[list[phonebook.Entry], list[int]]:
    if opts.scale == "paper" or (opts.paper_data is not None and g["facts"] is None):
        if opts.paper_data is None:
            raise UserError("the paper scale reads the 128K PhoneBook sectors: pass --paper-data RELEASE_DIR")
        meta = Path(opts.paper_data) / "pb_cf" / "phonebook_qa_128K_routing_meta.json"
        sectors = phonebook.read_sectors(meta)[: g["modules"]]
        entries = [e for s in sectors for e in s.entries]
        gold = [i for i, s in enumerate(sectors) for _ in s.entries]
        return entries, gold
    entries = phonebook.generate(int(g["facts"]), opts.seed)
    gold = [0] * len(entries)
    for i, r in enumerate(split_even(len(entries), g["modules"])):
        for j in r:
            gold[j] = i
    return entries, gold


def setup(opts: RecipeOptions) -> Setup:
    """Build (or reuse) the bank of N small modules plus the single large module for these options."""
    from loramem.bank.partition import Part
    from loramem.bank.write import write_part, write_parts

    g = grid(opts)
    base = load_base(opts.model)
    entries, gold = _facts(g, opts)
    recipe = {"model": base.fingerprint, "facts": [e.row() for e in entries[:3]], "n": len(entries), "grid": g,
              "seed": opts.seed, "v": 2}  # v2: banks with row keys (a v1 bank's routers fell back to key texts)
    tag = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    bank = MemoryBank(loramem_home() / "experiments" / f"multi-{tag}")
    have = {m.name for m in bank.list()}
    wcfg = dict(g["writer"], seed=opts.seed, progress=False)
    src = Path(f"phonebook-seed{opts.seed}") if opts.paper_data is None else Path(opts.paper_data)
    names = [f"part{s or '-0'}" for s in suffixes(g["modules"])]
    missing = []
    for i, name in enumerate(names):
        if name not in have:
            ex = [entries[j].example() for j in range(len(entries)) if gold[j] == i]
            missing.append(Part(name, ex, key_text(ex), [fact_key(e) for e in ex], src))
    if missing:  # the small modules train together, in one pass over the base (each its own module)
        write_parts(missing, bank, "", base, WriterConfig(rank=g["small_rank"], **wcfg))
    if "single" not in have:
        ex = [e.example() for e in entries]
        write_part(Part("", ex, key_text(ex), [fact_key(e) for e in ex], src), bank, "single", base,
                   WriterConfig(rank=g["small_rank"] * g["modules"], **wcfg))
    mods = {m.name: m for m in bank.list()}
    return Setup(bank, base, [mods[n] for n in names], mods["single"], entries, gold, g,
                 Resident(bank, base, capacity=64))


def read(s: Setup, adapter: str | None, idx: list[int]) -> list[Read]:
    """Facts `idx` read back under teacher forcing with one adapter active: per fact the argmax at each answer
    token (digits and terminator) and which are right. Its token accuracy is a softer read-out than exact match
    that shows partial damage (e.g. from merging)."""
    from loramem.formats import render
    from loramem.reads import read_items

    host = s.resident.activate(adapter)
    items = [render(e, s.base.tokenizer, s.parts[0].format) for e in s.examples(idx)]
    return read_items(host, items, s.base.tokenizer.pad_token_id)


def eval_groups(s: Setup, groups: dict[tuple, list[int]], activate) -> dict[int, Read]:
    """Each fact read back (see `read`), where facts sharing a key share an adapter: activate(key) -> adapter name."""
    reads: dict[int, Read] = {}
    for key, idx in groups.items():
        reads.update(zip(idx, read(s, activate(key), idx), strict=True))
    return reads


def predictions(s: Setup, reads: dict[int, Read], modules=None) -> dict:
    """The row fields that keep every fact's question, gold number, teacher-forced prediction and scores (see
    runs.runner.kept_predictions); `modules(i)` adds which module(s) answered fact i."""
    from loramem.runs.runner import kept_predictions

    tok = s.base.tokenizer
    preds = []
    for i in sorted(reads):
        r, e = reads[i], s.entries[i]
        preds.append({"question": e.question(), "gold": e.number, "gold_module": s.parts[s.gold[i]].name,
                      **({"modules": modules(i)} if modules else {}),
                      "prediction": tok.decode(r.pred_ids, skip_special_tokens=True).strip(),
                      "exact": r.exact, "token_accuracy": round(r.token_accuracy, 4)})
    return {**kept_predictions(preds), "predictions_by": "teacher-forced argmax at each answer token"}


def scores(reads: dict[int, Read]) -> dict:
    """Exact match and answer-token accuracy over the facts read, with 95% intervals and n."""
    from loramem.intervals import interval, rounded

    exact = [r.exact for r in reads.values()]
    tok = [r.token_accuracy for r in reads.values()]
    return {"accuracy": mean(exact), "accuracy_ci": rounded(interval(exact)), "token_accuracy": mean(tok),
            "token_accuracy_ci": rounded(interval(tok)), "n_eval": len(reads)}


def questions(s: Setup) -> list[str]:
    return [e.question() + "?" for e in s.entries]
