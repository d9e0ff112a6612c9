"""The datasheet's ablations: for every finding that disagrees (and those declared `always`), the one ablation
declared for it (findings.ABLATIONS), either a rerun of its recipe with one setting changed, into
DIR/ablations/KEY/RECIPE/ (it resumes), or the finding recomputed from the main rows by another check."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from loramem import experiments, findings
from loramem.runs.runner import read_rows, run_recipe_status

console = Console(stderr=True)


class Pipeline:
    """run_parallel's `follow`: once a unit of main recipes finishes, their findings are judged and the ablation
    reruns those verdicts call for are queued at once, so they run beside the main recipes still going (the first
    cpu run left a core idle for its last hour, then ran every rerun after)."""

    def __init__(self, out: Path, names: list[str], model: str, scale: str, seed: int, paper_data: Path | None,
                 progress: bool, params: dict[str, dict] | None) -> None:
        self.out, self.names, self.args = out, names, (model, scale, out, seed, paper_data, progress, params)
        self.judged: set[str] = set()
        self.started: dict[str, tuple] = {}

    def __call__(self, status: dict[str, dict]) -> list[list[tuple]]:
        done = [n for n in self.names if n in status and n not in self.judged]
        self.judged.update(done)
        if not done:
            return []
        rows = {n: [r for r in read_rows(self.out / n / "results.jsonl") if r.get("recipe") == n
                    and r.get("status") == "ok"] for n in done}  # as run_datasheet reads them for the verdicts
        verdicts = [v for v in findings.evaluate(rows) if findings.by_id(v["name"]).recipe in done]
        new = {n: r for n, r in plan_ablations(verdicts, *self.args)[1].items() if n not in self.started}
        self.started.update(new)
        return [[new[n] for n in unit] for unit in _rerun_units(new)]


def plan_ablations(verdicts: list[dict], model: str, scale: str, out: Path, seed: int = 0,
                   paper_data: Path | None = None, progress: bool = True,
                   params: dict[str, dict] | None = None) -> tuple[list[tuple], dict[str, tuple]]:
    """What the verdicts call for: (todo, reruns). todo: (verdict, finding, ablation, entry) for every finding that
    disagrees (or whose ablation runs `always`); reruns: `recipe@key` -> (recipe, options) for those that rerun a
    recipe with a setting changed."""
    import dataclasses

    from loramem.runs.runner import RecipeOptions

    todo, reruns = [], {}
    for v in verdicts:
        f, a = findings.by_id(v["name"]), findings.ABLATIONS.get(v["name"])
        if v["verdict"] != "disagrees" and not (a is not None and a.always and v["verdict"] != "not measured"):
            continue
        if a is None:
            v["ablation"] = {"why": "no ablation is declared for this finding"}
            continue
        entry = {"name": f.id, "cause": a.cause, "change": a.change}
        try:
            changed = a.params(scale) if a.params is not None else None
        except Exception as exc:  # noqa: BLE001 - recorded in the entry; the other ablations go on
            changed, entry["error"] = None, f"{type(exc).__name__}: {exc}"
        if a.params is not None and changed is None:
            entry.setdefault("why", f"no such rerun at scale {scale}")
            v["ablation"] = entry
            continue
        if changed is not None:
            key = a.key or f.id
            folder = out / "ablations" / key / f.recipe
            merged = _merge_params((params or {}).get(f.recipe) or {}, changed)
            entry.update(folder=str(folder.relative_to(out)), params=changed)
            name = f"{f.recipe}@{key}"
            reruns.setdefault(name, (dataclasses.replace(experiments.get(f.recipe), name=name),
                                     RecipeOptions(model=model, scale=scale, out=folder, seed=seed,
                                                   paper_data=paper_data, progress=progress, params=merged)))
            entry["_rerun"] = name
        todo.append((v, f, a, entry))
    return todo, reruns


def run_ablations(verdicts: list[dict], rows: dict[str, list[dict]], model: str, scale: str, out: Path,
                  seed: int = 0, paper_data: Path | None = None, progress: bool = True, executor: str = "local",
                  address: str | None = None, params: dict[str, dict] | None = None, workers: int = 1,
                  ran: dict[str, dict] | None = None) -> list[dict]:
    """For every finding that disagrees (and those whose ablation says `always`), its declared ablation
    (findings.ABLATIONS): a rerun of its recipe with one
    setting changed (on top of the main run's own `params` for that recipe), into DIR/ablations/KEY/RECIPE/ (it
    resumes), or the finding recomputed on the main rows by another check. Reruns go to `workers` processes like
    the main recipes (the Q8-Q11 recipes of one key in one worker: they share its bank). Each verdict gains an
    `ablation` entry (cause, change, verdict, effect, interval, n; a rerun's status); the same list goes to
    DIR/ablations.json. One ablation's failure is recorded in its entry and the others go on. `ran`: the status of
    reruns that already ran (beside the main recipes); they are not run again."""
    todo, reruns = plan_ablations(verdicts, model, scale, out, seed, paper_data, progress, params)
    left = {n: r for n, r in reruns.items() if n not in (ran or {})}
    status = {**(ran or {}), **(_run_reruns(left, out, progress, executor, address, workers) if left else {})}
    entries = []
    for v, f, a, entry in todo:
        name = entry.pop("_rerun", None)
        got = rows.get(f.recipe, [])
        if name is not None:
            st = status.get(name, {"error": "the rerun did not run"})
            entry["rerun"] = {k: st.get(k) for k in ("ok", "cells", "failed", "seconds", "error") if k in st}
            got = [r for r in read_rows(out / entry["folder"] / "results.jsonl") if r.get("status") == "ok"]
        try:
            effect, evidence = (a.check or f.check)(got) if got else (None, {"why": "the rerun finished no cell"})
        except Exception as exc:  # noqa: BLE001 - a check that breaks on these rows says so in the entry
            effect, evidence = None, {"why": f"the check failed on these rows ({type(exc).__name__}: {exc})"}
        j = findings.judge(f, effect, evidence, bool(got))
        entry.update({k: j.get(k) for k in ("verdict", "agrees", "effect", "ci_low", "ci_high", "n", "arms")},
                     evidence=j["evidence"])
        v["ablation"] = entry
        entries.append(entry)
    (out / "ablations.json").write_text(json.dumps(entries, indent=2, default=str))
    return entries


def _merge_params(main: dict, changed: dict) -> dict:
    """The main run's parameters of a recipe with an ablation's changes on top (`writer` merged one level down)."""
    merged = {**main, **changed}
    if isinstance(main.get("writer"), dict) and isinstance(changed.get("writer"), dict):
        merged["writer"] = {**main["writer"], **changed["writer"]}
    return merged


def _rerun_units(reruns: dict) -> list[list[str]]:
    """The reruns' names in units of work: the Q8-Q11 recipes of one key together (they share its bank, in chain
    order), every other rerun alone; longest first."""
    from loramem.runs import workers as pool

    def recipe(name: str) -> str:
        return name.split("@", 1)[0]

    order = {n: i for i, n in enumerate(pool.LONGEST_FIRST)}
    chain = list(pool.CHAINS[0])
    units: dict[str, list[str]] = {}
    for name in reruns:
        units.setdefault(f"bank@{name.split('@', 1)[1]}" if recipe(name) in chain else name, []).append(name)
    plan = sorted(units.values(), key=lambda u: min(order.get(recipe(n), len(order)) for n in u))
    for unit in plan:
        unit.sort(key=lambda n: chain.index(recipe(n)) if recipe(n) in chain else 0)
    return plan


def _run_reruns(reruns: dict, out: Path, progress: bool, executor: str, address: str | None,
                workers: int) -> dict[str, dict]:
    """The ablation reruns, in worker processes when there are several (longest first; the Q8-Q11 recipes of one
    key, which share a bank, in one unit), else one after another."""
    from loramem.runs import workers as pool

    plan = _rerun_units(reruns)
    n = min(workers, len(plan)) if executor == "local" else 1
    if n > 1:
        from loramem import models

        models._LOADED.clear()
        return pool.run_parallel(list(reruns.values()), n, out / "ablations" / "logs", progress=progress, units=plan)
    status = {}
    for unit in plan:
        for name in unit:
            recipe, opts = reruns[name]
            console.rule(f"ablation rerun {name}")
            status[name] = run_recipe_status(recipe, opts, executor=executor, address=address)
    return status
