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
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from loramem.errors import UserError
from loramem.progress import PLAIN_EVERY_S, OptionalBar, _clock, plain_output

# Recipes that must run in one process, in this order: multi-lora trains the bank the other three reuse.
CHAINS: list[tuple[str, ...]] = [("multi-lora", "routing", "merging", "n-modules")]
# Scheduling hint only (longest first keeps the workers' loads even): the smoke datasheet's slowest recipes on a
# 2-core CPU. Recipes not named here (your own) go last.
# continual was left out until the first cpu run, which then ran it last and alone, on one of its two cores.
LONGEST_FIRST = ["multi-lora", "capacity", "continual", "mixes", "rag-icl", "formats", "generators", "counterfact",
                 "model-scale"]
_NO_SPAWN = ("A recipe defined in __main__, or a script without `if __name__ == '__main__':`, cannot run in worker "
             "processes: use workers=1")
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


def run_parallel(jobs: list, workers: int, log_dir: Path, progress: bool = True,
                 units: list[list[str]] | None = None,
                 follow: Callable[[dict[str, dict]], list[list[tuple]]] | None = None) -> dict[str, dict]:
    """Run (recipe, options) jobs on `workers` processes; returns each recipe's run.json status. `units`: recipe
    names that must run in one worker in order (default `plan`: the chains, longest first). `follow(status)` is
    called in the parent each time a unit finishes, with every status so far; the units of (recipe, options) it
    returns join the queue (the datasheet's ablation reruns start as soon as their recipe's verdict is known), and
    an idle worker waits for them while any unit still runs (a `follow` that raises adds nothing; its traceback
    goes to stderr). A worker that dies
    (killed, out of memory) costs only the recipes of the unit it was running: they are reported as failed, a new
    worker takes the remaining units, and a rerun resumes them. A worker that cannot even start (e.g. a recipe
    defined in __main__, which a fresh interpreter cannot import) is not restarted: its units are reported.

    Each worker talks to the parent over its own pipe (no queue shared between processes, so a worker killed
    mid-message cannot leave a lock held for the others): it says "ready", the parent hands it a unit or None."""
    import multiprocessing as mp
    from collections import deque
    from multiprocessing.connection import wait

    by_name = {recipe.name: (recipe, opts.model_copy(update={"progress": False})) for recipe, opts in jobs}
    units = [[by_name[n] for n in unit] for unit in (units or plan(list(by_name)))]
    _picklable(units)
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: its own thread count, no forked torch state
    threads = threads_per_worker(workers)
    pending = deque(range(len(units)))
    status: dict[str, dict] = {}
    resolved: set[int] = set()
    live: dict[int, tuple] = {}  # slot -> (process, connection)
    running: dict[int, int | None] = {}
    started: dict[int, bool] = {}  # the worker said "ready" at least once
    no_start: list[str] = []
    idle: set[int] = set()  # workers waiting for units that `follow` may still add

    def start(slot: int) -> None:
        here, there = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker, args=(slot, there, threads, str(log_dir)), daemon=True)
        proc.start()
        there.close()
        live[slot], running[slot], started[slot] = (proc, here), None, False

    def hand_out(slot: int) -> None:
        if not pending and follow is not None and len(resolved) < len(units):
            running[slot] = None
            idle.add(slot)  # a unit still running may yet add work
            return
        unit = pending.popleft() if pending else None
        running[slot] = unit
        try:
            # pickled here, loaded there: a unit the worker cannot load is that unit's error, not a dead worker
            live[slot][1].send(None if unit is None else (unit, pickle.dumps(units[unit])))
        except OSError:  # it died meanwhile (its sentinel reports it): the unit goes back for another worker
            if unit is not None:
                pending.appendleft(unit)
                running[slot] = None

    def grow() -> None:
        """Queue the units `follow` returns for the status so far, and wake the idle workers for them."""
        try:
            new = follow(dict(status)) if follow is not None else []
        except Exception:  # noqa: BLE001 - a broken follow costs its extra units, not the recipes running
            print("run_parallel: follow failed, no units added:\n" + traceback.format_exc(), file=sys.stderr,
                  flush=True)
            new = []
        for unit in new:
            units.append([(recipe, opts.model_copy(update={"progress": False})) for recipe, opts in unit])
            view.grow(len(unit))
            try:
                _picklable([units[-1]])
            except UserError as exc:
                fail(len(units) - 1, f"not run: {exc}")
                continue
            pending.append(len(units) - 1)
        while idle and (pending or len(resolved) == len(units)):
            hand_out(idle.pop())

    def fail(unit: int, why: str) -> None:
        for recipe, _ in units[unit]:
            if recipe.name not in status:
                # incomplete: no worker finished it (not started, or its worker died); a datasheet runs it again
                status[recipe.name] = {"error": why, "seconds": 0, "incomplete": True}
                view.show("end", recipe.name, status[recipe.name])
        resolved.add(unit)

    def handle(slot: int, msg: tuple) -> None:
        kind, who, fields = msg
        if kind == "ready":
            started[slot] = True
            hand_out(slot)
        elif kind == "unloadable":
            fail(fields["unit"], f"not run: a worker process could not start it ({fields['error']}). {_NO_SPAWN}")
            running[slot] = None
            grow()
        elif kind == "unit":
            status.update(fields["status"])
            resolved.add(fields["unit"])
            running[slot] = None
            grow()
        else:
            view.show(kind, who, fields)

    def drain(slot: int) -> bool:
        """Read what the worker sent; False once its pipe is closed or broken (it exited or was killed)."""
        conn = live[slot][1]
        while True:
            try:
                if not conn.poll():
                    return True
                msg = conn.recv()
            except (EOFError, OSError, ValueError, ImportError, AttributeError, TypeError):
                return False  # closed, or a message cut short by a kill
            handle(slot, msg)

    with _env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)), _View(progress, jobs, workers) as view:
        for slot in range(workers):
            start(slot)
        try:
            while len(resolved) < len(units) and live:
                by_object = {c: slot for slot, (_, c) in live.items()}
                by_object.update({p.sentinel: slot for slot, (p, _) in live.items()})
                for obj in wait(list(by_object), timeout=1.0):
                    slot = by_object[obj]
                    if not drain(slot):
                        live[slot][0].join(timeout=5)  # its pipe closed: it is exiting
                view.tick()
                for slot, (proc, conn) in list(live.items()):
                    if proc.is_alive():
                        continue
                    drain(slot)  # events it sent just before exiting
                    proc.join()
                    conn.close()
                    del live[slot]
                    idle.discard(slot)
                    if running[slot] is not None and running[slot] not in resolved:
                        fail(running[slot], f"worker process died (exit code {proc.exitcode}); see {log_dir}/ and "
                                            "rerun to resume")
                    if not started[slot]:
                        no_start.append(f"exit code {proc.exitcode}")
                    elif proc.exitcode != 0 and (pending or (follow is not None and len(resolved) < len(units))):
                        start(slot)  # its replacement takes what is queued, or what `follow` adds
        except BaseException:
            for proc, _ in live.values():  # Ctrl-C: stop the workers too; the finished cells stay on disk
                proc.terminate()
            raise
        finally:
            for proc, conn in list(live.values()):
                try:
                    conn.send(None)  # a worker waiting for its next unit stops
                except OSError:
                    pass
                proc.join(timeout=10)
                conn.close()
        why = (f"not run: worker processes could not start ({', '.join(no_start)}; their error is printed above). "
               f"{_NO_SPAWN}") if no_start else "not run: no worker was left; rerun to resume"
        for unit in range(len(units)):
            if unit not in resolved:
                fail(unit, why)
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


def _picklable(units: list) -> None:
    try:
        pickle.dumps(units)
    except Exception as exc:
        raise UserError(f"these recipes cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                        "run them one at a time with --workers 1") from None


def _worker(slot: int, conn, threads: int, log_dir: str) -> None:
    """A worker process: output to its log file (not over the parent's view), its thread count, then the units the
    parent hands it until None."""
    fd = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import torch

    from loramem.runs.runner import run_recipe_status

    torch.set_num_threads(threads)
    conn.send(("ready", slot, {}))
    while (msg := conn.recv()) is not None:
        unit, blob = msg
        try:
            jobs = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - e.g. a recipe defined in the parent's __main__
            conn.send(("unloadable", slot, {"unit": unit, "error": f"{type(exc).__name__}: {exc}"}))
            conn.send(("ready", slot, {}))
            continue
        status = {}
        for recipe, opts in jobs:
            conn.send(("begin", recipe.name, {}))
            print(f"== {recipe.name} ({time.strftime('%H:%M:%S')})", flush=True)
            status[recipe.name] = run_recipe_status(
                recipe, opts, listener=lambda event, _name=recipe.name, **f: conn.send((event, _name, f)))
            conn.send(("end", recipe.name, status[recipe.name]))
        conn.send(("unit", slot, {"unit": unit, "status": status}))
        conn.send(("ready", slot, {}))
    conn.close()


class _View(OptionalBar):
    """One rich view for all workers: a bar per running recipe (cells, current cell, ETA) and an overall bar."""

    def __init__(self, enabled: bool, jobs: list, workers: int) -> None:
        # without a terminal rich draws nothing: a plain line every PLAIN_EVERY_S seconds, and one per finished recipe
        self.plain = enabled and plain_output()
        self.enabled = enabled and not self.plain
        self.tasks: dict[str, int] = {}
        self.state: dict[str, dict] = {}
        self.n_jobs, self.ended, self.t0, self.last, self.every = len(jobs), 0, time.time(), time.time(), PLAIN_EVERY_S
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[cell]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.overall = self.bar.add_task(f"[bold]datasheet[/bold] ({workers} recipes at once)", total=len(jobs),
                                             cell="recipes")

    def grow(self, n: int) -> None:
        """`n` more recipes to run (ablation reruns queued as the run goes)."""
        self.n_jobs += n
        if self.enabled:
            self.bar.update(self.overall, total=self.n_jobs)

    def show(self, event: str, recipe: str, fields: dict) -> None:
        if self.plain:
            self._note(event, recipe, fields)
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

    def _note(self, event: str, recipe: str, fields: dict) -> None:
        st = self.state.setdefault(recipe, {"done": 0, "total": None, "cell": "", "t0": time.time(), "new": 0})
        if event == "grid":
            st.update(total=fields["total"], done=fields["done"], t0=time.time(), new=0)
        elif event == "cell":
            st["cell"] = fields["cell"]
        elif event == "row":
            st["done"] += 1
            st["new"] += 1
        elif event == "end":
            self.ended += 1
            st["ended"] = True
            note = fields.get("error") or f"done in {fields.get('seconds', 0):.0f} s"
            print(f"datasheet: {recipe} {note} ({self.ended}/{self.n_jobs} recipes, "
                  f"{_clock(time.time() - self.t0)} elapsed)", file=sys.stderr, flush=True)

    def tick(self) -> None:
        """The plain line, at most every `every` seconds: each running recipe's cells done, current cell and ETA."""
        now = time.time()
        if not self.plain or now - self.last < self.every:
            return
        self.last = now
        parts = []
        for name, st in self.state.items():
            if st.get("ended"):
                continue
            total = st["total"] if st["total"] is not None else "?"
            eta = ""
            if st["new"] and st["total"] is not None:
                eta = f", ETA {_clock((now - st['t0']) / st['new'] * (st['total'] - st['done']))}"
            parts.append(f"{name} {st['done']}/{total} cells (now {st['cell'] or '-'}{eta})")
        print(f"datasheet: {self.ended}/{self.n_jobs} recipes done, {_clock(now - self.t0)} elapsed; "
              + ("; ".join(parts) or "starting"), file=sys.stderr, flush=True)
