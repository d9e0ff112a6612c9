"""Continual memory (beyond the paper): k rounds of new facts and corrections written into a bank, and what each
update strategy keeps. The paper names "multiple updates, version rollbacks" as its open limitation.

Per round and strategy, on facts written so far (latest values): `retention` (teacher-forced exact match on all
of them, through the bank's embed router when there are several modules), `latest` (on this round's facts),
`old_value_rate` (corrected facts that still give an old value), `base_probe` (share of a fixed probe of general
prompts, cf.KNOWN_FACTS, whose greedy answer's first word is the base model's own from before any write), routing
accuracy and the cost (train seconds, parameters, modules served). Each row carries Wilson 95% intervals.

Strategies, all through the bank's update API (bank/update.py, bank/consolidate.py):
- `append-replay`: `--update append|correct` with a replay of `replay` of the module's own facts;
- `append-no-replay`: the same with replay 0;
- `new-module`: each round its own module (`--update new-module`), the embed router decides;
- `consolidate`: a new module each round, and every `every` rounds all of them retrained into one
  (`bank consolidate`, rank = sum of ranks; a refused recall check is recorded and the modules stay).

Datasets: `phonebook` (fresh PhoneBook entries each round) and `corrections` (CounterFact-style: from round 2, half
of a round changes the number of an entry written earlier, the other half is new). Each (dataset, strategy, rank,
seed) is one bank under OUT/banks/; a round's cell first replays any missing earlier round into it, so a rerun
resumes and cells need not run in order. Extra ranks (`probe_ranks`) run append-replay on PhoneBook for the
forgetting-of-base-knowledge-vs-rank plot.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from loramem.formats import Example
from loramem.runs.runner import Recipe, RecipeOptions

STRATEGIES = ("append-replay", "append-no-replay", "new-module", "consolidate")
DATASETS = ("phonebook", "corrections")
NAME = "mem"

# smoke fits 2 minutes on tiny-random (which learns no PhoneBook fact: it checks the mechanics and the base probe);
# cpu is a real run on smollm2-135m (hours). "top 6": LoRA on the top 6 layers, whatever the depth.
SCALES: dict[str, dict] = {
    # smoke: 12 cells. On smollm2 its 8 steps a round learn nothing (the cpu scale is where this is measured), so
    # the demo keeps what shows the mechanics: PhoneBook with and without replay and a module per round, and
    # corrections with a module per round (consolidate and the rank probe were cut to fit make demo in 15 minutes)
    "smoke": {"rounds": 3, "facts": 12, "rank": 4, "probe_ranks": [], "replay": 12, "every": 2, "probes": 16,
              "strategies": ["append-replay", "append-no-replay", "new-module"], "corrections": ["new-module"],
              "writer": {"layers": "top 6", "lr": 1e-2, "steps": 8, "batch_size": 16, "target_em": 1.0,
                         "precision": "fp32"}},
    # cpu: 4 rounds of 20 facts (80 by the last round: the replay finding's n), 8 banks x 4 rounds = 32 cells of
    # at most 40 facts each, early stop once all are recalled (docs/datasheets/cpu-design.md: cut from 5 rounds and
    # 9 banks when the first sittings ran longer than estimated)
    "cpu": {"rounds": 4, "facts": 20, "rank": 4, "probe_ranks": [1, 16], "replay": 20, "every": 2, "probes": 40,
            "corrections": ["append-replay", "new-module"],
            "writer": {"layers": "top 6", "lr": 1e-2, "epochs": 30, "batch_size": 8, "target_em": 1.0}},
    "paper": {"rounds": 20, "facts": 200, "rank": 16, "probe_ranks": [4, 64, 256], "replay": 200, "every": 5,
              "probes": 40, "writer": {"lr": 1e-3, "epochs": 100, "batch_size": 8, "target_em": 1.0}},
}


def grid(opts: RecipeOptions) -> dict:
    g = {**SCALES[opts.scale]}
    p = opts.params
    for k in ("rounds", "facts", "rank", "replay", "every", "probes"):
        if p.get(k) is not None:
            g[k] = p[k]
    g["writer"] = {**g["writer"], **{k: v for k, v in (p.get("writer") or {}).items() if v is not None}}
    g["strategies"] = p.get("strategies") or g.get("strategies") or list(STRATEGIES)
    g["datasets"] = p.get("datasets") or list(DATASETS)
    g["probe_ranks"] = p.get("probe_ranks", g["probe_ranks"])
    from loramem.errors import UserError

    bad = [s for s in g["strategies"] if s not in STRATEGIES] + [d for d in g["datasets"] if d not in DATASETS]
    if bad:
        raise UserError(f"unknown {bad}; strategies: {', '.join(STRATEGIES)}; datasets: {', '.join(DATASETS)}")
    if g["rounds"] < 2 or g["facts"] < 2:
        raise UserError("continual learning needs --rounds 2 or more and --facts 2 or more per round")
    return g


def ablation(scale: str, which: str) -> dict:
    """findings.ABLATIONS: one strategy on PhoneBook with one setting changed. `replay-budget`: append-replay with
    twice the epochs; `more-rounds`: a new module per round over twice the rounds; `half-lr`: append-replay (and
    its probe ranks) at half the learning rate."""
    s = SCALES[scale]
    w = s["writer"]
    one = {"datasets": ["phonebook"], "probe_ranks": []}
    if which == "replay-budget":
        budget = "epochs" if "epochs" in w else "steps"
        return {**one, "strategies": ["append-replay"], "writer": {budget: 2 * w[budget]}}
    if which == "more-rounds":
        return {**one, "strategies": ["new-module"], "rounds": 2 * s["rounds"]}
    if which == "half-lr":
        return {**one, "strategies": ["append-replay"], "probe_ranks": s["probe_ranks"], "writer": {"lr": w["lr"] / 2}}
    raise ValueError(f"unknown continual ablation {which!r}")


def cells(opts: RecipeOptions) -> list[dict]:
    g = grid(opts)
    # consolidating modules that hold two values for one key is refused by design (bank consolidate), so the
    # corrections run has no consolidate strategy: new-module already shows where such corrections end up
    fixes = g.get("corrections") or [s for s in STRATEGIES if s != "consolidate"]
    runs = [(d, s, g["rank"]) for d in g["datasets"] for s in g["strategies"]
            if not (d == "corrections" and (s == "consolidate" or (s not in fixes and not opts.params.get("strategies"))))]
    if "phonebook" in g["datasets"]:
        runs += [("phonebook", "append-replay", r) for r in g["probe_ranks"] if r != g["rank"]]
    return [{"cell": f"{d}-{s}-r{r}-k{k}", "dataset": d, "strategy": s, "rank": r, "main_rank": g["rank"], "round": k, "rounds": g["rounds"],
             "facts_per_round": g["facts"], "train_seed": opts.seed}
            for d, s, r in runs for k in range(1, g["rounds"] + 1)]


# ---- the facts of each round ----------------------------------------------------------------------------


def rounds_of(dataset: str, rounds: int, per_round: int, seed: int) -> list[list[tuple[Example, str | None]]]:
    """Each round's facts as (fact, old value or None): PhoneBook entries; with `corrections`, from round 2 half
    of a round gives an entry written earlier a new number (never the same entry twice)."""
    from loramem.data import phonebook

    book = phonebook.generate(rounds * per_round, seed)
    numbers = [e.number for e in phonebook.generate(rounds * per_round, seed + 7919)]
    rng = random.Random(seed)
    out, written, fresh, current = [], [], iter(book), {}
    for k in range(rounds):
        n_fix = per_round // 2 if dataset == "corrections" and k > 0 else 0
        fixes = rng.sample([e for e in written if e.name not in current], min(n_fix, len(written)))
        rnd = []
        for e in fixes:
            new = next(n for n in numbers[len(current):] + numbers if n != e.number)
            current[e.name] = new
            rnd.append((Example(e.example().prompt, new, e.name), e.number))
        for _ in range(per_round - len(fixes)):
            e = next(fresh)
            written.append(e)
            rnd.append((e.example(), None))
        out.append(rnd)
    return out


def truth_after(plan: list[list[tuple[Example, str | None]]], k: int) -> tuple[dict[str, Example], dict[str, str]]:
    """After round k: every key's latest fact, and the old value of each corrected key."""
    latest, old = {}, {}
    for rnd in plan[:k]:
        for e, was in rnd:
            latest[e.key] = e
            if was is not None:
                old[e.key] = was
    return latest, old


# ---- applying a round -------------------------------------------------------------------------------------


def _writer(g: dict, rank: int, seed: int):
    from loramem.config import WriterConfig

    w = dict(g["writer"])
    return WriterConfig(rank=rank, seed=seed, progress=False, **w)


def apply_round(bank, base, cell: dict, g: dict, plan, k: int, folder: Path) -> dict:
    """Write round k's facts into the bank by the cell's strategy; returns cost and what the update reported."""
    from loramem.bank.consolidate import consolidate
    from loramem.bank.partition import Part, fact_key, key_text
    from loramem.bank.update import CheckFailed, update_module
    from loramem.bank.write import write_part

    facts = [e for e, _ in plan[k - 1]]
    f = folder / f"round-{k:02d}.jsonl"
    f.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, "key": e.key}) + "\n" for e in facts))
    s = cell["strategy"]
    if k == 1:
        cfg = _writer(g, cell["rank"], cell["train_seed"])
        info = write_part(Part("", facts, key_text(facts), [fact_key(e) for e in facts], f), bank, NAME, base, cfg)
        return {"train_s": info.record.get("train_s", 0.0), "update": "write"}
    if s in ("append-replay", "append-no-replay"):
        mode = "correct" if any(was is not None for _, was in plan[k - 1]) else "append"
        replay = g["replay"] if s == "append-replay" else 0
        try:
            _, rep = update_module(f, bank, NAME, base, mode, replay=replay)
        except CheckFailed as exc:  # an old value survived: the bank keeps the previous version
            return {"train_s": 0.0, "update": f"refused: {exc}"}
        return {"train_s": rep.get("train_s") or 0.0, "update": mode, "replay": rep["replay"]}
    _, rep = update_module(f, bank, NAME, base, "new-module")
    out = {"train_s": rep.get("train_s") or 0.0, "update": "new-module"}
    if s == "consolidate" and k % g["every"] == 0:
        names = [m.name for m in bank.list()]
        try:
            _, c = consolidate(bank, names, NAME, base)
            out.update(train_s=out["train_s"] + (c.get("train_s") or 0.0), consolidated=len(names))
        except CheckFailed as exc:
            out.update(consolidated=0, update=f"new-module; consolidation refused: {exc}")
    return out


def _state(folder: Path) -> dict:
    f = folder / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {"round": 0, "train_s_total": 0.0}


def bank_at_round(cell: dict, g: dict, opts: RecipeOptions, base, plan) -> tuple[object, dict]:
    """The cell's bank with rounds 1..k applied (missing ones applied now, in order), and this round's cost."""
    from loramem.bank.store import MemoryBank

    key = f"{cell['dataset']}-{cell['strategy']}-r{cell['rank']}-s{cell['train_seed']}"
    folder = Path(opts.out) / "banks" / key
    state = _state(folder)
    if state["round"] == 0 and folder.exists():  # a first round that died before its state: start clean
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bank = MemoryBank(folder / "bank")
    cost = state.get("last", {})
    for k in range(state["round"] + 1, cell["round"] + 1):
        cost = apply_round(bank, base, cell, g, plan, k, folder)
        state = {"round": k, "train_s_total": state["train_s_total"] + cost["train_s"], "last": cost}
        (folder / "state.json").write_text(json.dumps(state))
    if state["round"] > cell["round"]:
        raise ValueError(f"bank {key} is already past round {cell['round']}: delete {folder} to rerun it")
    return bank, {**cost, "train_s_total": state["train_s_total"]}


# ---- measuring ------------------------------------------------------------------------------------------


def wilson(k: int, n: int) -> list[float]:
    """95% Wilson interval of a proportion k/n ([0, 1] when n = 0)."""
    if n == 0:
        return [0.0, 1.0]
    z, p = 1.959964, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


_BASE_ANSWERS: dict[tuple, list[str]] = {}


def _probe(base, n: int) -> tuple[list[Example], list[str]]:
    """The fixed general-knowledge probe and the base model's own greedy answers to it (once per process)."""
    from loramem.answer.pipeline import memory_off
    from loramem.data.counterfact import KNOWN_FACTS
    from loramem.evaluate import generate_answers

    probes = [Example(q, a) for q, a in KNOWN_FACTS[:n]]
    key = (base.fingerprint, n)
    if key not in _BASE_ANSWERS:
        model, off = memory_off(base)
        with off:
            _BASE_ANSWERS[key] = generate_answers(model, base, probes, "plain", max_new_tokens=4)
    return probes, _BASE_ANSWERS[key]


def _word(answer: str) -> str:
    """What a probe answer says: its first word (the object of "The capital of France is ..."), lower-cased."""
    from loramem.likelihood import first_words

    return first_words(answer, 1).lower()


def measure(bank, base, facts: list[Example], latest_keys: set[str], old: dict[str, str], n_probes: int) -> dict:
    """Retention, latest, old values, base probe and routing of the bank's served modules."""
    from loramem.bank.partition import fact_key
    from loramem.bank.resident import Resident
    from loramem.bank.routing import build_router, route_many
    from loramem.bank.rowkeys import row_text
    from loramem.evaluate import generate_answers, teacher_forced_em

    mods = bank.list()
    resident = Resident(bank, base, capacity=len(mods) + 2)
    probes, before = _probe(base, n_probes)
    held = [{(fact_key(e), e.answer) for e in bank.facts(m)} for m in mods]
    if len(mods) == 1:
        picked, picked_probe = [0] * len(facts), [0] * len(probes)
    else:
        router = build_router("embed", mods, keys=bank.row_keys(mods))
        picked = [mods.index(r[0].module) for r in route_many(router, [row_text(e) for e in facts], 1)]
        picked_probe = [mods.index(r[0].module) for r in route_many(router, [p.prompt for p in probes], 1)]
    gold = [next((i for i, h in enumerate(held) if (e.key, e.answer) in h), -1) for e in facts]

    def em_by(assign: list[int], items: list[Example]) -> list[bool]:
        out = [False] * len(items)
        for i in set(assign):
            idx = [j for j, a in enumerate(assign) if a == i]
            if i < 0:
                continue
            host = resident.activate(resident.ensure(mods[i]))
            for j, h in zip(idx, teacher_forced_em(host, base, [items[j] for j in idx], mods[i].format), strict=True):
                out[j] = h
        return out

    hits = em_by(picked, facts)
    oracle = em_by(gold, facts) if len(mods) > 1 else hits
    fixed = [j for j, e in enumerate(facts) if e.key in old]
    old_hits = em_by([picked[j] for j in fixed], [Example(facts[j].prompt, old[facts[j].key]) for j in fixed])
    answers = [""] * len(probes)
    for i in set(picked_probe):
        idx = [j for j, a in enumerate(picked_probe) if a == i]
        host = resident.activate(resident.ensure(mods[i]))
        for j, a in zip(idx, generate_answers(host, base, [probes[j] for j in idx], "plain", max_new_tokens=4),
                        strict=True):
            answers[j] = a
    resident.clear()
    latest = [h for e, h in zip(facts, hits, strict=True) if e.key in latest_keys]
    same = sum(_word(a) == _word(b) for a, b in zip(answers, before, strict=True))
    routed = sum(p == g for p, g in zip(picked, gold, strict=True))
    return {"retention": sum(hits) / len(hits), "retention_ci": wilson(sum(hits), len(hits)), "n_facts": len(hits),
            "latest": sum(latest) / len(latest), "latest_ci": wilson(sum(latest), len(latest)), "n_latest": len(latest),
            "retention_oracle": sum(oracle) / len(oracle), "routing_accuracy": routed / len(facts),
            "routing_ci": wilson(routed, len(facts)), "n_corrected": len(fixed),
            "old_value_rate": sum(old_hits) / len(fixed) if fixed else None,
            "old_value_ci": wilson(sum(old_hits), len(fixed)) if fixed else None,
            "base_probe": same / len(probes), "base_probe_ci": wilson(same, len(probes)), "n_probes": len(probes),
            "modules": len(mods), "n_params": sum(m.n_params for m in mods),
            # per fact, in the order facts were first written: for paired comparisons between strategies and rounds
            "hits": "".join("01"[h] for h in hits), "routed": "".join("01"[p == g] for p, g in zip(picked, gold,
                                                                                                   strict=True))}


def run_cell(cell: dict, opts: RecipeOptions) -> dict:
    import time

    from loramem.models import load_base

    g = grid(opts)
    base = load_base(opts.model)
    plan = rounds_of(cell["dataset"], cell["rounds"], cell["facts_per_round"], cell["train_seed"])
    t0 = time.time()
    bank, cost = bank_at_round(cell, g, opts, base, plan)
    latest, old = truth_after(plan, cell["round"])
    this_round = {e.key for e, _ in plan[cell["round"] - 1]}
    facts = list(latest.values())
    row = measure(bank, base, facts, this_round, old, g["probes"])
    return {**row, **cost, "round_s": round(time.time() - t0, 2)}


from loramem.experiments.continual_report import summarize  # noqa: E402  (tables, plots and findings)

RECIPE = Recipe("continual", "Beyond the paper: memory that changes over k update rounds (retention, corrections, "
                "base knowledge, cost)", cells, run_cell, summarize)
