"""CLI verbs of a memory that changes: `loramem write --update`, `loramem bank retire|consolidate`, `loramem plan`
and `loramem bench continual`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from loramem.commands import app, bench_app, console, csv_list, print_json, run_bench
from loramem.commands.bank import BANK_OPT, bank_app
from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError


def _replay(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"--replay takes a number of facts (0 for none) or all, not {text!r}") from None
    if n < 0:
        raise UserError(f"--replay must be 0 or more (or all), got {n}")
    return n


def _checked(fn, *args, **kw):
    """Run an update; a failed check (the bank is unchanged) is one line and exit 1."""
    from loramem.bank.update import CheckFailed

    try:
        return fn(*args, **kw)
    except CheckFailed as exc:
        console.print(f"[red]refused:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


def _print_version(info, report: dict, bank, as_json: bool, undo: str) -> None:
    if as_json:
        print_json({"bank": str(bank.root), "module": info.id, **report, "undo": undo})
        return
    em = report.get("exact_match")
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in report.items()
             if k in ("new", "corrected", "replay", "retired", "merged") and v]
    console.print(f"added {info.id} to {bank.root} ({report['mode']}: {', '.join(parts) or 'no changes'}; "
                  f"{report.get('n_facts')} facts, exact match {em if em is None else f'{em:.3f}'}); "
                  f"undo with `{undo}`", highlight=False)


def update_bank_cmd(train_file: Path, out: Path | None, bank: Path | None, name: str | None, partition: int | None,
                    model: str, mode: str, replay: str, given: dict, limit: int | None,
                    data_license: str | None, as_json: bool) -> None:
    """`loramem write FILE --bank DIR --name NAME --update append|correct|new-module`."""
    from loramem.bank.store import MemoryBank
    from loramem.bank.update import MODES, update_module
    from loramem.models import load_base

    if mode not in MODES:
        raise UserError(f"unknown --update '{mode}'; choose from {', '.join(MODES)}")
    if out is not None or bank is None or name is None:
        raise UserError("--update changes a module of a bank: give --bank DIR --name NAME (not --out)")
    if partition is not None:
        raise UserError("--update writes one module; drop --partition (or write the parts with --update new-module "
                        "one file at a time)")
    n_replay = _replay(replay)
    b = MemoryBank(bank, create=False)
    info, report = _checked(update_module, train_file, b, name, load_base(model), mode, given, n_replay, limit,
                            data_license)
    undo = (f"loramem bank rm {info.name} --bank {b.root}" if mode == "new-module"
            else f"loramem bank rollback {info.name} --bank {b.root}")
    _print_version(info, report, b, as_json, undo)


def _bank_base(b, model: str | None):
    from loramem.models import load_base

    known = b.base()
    return load_base(model or (known[0] if known else "tiny-random"))


@bank_app.command("retire")
def bank_retire(
    name: str = typer.Argument(..., help="module whose facts to retire"),
    facts: Path = typer.Option(..., "--facts", help="the keys to retire: JSONL lines \"key\" or {\"key\": ...} (or "
                               "fact rows, or a PhoneBook file: their keys)"),
    bank: Path = BANK_OPT,
    model: str | None = typer.Option(None, help="base model (default: the bank's)"),
    steps: int | None = typer.Option(None, help="writer steps (default: the module's recorded settings)"),
    lr: float | None = typer.Option(None, help="writer learning rate (default: the module's recorded settings)"),
    as_json: bool = typer.Option(False, "--json", help="print the new version and its checks as one JSON object"),
) -> None:
    """A new version of NAME that no longer answers those facts: rewritten from a fresh init on its other facts
    (not trained to abstain, which would leave the facts in the weights; see the README). Refused (exit 1, bank
    unchanged) if it still answers a retired fact the base model alone does not. Undo: `bank rollback NAME`;
    older versions keep the facts until `bank rm`."""
    from loramem.bank.update import retire_facts

    b = _open_bank(bank)
    info, report = _checked(retire_facts, b, name, facts, _bank_base(b, model), {"steps": steps, "lr": lr})
    _print_version(info, report, b, as_json, f"loramem bank rollback {name} --bank {b.root}")


def _open_bank(bank: Path):
    from loramem.bank.store import MemoryBank

    return MemoryBank(bank, create=False)


@bank_app.command("consolidate")
def bank_consolidate(
    bank: Path = BANK_OPT,
    names: str = typer.Option(..., help="comma list of the served modules to consolidate, e.g. a,b,c"),
    into: str = typer.Option(..., help="name of the one module that replaces them (new, or one of --names)"),
    method: str = typer.Option("retrain", help="retrain (a fresh module on the union of their facts) or cat (their "
                               "exact sum in weight-update space, rank = sum of ranks, no training)"),
    min_recall: float = typer.Option(1.0, help="share of the facts they recalled that INTO must recall"),
    rank: int | None = typer.Option(None, help="with retrain: INTO's rank (default: the sum of their ranks)"),
    steps: int | None = typer.Option(None, help="with retrain: writer steps (default: the first module's settings)"),
    lr: float | None = typer.Option(None, help="with retrain: learning rate (default: the first module's settings)"),
    model: str | None = typer.Option(None, help="base model (default: the bank's)"),
    as_json: bool = typer.Option(False, "--json", help="print INTO's version and the recall check as one JSON object"),
) -> None:
    """Replace several modules by one: INTO recalls what they recalled (checked by teacher forcing before
    anything changes), then INTO is served and they are retired in one transaction. A failed check exits 1 with
    the bank unchanged. Undo: `bank rm INTO` and `bank rollback NAME` for each of them."""
    from loramem.bank.consolidate import METHODS, consolidate

    if method not in METHODS:
        raise UserError(f"unknown --method '{method}'; choose from {', '.join(METHODS)}")
    if method == "cat" and (rank, steps, lr) != (None, None, None):
        raise UserError("--method cat trains nothing; drop --rank, --steps and --lr (or use --method retrain)")
    b = _open_bank(bank)
    listed = csv_list(names, str, "--names")
    info, report = _checked(consolidate, b, listed, into, _bank_base(b, model),
                            {"rank": rank, "steps": steps, "lr": lr}, method, min_recall)
    others = [n for n in listed if n != into]
    undo = f"loramem bank rm {into} --bank {b.root}" if into not in listed else \
        f"loramem bank rollback {into} --bank {b.root}"
    undo += "".join(f"; loramem bank rollback {n} --bank {b.root}" for n in others)
    _print_version(info, report, b, as_json, undo)


def _plan_defaults():
    from loramem import plan

    return plan.MAX_EXTRAPOLATION, plan.MAX_MODULES


@app.command("plan")
def plan_cmd(
    facts: int = typer.Option(..., help="how many facts the memory must hold (of the kind the datasheet measured)"),
    tau: float = typer.Option(0.9, help="exact match each module must reach (the T_max threshold)"),
    datasheet: Path = typer.Option(..., help="a `loramem datasheet` or `bench capacity` folder with capacity rows"),
    max_extrapolation: float = typer.Option(_plan_defaults()[0], help="how far beyond the measured ranks and sizes "
                                            "the power-law fit may be read (a factor; 1: not at all)"),
    max_modules: int = typer.Option(_plan_defaults()[1], help="refuse plans needing more modules than this"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as one JSON object (rank, modules, "
                                 "expected_exact_match, n_params, fit, ...)"),
) -> None:
    """Recommend rank, number of modules and expected exact match for N facts, from a power-law fit of T_max vs
    rank over a datasheet's capacity rows (refusing to read the fit beyond --max-extrapolation)."""
    from loramem.plan import capacity_rows, plan

    p = plan(capacity_rows(datasheet), facts, tau, max_extrapolation, max_modules)
    if as_json:
        return print_json(p)
    f, x = p["fit"], p["extrapolation"]
    se = f" ± {f['b_se']}" if f["b_se"] is not None else " (two ranks: no error)"
    print(f"{facts} facts ({p['knowledge_tokens']:,} tokens): rank {p['rank']} x {p['modules']} module(s), "
          f"{p['n_params']:,} parameters, expected exact match {p['expected_exact_match']:.3f} "
          f"(sd {p['expected_exact_match_sd']:.3f})")
    print(f"fit T_max = {f['a']} * rank^{f['b']}{se} on ranks {f['ranks']}; T_max at rank {p['rank']}: "
          f"{p['t_max_at_rank']:,} tokens; extrapolation x{x['rank']} in rank, x{x['size']} in size "
          f"(limit x{x['limit']:g})")


@bench_app.command("continual")
def bench_continual(
    out: Path = typer.Option(..., help="results folder (results.jsonl, *.png, continual.md, findings.json)"),
    model: str = typer.Option(DEFAULT_MODEL, help="base model"),
    scale: str = typer.Option("smoke", help="smoke (4 rounds of 16 facts, minutes), cpu (10 of 50) or paper"),
    seed: int = typer.Option(0, help="seed of the facts, the corrections and the writer"),
    rounds: int | None = typer.Option(None, help="update rounds k (default per scale)"),
    facts: int | None = typer.Option(None, help="facts per round (default per scale)"),
    rank: int | None = typer.Option(None, help="LoRA rank of every strategy (default per scale)"),
    replay: int | None = typer.Option(None, help="facts replayed per round by append-replay (default per scale)"),
    every: int | None = typer.Option(None, help="consolidate every this many rounds (default per scale)"),
    strategies: str | None = typer.Option(None, help="comma list of append-replay, append-no-replay, new-module, "
                                          "consolidate (default: all)"),
    datasets: str | None = typer.Option(None, help="comma list of phonebook, corrections (default: both)"),
    probe_ranks: str | None = typer.Option(None, help="extra ranks for the forgetting-vs-rank plot, e.g. 1,16 "
                                           "(default per scale; '' for none)"),
    steps: int | None = typer.Option(None, help="writer steps per write (default per scale)"),
    lr: float | None = typer.Option(None, help="writer learning rate (default per scale)"),
    as_json: bool = typer.Option(False, "--json", help="print the recipe's summary as one JSON object"),
) -> None:
    """Beyond the paper: k rounds of new facts and corrections per update strategy; retention, latest, old values,
    base knowledge and cost per round, with intervals, plots and three findings."""
    params = {k: v for k, v in dict(rounds=rounds, facts=facts, rank=rank, replay=replay, every=every,
                                    strategies=csv_list(strategies), datasets=csv_list(datasets)).items()
              if v is not None}
    if probe_ranks is not None:
        params["probe_ranks"] = csv_list(probe_ranks, int, "--probe-ranks")
    params["writer"] = {"steps": steps, "lr": lr}
    for k, v in params.items():
        if isinstance(v, int) and not isinstance(v, bool) and v < (0 if k == "replay" else 1):
            raise UserError(f"--{k} must be {'0' if k == 'replay' else '1'} or more, got {v}")
    s = run_bench("continual", out, model, scale, seed, None, params)
    if as_json:
        return print_json(s)
    for key, r in s.get("final", {}).items():
        print(f"{key:30s} round {r['round']}: retention {r['retention']:.3f} {r['retention_ci']}, base probe "
              f"{r['base_probe']:.3f}, {r['modules']} module(s), {r['n_params']:,} params, {r['train_s_total']:.1f} s")
