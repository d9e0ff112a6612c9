"""The `loramem` command line's app and the helpers its verbs share. Verbs live in the modules of this package
(core, bank, docs, rag, serve, ...): each imports `app`/`bench_app` from here and registers its commands;
`load_all()` imports them (cli.main does, at start-up). Nothing here imports a verb module, so there is no circle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError

app = typer.Typer(add_completion=True, no_args_is_help=True, help="LoRA adapters as knowledge memory.")
phonebook_app = typer.Typer(no_args_is_help=True, help="PhoneBook benchmark files.")
bench_app = typer.Typer(no_args_is_help=True, help="The paper's research questions, one recipe each.")
app.add_typer(phonebook_app, name="phonebook")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


def default(cls, field: str):
    """A config model's default for a field: CLI option defaults are read from the configs, never retyped."""
    return cls.model_fields[field].default


def model_option(help: str = "base model: registry name, HF id or local folder"):
    return typer.Option(DEFAULT_MODEL, help=help)


def writer_help(field: str, what: str | None = None) -> str:
    """Help for a writer option, with its default read from WriterConfig (never retyped here)."""
    from loramem.config import WriterConfig

    f = WriterConfig.model_fields[field]
    default = "2 x rank" if field == "alpha" else f.default
    # parentheses, not brackets: typer's rich help reads [..] as markup and drops it
    return f"{what or f.description or field} (default: {default}; --recipe paper sets its own)"



def command_line() -> str:
    """The command as typed, for the report's environment (only the CLI reads sys.argv)."""
    import shlex

    return shlex.join(["loramem", *sys.argv[1:]])



def print_json(obj) -> None:
    print(json.dumps(obj, default=str))



def run_bench(name: str, out: Path, model: str, scale: str, seed: int = 0, paper_data: Path | None = None,
              params: dict | None = None, executor: str = "local") -> dict:
    """Shared body of every `loramem bench NAME`: run the recipe into OUT, print where the results are."""
    from loramem import experiments
    from loramem.runs.runner import RecipeOptions, run_recipe

    if scale not in ("smoke", "cpu", "paper"):
        raise UserError(f"unknown scale '{scale}'; use smoke, cpu or paper")
    recipe = experiments.get(name)
    opts = RecipeOptions(model=model, scale=scale, out=out, seed=seed, paper_data=paper_data, params=params or {})
    summary = run_recipe(recipe, opts, executor=executor)
    console.print(f"{name}: {summary.get('ok', 0)}/{summary.get('cells', 0)} cells ok"
                  + (f", failed: {', '.join(summary['failed'])}" if summary.get("failed") else "")
                  + f"; results in {out}/results.jsonl, summary in {out}/summary.json")
    if summary.get("cells", 0) and not summary.get("ok", 0):
        first = summary.get("first_error") or "see the results file"
        raise UserError(f"{name}: every cell failed ({first}); nothing usable was measured")
    return summary



def check_out_folder(out: Path, force: bool) -> None:
    """`write --out` never writes inside a bank and replaces an existing folder only with --force."""
    from loramem.bank.store import MANIFEST

    out = Path(out).expanduser()
    for d in (out, *out.resolve().parents):
        if (d / MANIFEST).is_file():
            raise UserError(f"{out} is inside the bank {d}; add modules to a bank with `loramem write FILE --bank "
                            f"{d} --name NAME`, or pick a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files; pick a new folder, or pass --force to replace the "
                        "module there")



def csv_list(text: str | None, kind=str, what: str = "list") -> list | None:
    """'1,2,4' -> [1, 2, 4]; a bad item is a one-line UserError."""
    if text is None:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"could not read {what} '{text}'; give a comma list such as 1,2,4") from None



def writer_options(**kw):
    """The writer's config from the CLI's flags (`--recipe` names the preset; None: the preset's value)."""
    from loramem.config import writer_config

    return writer_config(kw.pop("recipe"), **kw)


def load_all() -> None:
    """Import every verb module of this package; each registers its commands on `app` / `bench_app`."""
    import importlib
    import pkgutil

    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{mod}")
