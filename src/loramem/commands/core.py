"""Core verbs: `loramem models`, `phonebook make`, `write`, `eval`, `bench capacity`, `datasheet`, `demo`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loramem.commands import (
    app,
    bench_app,
    check_out_folder,
    command_line,
    console,
    csv_list,
    model_option,
    phonebook_app,
    print_json,
    run_bench,
    writer_help,
    writer_options,
)
from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError


def _version(value: bool) -> None:
    if value:
        from loramem import __version__

        print(f"loramem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """LoRA adapters as knowledge memory."""


@app.command("models")
def models_cmd(
    prepare: str | None = typer.Option(None, help="load this model once so its cache is ready (the embedded model "
                                                  "is converted from GGUF to safetensors) and export the router's "
                                                  "query encoder; `make setup` does this"),
    as_json: bool = typer.Option(False, "--json", help="print the models as one JSON object"),
) -> None:
    """List the built-in base models (any Hugging Face id or local folder works too)."""
    from loramem.models import list_models

    if prepare is not None:
        import time

        from loramem.embeddings import query_session
        from loramem.models import load_base

        t0 = time.time()
        base = load_base(prepare)
        print(f"{prepare}: ready ({base.n_layers} layers, fingerprint {base.fingerprint[:12]}, "
              f"{time.time() - t0:.1f} s)")
        t0 = time.time()
        ready = [p for p in ("fp32", "int8") if query_session(p) is not None]  # exported once, cached
        engine = f"ONNX Runtime ({' and '.join(ready)})" if ready else "PyTorch"
        print(f"router query encoder: {engine} ({time.time() - t0:.1f} s)")
        return
    if as_json:
        return print_json(list_models())
    for name, what in list_models().items():
        print(f"{name:14s} {what}")


@phonebook_app.command("make")
def phonebook_make(
    out: Path = typer.Option(..., help="CSV file to write (the paper's format)"),
    entries: int | None = typer.Option(None, help="number of entries"),
    tokens: str | None = typer.Option(None, help="size in knowledge tokens instead, e.g. 4K"),
    model: str = typer.Option(DEFAULT_MODEL, "--tokenizer", help="model whose tokenizer counts tokens (with --tokens)"),
    old_model: str | None = typer.Option(None, "--model", hidden=True),  # old name of --tokenizer
    seed: int = typer.Option(0, help="random seed of the names and numbers"),
) -> None:
    """Generate a fictitious PhoneBook from a seed."""
    from loramem.data import phonebook

    if (entries is None) == (tokens is None):
        raise UserError("give exactly one of --entries N or --tokens SIZE")
    if entries is not None:
        book = phonebook.generate(entries, seed)
    else:
        from loramem.models import load_base

        book = phonebook.generate_tokens(phonebook.parse_size(tokens), load_base(old_model or model).tokenizer, seed)
    phonebook.write(book, out)
    console.print(f"wrote {len(book)} entries to {out}")


@app.command("write")
def write_cmd(
    train_file: Path = typer.Argument(..., help="PhoneBook CSV/JSON or JSONL rows"),
    out: Path | None = typer.Option(None, help="module folder to write (a standard PEFT adapter folder)"),
    bank: Path | None = typer.Option(None, help="bank folder to add the module to (instead of --out)"),
    name: str | None = typer.Option(None, help="module name in the bank (a new version if it exists)"),
    partition: int | None = typer.Option(None, help="split the facts into N modules NAME-00.. (with --bank)"),
    update: str | None = typer.Option(None, help="change module NAME of --bank: append (NAME trained further on the "
                                      "new facts + a replay sample of its own), correct (new values replace old "
                                      "ones by key; refused if an old value is still given) or new-module (its own "
                                      "module NAME.uK, routing decides); each a new version, undone by `loramem "
                                      "bank rollback NAME` (new-module: `bank rm`). The module's recorded writer "
                                      "settings apply; flags given replace them (not its shape: rank, targets, ...)"),
    replay: str = typer.Option("all", help="with --update append/correct: how many of the module's untouched "
                               "facts to train on again (a seeded sample), 0 for none, or all"),
    model: str = model_option(),
    recipe: str = typer.Option("fast", help="preset: fast (loramem defaults) or paper (authors' settings)"),
    rank: int | None = typer.Option(None, help=writer_help("rank")),
    alpha: float | None = typer.Option(None, help=writer_help("alpha")),
    rslora: bool | None = typer.Option(None, "--rslora/--no-rslora", help=writer_help("rslora", "rank-stabilized LoRA scaling")),
    targets: str | None = typer.Option(None, help=writer_help("targets")),
    layers: str | None = typer.Option(None, help=writer_help("layers")),
    dropout: float | None = typer.Option(None, help=writer_help("dropout", "LoRA dropout")),
    lr: float | None = typer.Option(None, help=writer_help("lr", "AdamW learning rate")),
    schedule: str | None = typer.Option(None, help=writer_help("schedule", "learning-rate schedule: constant, cosine or linear")),
    steps: int | None = typer.Option(None, help=writer_help("steps")),
    epochs: float | None = typer.Option(None, help=writer_help("epochs", "passes over the facts (when --steps is not given)")),
    batch_size: int | None = typer.Option(None, help=writer_help("batch_size", "facts per optimizer step")),
    seed: int | None = typer.Option(None, help=writer_help("seed", "seed of LoRA init and batch order")),
    loss: str | None = typer.Option(None, help=writer_help("loss", "answer (loss on answer tokens) or sequence")),
    format: str | None = typer.Option(None, "--format", help=writer_help("format", "plain, chat or chat-user")),
    target_em: float | None = typer.Option(None, help=writer_help("target_em")),
    eval_every: int | None = typer.Option(None, help=writer_help("eval_every")),
    max_seconds: float | None = typer.Option(None, help=writer_help("max_seconds", "stop training after this many seconds")),
    limit: int | None = typer.Option(None, help="use only the first N rows of the file (default: all)"),
    force: bool = typer.Option(False, "--force", help="with --out: replace an existing module folder"),
    data_license: str | None = typer.Option(None, help="licence of the facts, shown on the exported model card"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (exact_match, steps, seconds, ...) "
                                                      "on stdout instead of the summary line"),
) -> None:
    """Train one LoRA memory module from a training file."""
    from loramem.data.examples import read_examples
    from loramem.models import load_base
    from loramem.writer import write_module

    cfg = writer_options(recipe=recipe, rank=rank, alpha=alpha, rslora=rslora, targets=targets, layers=layers,
                         dropout=dropout, lr=lr, schedule=schedule, steps=steps, epochs=epochs,
                         batch_size=batch_size, seed=seed, loss=loss, format=format, target_em=target_em,
                         eval_every=eval_every, max_seconds=max_seconds)
    if update is not None:
        from loramem.commands.memory import update_bank_cmd

        given = dict(rank=rank, alpha=alpha, rslora=rslora, targets=targets, layers=layers, dropout=dropout, lr=lr,
                     schedule=schedule, steps=steps, epochs=epochs, batch_size=batch_size, seed=seed, loss=loss,
                     format=format, target_em=target_em, eval_every=eval_every, max_seconds=max_seconds)
        return update_bank_cmd(train_file, out, bank, name, partition, model, update, replay, given, limit,
                               data_license, as_json)
    if bank is not None or name is not None or partition is not None:
        from loramem.commands.bank import write_bank_cmd

        return write_bank_cmd(train_file, out, bank, name, partition, model, cfg, limit, data_license, as_json)
    if out is None:
        raise UserError("give --out FOLDER, or --bank DIR --name NAME to add the module to a bank")
    check_out_folder(out, force)
    examples = read_examples(train_file)[:limit]
    base = load_base(model)
    res = write_module(examples, base, cfg, out=out, data_license=data_license)
    r = res.record
    if as_json:
        return print_json({**{k: v for k, v in r.items() if k not in ("em_history", "em_running")},
                            "seconds": r["wall_s"], "out": str(out)})
    console.print(
        f"wrote {out}: {r['n_examples']} facts, rank {cfg.rank}, {r['n_params']:,} params, {r['steps']} steps "
        f"({r['stopped']}), exact match {r['exact_match']:.3f}, {r['tokens_per_s']:.0f} tok/s, {r['wall_s']:.0f} s"
    )


@app.command("eval")
def eval_cmd(
    module: Path = typer.Argument(..., help="module folder written by `loramem write`"),
    data: Path = typer.Option(..., help="facts to check (same kinds of file as `write` takes)"),
    model: str | None = typer.Option(None, help="base model (default: the one the module records)"),
    generate: bool = typer.Option(False, "--generate", help="also check by real greedy generation (--json lists each prediction)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    metrics: str | None = typer.Option(None, help="generate answers and score them: em,f1,rougeL,bleu,judge"),
    judge: str = typer.Option("embed", help="with --metrics ...judge: embed (offline), openai or local"),
    max_new_tokens: int = typer.Option(64, "--max-tokens", help="with --metrics: answer length limit in tokens"),
    old_max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", hidden=True),  # old name of --max-tokens
) -> None:
    """Exact match of a module on a set of facts (teacher-forced; --generate also decodes; --metrics scores
    generated answers overall and per question level)."""
    from loramem.adapters import load_adapter, read_record
    from loramem.data.examples import read_examples
    from loramem.evaluate import generate_rows, teacher_forced_em
    from loramem.models import load_base

    rec = read_record(module)
    base = load_base(model or rec.get("base", {}).get("name") or DEFAULT_MODEL)
    fmt = rec.get("config", {}).get("format", "plain")
    if metrics is not None:
        from loramem.commands.docs import eval_metrics

        return eval_metrics(module, data, base, fmt, csv_list(metrics, str, "--metrics"), judge,
                            old_max_new_tokens or max_new_tokens,
                            as_json)
    examples = read_examples(data)
    host = load_adapter(base, module, "module_eval")
    tf = teacher_forced_em(host, base, examples, fmt)
    result = {"exact_match": sum(tf) / len(tf), "n": len(tf), "method": "teacher-forced", "format": fmt}
    if generate:
        rows = generate_rows(host, base, examples, fmt)
        result["exact_match_generate"] = sum(r["exact"] for r in rows) / len(rows)
        result["predictions"] = [{**r, "teacher_forced": t} for r, t in zip(rows, tf, strict=True)]
    if as_json:
        print(json.dumps(result))
    else:
        print(f"exact match {result['exact_match']:.4f} on {len(tf)} facts" + (
            f" (generation: {result['exact_match_generate']:.4f})" if generate else ""))


@bench_app.command("capacity")
def bench_capacity(
    out: Path = typer.Option(..., help="results folder"),
    model: str = model_option("base model"),
    scale: str = typer.Option("smoke", help="smoke, cpu or paper (sets the default grid and writer)"),
    ranks: str | None = typer.Option(None, help="comma list of LoRA ranks, e.g. 1,2,4"),
    sizes: str | None = typer.Option(None, help="knowledge sizes in tokens (K = 1000), e.g. 1K,2K,4K"),
    entries: str | None = typer.Option(None, help="sizes in PhoneBook entries instead, e.g. 50,100"),
    paper_sizes: str | None = typer.Option(None, help="use the paper's files instead, e.g. 1K,2K (needs --paper-data)"),
    tau: float = typer.Option(0.9, help="accuracy threshold for T_max"),
    targets: str | None = typer.Option(None, help="LoRA targets (default per scale)"),
    layers: str | None = typer.Option(None, help="LoRA layers: 20-29, 'top 3' or 'top 20%' (default per scale)"),
    lr: float | None = typer.Option(None, help=writer_help("lr", "writer learning rate (default per scale)")),
    epochs: float | None = typer.Option(None, help="writer epochs per cell (default: per scale)"),
    steps: int | None = typer.Option(None, help="writer steps per cell (default: per scale, from epochs)"),
    seed: int = typer.Option(0, help="first seed of the grid"),
    seeds: int | None = typer.Option(None, help="train every cell this many times (seeds SEED, SEED+1, ...: a fresh "
                                                "PhoneBook and LoRA init each); tables, plots and findings use the "
                                                "mean and spread (default per scale: smoke 2, cpu 3, paper 1)"),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder"),
    executor: str = typer.Option("local", help="local or ray"),
    as_json: bool = typer.Option(False, "--json", help="print the recipe's summary as one JSON object"),
) -> None:
    """Q1-Q3: PhoneBook capacity per rank, T_max and Efficiency = T_max / N_params."""
    from loramem.data.phonebook import parse_size

    if sizes and entries:
        raise UserError("give --sizes (tokens) or --entries, not both")
    if not 0 < tau <= 1:
        raise UserError(f"--tau must be in (0, 1], got {tau}")
    rank_list = csv_list(ranks, int, "--ranks")
    if rank_list and min(rank_list) < 1:
        raise UserError("ranks must be >= 1 (e.g. --ranks 1,2,4)")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    params = {"ranks": rank_list, "tau": tau, "seeds": seeds,
              "sizes": [parse_size(s) for s in csv_list(sizes, str)] if sizes else None,
              "entries": csv_list(entries, int, "--entries"), "paper_sizes": csv_list(paper_sizes, str),
              "writer": {"targets": targets, "layers": layers, "lr": lr, "epochs": epochs, "steps": steps}}
    summary = run_bench("capacity", out, model, scale, seed, paper_data, params, executor)
    if as_json:
        return print_json(summary)
    for rank, v in summary.get("per_rank", {}).items():
        print(f"rank {rank:>4}: T_max {v['t_max']:>6} tokens, {v['n_params']:>8,} params, "
              f"efficiency {v['efficiency']:.4f} tokens/param")


@app.command("datasheet")
def datasheet_cmd(
    out: Path = typer.Option(..., help="report folder"),
    model: str = model_option("base model to audit"),
    scale: str = typer.Option("smoke", help="smoke (minutes on a CPU), cpu (hours), paper (the paper's grid, GPUs)"),
    only: str | None = typer.Option(None, help="comma list of recipes, e.g. capacity,routing"),
    executor: str = typer.Option("local", help="local or ray"),
    address: str | None = typer.Option(None, help="Ray cluster address (with --executor ray)"),
    seed: int = typer.Option(0, help="seed of every recipe"),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder, where recipes can use it"),
    workers: int | None = typer.Option(None, help="recipes at once, each in its own process with its share of the "
                                                  "cores (local executor); default: one per core up to 4 as memory allows (~6 GiB each), 1 with a GPU"),
    ablations: bool | None = typer.Option(None, "--ablations/--no-ablations",
                                          help="after the recipes, run the declared ablation of every finding that "
                                               "disagrees (default: at cpu and paper scale)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings and report paths as one JSON object"),
) -> None:
    """Run the paper's audit on a base model and write report.html, report.md, results.jsonl, findings.json."""
    from loramem.datasheet import run_datasheet

    if scale not in ("smoke", "cpu", "paper"):
        raise UserError(f"unknown scale '{scale}'; use smoke, cpu or paper")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be 1 or more (got {workers})")
    res = run_datasheet(model, scale, out, only=only, executor=executor, address=address, seed=seed,
                        paper_data=paper_data, workers=workers, command=command_line(), ablations=ablations)
    if as_json:
        print_json(res)
    else:
        _print_findings(res["findings"])
        print(f"report: {Path(out) / 'report.html'}")
    fail_if_a_recipe_measured_nothing(res["recipes"])


def fail_if_a_recipe_measured_nothing(status: dict[str, dict]) -> None:
    """The report is written either way; a recipe that could not run or whose every cell failed makes the exit
    non-zero with its first error (a rerun resumes: finished cells are kept)."""
    dead = {n: s for n, s in status.items() if "error" in s or (s.get("cells", 0) and not s.get("ok", 0))}
    if dead:
        name, s = next(iter(dead.items()))
        first = s.get("error") or s.get("first_error") or "see its results.jsonl"
        raise UserError(f"{len(dead)} recipe(s) measured nothing ({', '.join(dead)}); first: {name}: {first}")


def _print_findings(verdicts: list[dict]) -> None:
    from loramem.findings import label

    for f in verdicts:
        mark = label(f)
        print(f"{mark.upper() if mark == 'disagrees' else mark:13s} {f['finding']}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="where the report goes"),
    model: str = model_option("base model"),
    only: str | None = typer.Option(None, help="comma list of recipes (default: all)"),
    workers: int | None = typer.Option(None, help="recipes at once (default: one per core up to 4 as memory allows, 1 with a GPU)"),
    paper_data: Path | None = typer.Option(None, help="the paper's release folder (PaperQA, CounterFact); default "
                                                      "$LORAMEM_PAPER_DATA, else ../shared/data/paper-release"),
) -> None:
    """The main job on the embedded default model: the datasheet at smoke scale (a CPU, minutes)."""
    from loramem.datasheet import run_datasheet

    if workers is not None and workers < 1:
        raise UserError(f"--workers must be 1 or more (got {workers})")
    console.print(f"loramem demo: the paper's audit at smoke scale on {model}; outputs go to {out}/")
    res = run_datasheet(model, "smoke", out, only=only, workers=workers, paper_data=paper_data,
                        command=command_line())
    _print_findings(res["findings"])
    print(f"demo outputs in {out}/: report.html, report.md, results.jsonl, findings.json, one folder per recipe")
    fail_if_a_recipe_measured_nothing(res["recipes"])
