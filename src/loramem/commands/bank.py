"""CLI verbs of the memory bank: `loramem bank ls|show|rm|rollback|verify|export`, `loramem ask`, the bank side of
`loramem write`, and `loramem bench multi-lora|routing|merging|n-modules`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from loramem.commands import app, bench_app, console, csv_list, default, run_bench
from loramem.config import DEFAULT_MODEL, AskConfig, MergeConfig
from loramem.errors import UserError
from loramem.registry import MERGES, MODES, ROUTERS

bank_app = typer.Typer(no_args_is_help=True, help="The memory bank: many modules, versions, checks, export.")
app.add_typer(bank_app, name="bank")

BANK_OPT = typer.Option(..., "--bank", help="bank folder")


def _open(bank: Path):
    from loramem.bank.store import MemoryBank

    return MemoryBank(bank, create=False)


def write_bank_cmd(train_file: Path, out: Path | None, bank: Path | None, name: str | None, partition: int | None,
                   model: str, cfg, limit: int | None, data_license: str | None = None, as_json: bool = False) -> None:
    """`loramem write FILE --bank DIR --name NAME [--partition N]`: train module(s) into a bank."""
    from loramem.bank.folders import check_name
    from loramem.bank.store import MemoryBank
    from loramem.bank.write import write_to_bank
    from loramem.models import load_base

    if out is not None:
        raise UserError("give --out (a plain module folder) or --bank (add to a bank), not both")
    if bank is None or name is None:
        raise UserError("writing to a bank needs both --bank DIR and --name NAME")
    check_name(name)
    if partition is not None and partition < 1:
        raise UserError(f"--partition must be >= 1 (got {partition})")
    b = MemoryBank(bank)
    infos = write_to_bank(train_file, b, name, load_base(model), cfg, partition, limit, data_license=data_license)
    if as_json:
        print(json.dumps({"bank": str(b.root), "modules": [m.id for m in infos],
                          "exact_match": min(m.record.get("exact_match", 0.0) for m in infos),
                          "steps": sum(m.record.get("steps", 0) for m in infos),
                          "seconds": round(sum(m.record.get("wall_s", 0.0) for m in infos), 2),
                          "per_module": [{"id": m.id, "exact_match": m.record.get("exact_match"),
                                          "steps": m.record.get("steps"), "seconds": m.record.get("wall_s"),
                                          "n_facts": len(m.keys), "rank": m.rank} for m in infos]}))
        return
    for m in infos:
        em = m.record.get("exact_match", 0.0)
        console.print(f"added {m.id} to {b.root}: {len(m.keys)} facts, rank {m.rank}, {m.n_params:,} params, "
                      f"exact match {em:.3f}")


@bank_app.command("ls")
def bank_ls(bank: Path = BANK_OPT, as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
    """List the modules (serving versions) of a bank."""
    b = _open(bank)
    mods = b.list()
    if as_json:
        print(json.dumps([{**m.summary(m.version), "versions": len(b.versions(m.name))} for m in mods], indent=2))
        return
    if not mods:
        print("(no modules)")
    for m in mods:
        print(f"{m.name:24s} v{m.version:<3d} rank {m.rank:<4d} {m.n_params:>10,} params {len(m.keys):>6} facts "
              f"EM {m.record.get('exact_match', 0):.3f}  {m.created}")


@bank_app.command("show")
def bank_show(name: str = typer.Argument(...), bank: Path = BANK_OPT,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Every version of one module, with its manifest record."""
    b = _open(bank)
    head = b.head(name)
    versions = b.versions(name)
    if not versions:
        raise UserError(f"no module '{name}' in bank {b.root}; see `loramem bank ls --bank {b.root}`")
    rows = [{**v.summary(head), "record": {k: v.record.get(k) for k in
                                           ("config", "steps", "stopped", "exact_match", "wall_s", "data_hash")}}
            for v in versions]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        mark = "*" if r["head"] else " "
        print(f"{mark} {r['name']} v{r['version']}: rank {r['rank']}, {r['n_params']:,} params, {r['n_facts']} facts, "
              f"EM {r['exact_match']}, checksum {r['checksum'][:12]}, {r['created']}")


@bank_app.command("rm")
def bank_rm(name: str = typer.Argument(...), bank: Path = BANK_OPT) -> None:
    """Remove a module and all its versions."""
    versions = _open(bank).remove(name)
    console.print(f"removed {name} ({len(versions)} version{'s' if len(versions) != 1 else ''})")


@bank_app.command("rollback")
def bank_rollback(name: str = typer.Argument(...), bank: Path = BANK_OPT,
                  to: int | None = typer.Option(None, "--to", help="version to serve (default: the previous one)")) -> None:
    """Serve an earlier version of a module."""
    info = _open(bank).rollback(name, to)
    console.print(f"{name} now serves v{info.version}")


@bank_app.command("verify")
def bank_verify(bank: Path = BANK_OPT, as_json: bool = typer.Option(False, "--json"),
                repair: bool = typer.Option(False, "--repair", help="rebuild the row index from the manifest")) -> None:
    """Check that manifest and files agree (exit 0 when sound, 1 with a report of what is wrong)."""
    from loramem.bank.store import MemoryBank

    if not Path(bank).is_dir():
        raise UserError(f"no bank folder at {bank}")
    if repair:
        from loramem.bank import vindex

        b = MemoryBank(bank, create=False)
        with b.lock:
            console.print(vindex.rebuild(b, b.row_keys(b.list())))
    rep = MemoryBank(bank, create=False).verify()
    if as_json:
        print(json.dumps({"ok": rep.ok, "checked": rep.checked, "problems": rep.problems, "notes": rep.notes}))
    else:
        for p in rep.problems:
            print(f"PROBLEM {p}")
        for n in rep.notes:
            print(f"note    {n}")
        print(f"{'sound' if rep.ok else 'NOT sound'}: {rep.checked} module versions checked, "
              f"{len(rep.problems)} problems")
    if not rep.ok:
        sys.exit(1)


@bank_app.command("export")
def bank_export(out: Path = typer.Argument(..., help="folder to write portable PEFT folders into"),
                bank: Path = BANK_OPT, names: str | None = typer.Option(None, help="comma list (default: all)"),
                as_json: bool = typer.Option(False, "--json", help="print what was written as one JSON object")) -> None:
    """Write each module's serving version to OUT/NAME as a PEFT folder with a model card (README.md), and print
    the vLLM and PEFT lines that load them."""
    from loramem.bank.export import serve_lines

    b = _open(bank)
    written = b.export(out, csv_list(names))
    mods = [b.get(p.name) for p in written]
    lines = serve_lines(mods, out)
    if as_json:
        print(json.dumps({"out": str(out), "modules": [str(p) for p in written], "vllm": lines[:1],
                          "peft": lines[1:]}))
        return
    console.print(f"exported {len(written)} modules to {out} (each with a model card README.md)")
    for line in lines:
        print(line)


_ASK = AskConfig.model_fields


@app.command("ask")
def ask_cmd(
    question: str = typer.Argument(..., help="the question"),
    bank: Path = BANK_OPT,
    mode: str = typer.Option(default(AskConfig, "mode"), help="answer mode (context modes read BANK/index): "
                             + MODES.help_text()),
    route: str = typer.Option(default(AskConfig, "route"), help="router: " + ROUTERS.help_text()),
    top_k: int = typer.Option(default(AskConfig, "top_k"), help=_ASK["top_k"].description),
    merge: str = typer.Option(default(MergeConfig, "method"), help="merge method: " + MERGES.help_text()),
    weights: str = typer.Option(default(MergeConfig, "weights"), help="merge weights: auto, mean, sum, score or a "
                                "comma list"),
    density: float = typer.Option(default(MergeConfig, "density"), help=MergeConfig.model_fields["density"].description),
    model: str | None = typer.Option(None, help="base model (default: the bank's)"),
    max_new_tokens: int = typer.Option(default(AskConfig, "max_new_tokens"), "--max-tokens",
                                       help=_ASK["max_new_tokens"].description),
    old_max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", hidden=True),
    chunks: int | None = typer.Option(None, "--chunks", help=_ASK["chunks"].description),
    old_rag: int | None = typer.Option(None, "--rag", hidden=True),
    overflow: str = typer.Option(default(AskConfig, "overflow"), help="icl/rag context over the budget: error or "
                                 "truncate (keep its first tokens)"),
    context_budget: int | None = typer.Option(None, help=_ASK["context_budget"].description),
    timings: bool = typer.Option(False, "--timings", help="print route / merge / generate milliseconds"),
    as_json: bool = typer.Option(False, "--json", help="print the answer, modules and timings as one JSON object"),
) -> None:
    """Answer a question from a bank: route -> merge -> prompt -> decode (the one answer pipeline)."""
    from loramem.answer.pipeline import ask
    from loramem.config import ask_config

    w = weights if weights in ("auto", "mean", "sum", "score") else csv_list(weights, float, "--weights")
    cfg = ask_config(mode=mode, route=route, top_k=top_k, merge=merge, weights=w, density=density,
                     max_new_tokens=old_max_new_tokens or max_new_tokens, chunks=chunks or old_rag,
                     overflow=overflow, context_budget=context_budget)
    res = ask(question, _open(bank), cfg, model)
    if as_json:
        print(json.dumps(res, default=str))
        return
    print(res["answer"])
    if timings:
        mods = ", ".join(f"{m['name']}@v{m['version']} ({m['score']:.3f})" for m in res["modules"]) or "none"
        console.print(f"modules: {mods}; route {res['route_ms']:.1f} ms, merge {res['merge_ms']:.1f} ms"
                      f"{' (cached)' if res['merge_cached'] else ''}, generate {res['generate_ms']:.1f} ms")


def _bench_params(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


_MODEL = typer.Option(DEFAULT_MODEL, help="base model")
_SCALE = typer.Option("smoke", help="smoke, cpu or paper")
_OUT = typer.Option(..., help="results folder")
_JSON = typer.Option(False, "--json", help="print the recipe's summary as one JSON object")


@bench_app.command("multi-lora")
def bench_multi_lora(out: Path = _OUT, model: str = _MODEL, scale: str = _SCALE, seed: int = typer.Option(0),
                     paper_data: Path | None = typer.Option(None, help="use the paper's 128K sectors (release folder)"),
                     modules: int | None = typer.Option(None, help="number of small modules N"),
                     facts: int | None = typer.Option(None, help="PhoneBook entries in all"), as_json: bool = _JSON) -> None:
    """Q8: one large LoRA vs N small LoRAs (same parameter budget, oracle routing) vs ICL."""
    s = run_bench("multi-lora", out, model, scale, seed, paper_data, _bench_params(modules=modules, facts=facts))
    if as_json:
        return print(json.dumps(s, default=str))
    for k, v in s.get("accuracy", {}).items():
        print(f"{k:18s} exact match {v:.3f}")


@bench_app.command("routing")
def bench_routing(out: Path = _OUT, model: str = _MODEL, scale: str = _SCALE, seed: int = typer.Option(0),
                  paper_data: Path | None = typer.Option(None), modules: int | None = typer.Option(None),
                  facts: int | None = typer.Option(None),
                  routers: str | None = typer.Option(None, help="comma list of routers (default: every registered "
                                                                  "one: oracle, embed, bm25, hybrid, lora, "
                                                                  "embed-module, bm25-module)"),
                  as_json: bool = _JSON) -> None:
    """Q9: routers (oracle, fact-level embed / bm25 / hybrid, LoRA-aware, the module-level baselines) vs the
    single LoRA: routing and answer accuracy."""
    s = run_bench("routing", out, model, scale, seed, paper_data,
                  _bench_params(modules=modules, facts=facts, routers=csv_list(routers)))
    if as_json:
        return print(json.dumps(s, default=str))
    for k, v in s.get("answer_accuracy", {}).items():
        print(f"{k:18s} answer EM {v:.3f}  routing acc {s.get('routing_accuracy', {}).get(k, float('nan')):.3f}")


@bench_app.command("merging")
def bench_merging(out: Path = _OUT, model: str = _MODEL, scale: str = _SCALE, seed: int = typer.Option(0),
                  paper_data: Path | None = typer.Option(None), modules: int | None = typer.Option(None),
                  facts: int | None = typer.Option(None), top_k: int | None = typer.Option(None),
                  methods: str | None = typer.Option(None, help="comma list of merge methods"), as_json: bool = _JSON) -> None:
    """Q10: each merge method over the top-k routed modules (ground truth among them)."""
    s = run_bench("merging", out, model, scale, seed, paper_data,
                  _bench_params(modules=modules, facts=facts, top_k=top_k, methods=csv_list(methods)))
    if as_json:
        return print(json.dumps(s, default=str))
    for k, v in s.get("accuracy", {}).items():
        print(f"{k:18s} exact match {v:.3f}")


@bench_app.command("n-modules")
def bench_n_modules(out: Path = _OUT, model: str = _MODEL, scale: str = _SCALE, seed: int = typer.Option(0),
                    paper_data: Path | None = typer.Option(None), modules: int | None = typer.Option(None),
                    facts: int | None = typer.Option(None), method: str | None = typer.Option(None),
                    max_n: int | None = typer.Option(None), as_json: bool = _JSON) -> None:
    """Q11: merge the ground-truth module with 0..4 others; accuracy vs N."""
    s = run_bench("n-modules", out, model, scale, seed, paper_data,
                  _bench_params(modules=modules, facts=facts, method=method, max_n=max_n))
    if as_json:
        return print(json.dumps(s, default=str))
    for k, v in s.get("accuracy_by_n", {}).items():
        print(f"N = {k}: exact match {v:.3f}")
