"""A tiny pure-Python recipe for testing the runner without training anything."""

from __future__ import annotations

import time

from loramem.runs.runner import Recipe, RecipeOptions


def _cells(opts: RecipeOptions) -> list[dict]:
    return [{"cell": f"x={x}", "x": x} for x in range(opts.params.get("n", 4))]


def _run(cell: dict, opts: RecipeOptions) -> dict:
    time.sleep(opts.params.get("sleep", 0))
    if cell["x"] in opts.params.get("fail", []):
        raise RuntimeError(f"cell {cell['x']} broke on purpose")
    return {"y": cell["x"] ** 2}


def _summarize(rows: list[dict], opts: RecipeOptions) -> dict:
    (opts.out / "squares.md").write_text("| x | y |\n|---|---|\n" + "".join(
        f"| {r['x']} | {r['y']} |\n" for r in sorted(rows, key=lambda r: r["x"])))
    return {"sum_y": sum(r["y"] for r in rows)}


SQUARES = Recipe("squares", "test: squares", _cells, _run, _summarize)


def _die(cell: dict, opts: RecipeOptions) -> dict:
    import os
    import signal

    time.sleep(1.0)  # let the other worker get going
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


DIES = Recipe("dies", "test: a worker killed mid-cell", _cells, _die, _summarize)


def _refuse_to_load():
    raise RuntimeError("this object cannot be loaded in another process")


class Unloadable:
    """Pickles, but fails to unpickle: what a worker process meets with a recipe it cannot import (e.g. one
    defined in a notebook's __main__)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _wait(cell: dict, opts: RecipeOptions) -> dict:
    from pathlib import Path

    until, t0 = Path(opts.params["until"]), time.time()
    while not until.exists() and time.time() - t0 < opts.params.get("wait_s", 60):
        time.sleep(0.2)
    return {"y": cell["x"] ** 2, "saw": until.exists()}


WAITS = Recipe("waits", "test: a recipe that waits for a file (another recipe's rows)", _cells, _wait, _summarize)
