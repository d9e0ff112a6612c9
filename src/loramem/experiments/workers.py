"""The datasheet's local parallel executor: several recipes at once, each in its own worker process with its share
of the cores.

On a small CPU one process does not use its cores well: measured on the 2-core VM, LoRA training on smollm2-135m
ran 1.38x faster with 2 threads than with 1, and greedy decoding (one question at a time, bound by memory
bandwidth) not at all; two 1-thread processes side by side each trained at ~0.95x the speed of one 1-thread
process alone. So two recipes at once, one thread each, finish the smoke datasheet ~1.4x sooner than one recipe
with two threads.

Recipes that share state run in one worker, in order: the Q8-Q11 recipes share one trained bank (`CHAINS`). Each
recipe writes its own DIR/<recipe>/results.jsonl as before, so resume, crashed cells and the report do not change.
A worker's output goes to DIR/logs/worker-<pid>.log; the parent draws one progress view from the workers' events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Recipes that must run in one process, in this order: multi-lora trains the bank the other three reuse.
CHAINS: list[tuple[str, ...]] = [("multi-lora", "routing", "merging", "n-modules")]
# Scheduling hint only (longest first keeps the workers' loads even): the smoke datasheet's slowest recipes on a
# 2-core CPU. Recipes not named here (your own) go last.
LONGEST_FIRST = ["multi-lora", "mixes", "rag-icl", "capacity", "formats", "counterfact", "generators", "model-scale"]
GIB_PER_WORKER = 6  # a worker holds a base model, its optimizer state and activations; smoke needs ~2-3 GiB


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers() -> int:
    """Recipes at once by default: 1 with a GPU (its cells already fill it); on a CPU one per core, at most 4,
    as memory allows."""
    import torch

    if torch.cuda.is_available():
        return 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = GIB_PER_WORKER
    return max(1, min(4, cores(), int(mem_gib // GIB_PER_WORKER)))


def threads_per_worker(workers: int) -> int:
    return max(1, cores() // max(1, workers))


def plan(names: list[str]) -> list[list[str]]:
    """Units of work: each chain's selected recipes together (in chain order), every other recipe alone; longest
    first."""
    units, chained = [], set()
    for chain in CHAINS:
        unit = [n for n in chain if n in names]
        if unit:
            units.append(unit)
            chained.update(unit)
    units += [[n] for n in names if n not in chained]

    def rank(unit: list[str]) -> int:
        return min((LONGEST_FIRST.index(n) for n in unit if n in LONGEST_FIRST), default=len(LONGEST_FIRST))

    return sorted(units, key=rank)


def run_parallel(jobs: list, workers: int, log_dir: Path, progress: bool = True) -> dict[str, dict]:
    """Run (recipe, options) jobs on `workers` processes; returns each recipe's run.json status. A worker that dies
    (killed, out of memory) costs only the recipes of the unit it was running: they are reported as failed, a new
    worker takes the remaining units, and a rerun resumes them."""
    import multiprocessing as mp
    import queue

    by_name = {recipe.name: (recipe, opts.model_copy(update={"progress": False})) for recipe, opts in jobs}
    units = [[by_name[n] for n in unit] for unit in plan(list(by_name))]
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: its own thread count, no forked torch state
    tasks, events = ctx.Queue(), ctx.Queue()
    for i in range(len(units)):
        tasks.put(i)
    for _ in range(workers):
        tasks.put(None)  # one stop sign per worker (a replacement takes the one its dead predecessor left)
    threads = threads_per_worker(workers)
    status: dict[str, dict] = {}
    resolved: set[int] = set()
    running: dict[int, int | None] = {}

    def start(slot: int):
        proc = ctx.Process(target=_worker, args=(slot, tasks, events, units, threads, str(log_dir)), daemon=True)
        proc.start()
        running[slot] = None
        return proc

    with _env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)), _View(progress, jobs, workers) as view:
        procs = {slot: start(slot) for slot in range(workers)}
        try:
            while len(resolved) < len(units):
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    event = None
                if event is not None:
                    kind, who, fields = event
                    if kind == "take":
                        running[who] = fields["unit"]
                    elif kind == "unit":
                        status.update(fields["status"])
                        resolved.add(fields["unit"])
                        running[who] = None
                    else:
                        view.show(kind, who, fields)
                    continue
                for slot, proc in list(procs.items()):
                    if proc is None or proc.is_alive():
                        continue
                    unit = running.get(slot)
                    if unit is not None:  # died mid-unit: its unfinished recipes are reported, not retried
                        for recipe, _ in units[unit]:
                            if recipe.name not in status:
                                status[recipe.name] = {"error": f"worker process died (exit code {proc.exitcode}); "
                                                                f"see {log_dir}/ and rerun to resume", "seconds": 0}
                                view.show("end", recipe.name, status[recipe.name])
                        resolved.add(unit)
                    procs[slot] = start(slot) if proc.exitcode != 0 and len(resolved) < len(units) else None
                if all(p is None for p in procs.values()):
                    break
        except BaseException:
            for proc in procs.values():  # Ctrl-C: stop the workers too; the finished cells stay on disk
                if proc is not None:
                    proc.terminate()
            raise
        finally:
            for proc in procs.values():
                if proc is not None:
                    proc.join(timeout=10)
    for unit in units:  # anything no worker could take (all of them died before)
        for recipe, _ in unit:
            status.setdefault(recipe.name, {"error": "not run: no worker was left; rerun to resume", "seconds": 0})
    return status


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(slot: int, tasks, events, units: list, threads: int, log_dir: str) -> None:
    """A worker process: output to its log file (not over the parent's view), its thread count, then units from
    the queue until a stop sign."""
    fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import torch

    from loramem.experiments.runner import run_recipe_status

    torch.set_num_threads(threads)
    while (unit := tasks.get()) is not None:
        events.put(("take", slot, {"unit": unit}))
        status = {}
        for recipe, opts in units[unit]:
            events.put(("begin", recipe.name, {}))
            print(f"== {recipe.name} ({time.strftime('%H:%M:%S')})", flush=True)
            status[recipe.name] = run_recipe_status(
                recipe, opts, listener=lambda event, _name=recipe.name, **f: events.put((event, _name, f)))
            events.put(("end", recipe.name, status[recipe.name]))
        events.put(("unit", slot, {"unit": unit, "status": status}))


class _View:
    """One rich view for all workers: a bar per running recipe (cells, current cell, ETA) and an overall bar."""

    def __init__(self, enabled: bool, jobs: list, workers: int) -> None:
        self.enabled = enabled
        self.tasks: dict[str, int] = {}
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[cell]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.overall = self.bar.add_task(f"[bold]datasheet[/bold] ({workers} recipes at once)", total=len(jobs),
                                             cell="recipes")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def show(self, event: str, recipe: str, fields: dict) -> None:
        if self.enabled:
            if event == "grid":
                self.tasks[recipe] = self.bar.add_task(f"  {recipe}", total=fields["total"],
                                                       completed=fields["done"], cell="")
            elif event == "cell" and recipe in self.tasks:
                self.bar.update(self.tasks[recipe], cell=fields["cell"])
            elif event == "row" and recipe in self.tasks:
                self.bar.advance(self.tasks[recipe])
            elif event == "end":
                self.bar.advance(self.overall)
                if recipe in self.tasks:
                    note = fields.get("error") or f"done in {fields.get('seconds', 0):.0f} s"
                    self.bar.update(self.tasks[recipe], cell=note[:60])
