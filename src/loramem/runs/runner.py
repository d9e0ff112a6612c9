"""Runs a recipe's grid cell by cell: each finished cell is appended to results.jsonl at once, a rerun skips
finished cells, and a crashing cell is recorded with its error without stopping the others."""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from loramem.config import DEFAULT_MODEL
from loramem.errors import UserError
from loramem.progress import OptionalBar

Scale = Literal["smoke", "cpu", "paper"]


class RecipeOptions(BaseModel):
    """What every recipe takes; recipe-specific knobs go in `params` (set by its CLI flags)."""

    model: str = DEFAULT_MODEL
    scale: Scale = "smoke"
    out: Path
    seed: int = 0
    paper_data: Path | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    progress: bool = True


@dataclass(frozen=True)
class Recipe:
    """One research question: a grid of cells, how to run one cell, and how to summarize the rows."""

    name: str
    question: str  # e.g. "Q1-Q3: capacity vs rank"
    cells: Callable[[RecipeOptions], list[dict]]  # each cell: JSON-able params with a unique "cell" id
    run_cell: Callable[[dict, RecipeOptions], dict]
    summarize: Callable[[list[dict], RecipeOptions], dict]  # writes tables/plots under opts.out, returns summary
    # cells that train modules over one base can run several at once (one pass, `write_modules`): `together(cell)`
    # gives a key (None: alone) and `run_cells` runs cells sharing one, returning their results in order
    run_cells: Callable[[list[dict], RecipeOptions], list[dict]] | None = None
    together: Callable[[dict], Hashable | None] | None = None


# A cell keeps at most this many per-question predictions in its row (evenly spaced over its questions, so every
# part of a partitioned book is in the sample): enough to audit a verdict, and a paper-scale grid of thousands of
# facts per cell still writes a results.jsonl of a few MB. Scores and intervals are computed on every question.
PREDICTIONS_KEPT = 200


def kept_predictions(predictions: list[dict], limit: int = PREDICTIONS_KEPT) -> dict:
    """The row fields for a cell's per-question predictions: `predictions` (all, or an evenly spaced `limit` of
    them, each with its index `i` among the cell's questions) and `predictions_of` (how many there were)."""
    step = max(1, -(-len(predictions) // limit))
    return {"predictions": [{"i": i, **p} for i, p in enumerate(predictions)][::step][:limit],
            "predictions_of": len(predictions)}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write: that cell reruns
    return rows


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_recipe(recipe: Recipe, opts: RecipeOptions, executor: str = "local", address: str | None = None,
               results_file: str = "results.jsonl", listener: Callable[..., None] | None = None) -> dict:
    """Run every unfinished cell of `recipe`, then summarize all its rows. Returns the summary.

    `listener(event, **fields)` hears "grid" (total, done), "cell" (cell id, before it runs) and "row" (status)
    events: the datasheet's parallel view draws its progress from them."""
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / results_file
    cells = recipe.cells(opts)
    ids = [c["cell"] for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"recipe {recipe.name} has duplicate cell ids")
    done = {r["cell"] for r in read_rows(path) if r.get("recipe") == recipe.name and r.get("status") == "ok"}
    todo = [c for c in cells if c["cell"] not in done]
    hear = listener or (lambda event, **fields: None)
    hear("grid", total=len(cells), done=len(cells) - len(todo))
    if executor == "ray":
        from loramem.runs.ray_executor import run_cells_ray

        for row in run_cells_ray(recipe, todo, opts, address):
            append_row(path, row)
            hear("row", cell=row["cell"], status=row["status"])
    elif executor == "local":
        with _CellProgress(recipe.name, len(cells), len(cells) - len(todo), opts.progress) as bar:
            for group in together_groups(recipe, todo):
                bar.start(group[0]["cell"] + (f" (+{len(group) - 1} together)" if len(group) > 1 else ""))
                for cell in group:
                    hear("cell", cell=cell["cell"])
                for row in run_group(recipe, group, opts):
                    append_row(path, row)
                    hear("row", cell=row["cell"], status=row["status"])
                    bar.advance()
    else:
        raise UserError(f"unknown executor '{executor}'; use local or ray")
    rows = [r for r in read_rows(path) if r.get("recipe") == recipe.name]
    ok = _latest_ok(rows)
    summary = recipe.summarize(ok, opts) if ok else {}
    failed = sorted({r["cell"] for r in rows if r.get("status") == "error"} - {r["cell"] for r in ok})
    errors = [r.get("error") for r in rows if r.get("status") == "error" and r["cell"] in failed]
    summary = {**summary, "recipe": recipe.name, "cells": len(cells), "ok": len(ok), "ran": len(todo), "failed": failed,
               **({"first_error": errors[0]} if errors else {})}
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_recipe_status(recipe: Recipe, opts: RecipeOptions, executor: str = "local", address: str | None = None,
                      listener: Callable[..., None] | None = None) -> dict:
    """`run_recipe` for the datasheet: never raises; returns what run.json records (cells finished, failed cells,
    seconds), or the error of a recipe that could not even list its cells."""
    t = time.time()
    try:
        summary = run_recipe(recipe, opts, executor=executor, address=address, listener=listener)
        return {"ok": summary.get("ok", 0), "cells": summary.get("cells", 0), "ran": summary.get("ran", 0),
                "failed": summary.get("failed", []),
                **({"first_error": summary["first_error"]} if summary.get("first_error") else {}),
                "seconds": round(time.time() - t, 1)}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # reported in the datasheet; the other recipes go on
        if not isinstance(exc, UserError):  # a bug's traceback, for the log; bad input is its one line
            traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": round(time.time() - t, 1)}


def run_one(recipe: Recipe, cell: dict, opts: RecipeOptions) -> dict:
    """One cell as a result row; an exception becomes a row with status 'error'."""
    t0 = time.time()
    try:
        row = {**cell, **recipe.run_cell(cell, opts), "status": "ok"}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, and the grid goes on
        row = {**cell, "status": "error", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=8)}
    row.update(recipe=recipe.name, model=opts.model, scale=opts.scale, seed=opts.seed,
               seconds=round(time.time() - t0, 2), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return row


def together_groups(recipe: Recipe, cells: list[dict], most: int | None = None) -> list[list[dict]]:
    """The cells in runs of those that may share one pass (same `together` key), at most `most` per run, in the
    order of each key's first cell."""
    from loramem.writer import MAX_TOGETHER

    most = most or MAX_TOGETHER
    if recipe.run_cells is None or recipe.together is None:
        return [[c] for c in cells]
    keyed: dict = {}
    out: list[list[dict]] = []
    for c in cells:
        key = recipe.together(c)
        if key is None:
            out.append([c])
            continue
        if key not in keyed or len(keyed[key]) >= most:
            keyed[key] = []
            out.append(keyed[key])
        keyed[key].append(c)
    return out


def run_group(recipe: Recipe, group: list[dict], opts: RecipeOptions) -> list[dict]:
    """Result rows of cells run together; when the shared pass fails, each cell runs alone, so one bad cell costs
    only its own row."""
    if len(group) == 1 or recipe.run_cells is None:
        return [run_one(recipe, c, opts) for c in group]
    t0 = time.time()
    try:
        results = recipe.run_cells(group, opts)
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - rerun alone: an error then lands on the cell that has it
        traceback.print_exc()
        return [run_one(recipe, c, opts) for c in group]
    stamp = dict(recipe=recipe.name, model=opts.model, scale=opts.scale, seed=opts.seed,
                 seconds=round(time.time() - t0, 2), cells_together=len(group),
                 finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return [{**c, **r, "status": "ok", **stamp} for c, r in zip(group, results, strict=True)]


def _latest_ok(rows: list[dict]) -> list[dict]:
    by_cell: dict[str, dict] = {}
    for r in rows:
        if r.get("status") == "ok":
            by_cell[r["cell"]] = r
    return list(by_cell.values())


class _CellProgress(OptionalBar):
    """A recipe's cells on stderr: a rich bar on a terminal; without one (rich draws nothing there) a plain line when
    a group of cells starts or a cell ends, and one every `every` seconds from a background thread while a group
    runs (one pass of many capacity cells takes minutes and ends no cell until it is done)."""

    def __init__(self, name: str, total: int, done: int, enabled: bool, every: float | None = None) -> None:
        from loramem.progress import PLAIN_EVERY_S, plain_output

        self.name, self.total, self.done, self.cell, self.t0 = name, total, done, "", time.time()
        self.plain = enabled and total > 0 and plain_output()
        self.enabled = enabled and total > 0 and not self.plain
        self.every = PLAIN_EVERY_S if every is None else every
        self._stop = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            # on stderr: stdout carries `bench ... --json` output, which the bar must not precede
            self.bar = Progress(TextColumn(f"[bold]{name}[/bold]"), BarColumn(),
                                TextColumn("{task.completed}/{task.total} cells"), TextColumn("{task.fields[cell]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.task = self.bar.add_task(name, total=total, completed=done, cell="")

    def __enter__(self):
        if self.plain:
            import threading

            self._stop = threading.Event()
            threading.Thread(target=self._beat, daemon=True).start()
        return super().__enter__()

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
        return super().__exit__(*exc)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._line("running")

    def _line(self, what: str) -> None:
        import sys

        from loramem.progress import _clock

        print(f"{self.name}: {self.done}/{self.total} cells, {what} {self.cell}, elapsed "
              f"{_clock(time.time() - self.t0)}", file=sys.stderr, flush=True)

    def start(self, cell: str) -> None:
        self.cell = cell
        if self.enabled:
            self.bar.update(self.task, cell=cell)
        elif self.plain:
            self._line("starting")

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            self.bar.advance(self.task)
        elif self.plain:
            self._line("last in")
