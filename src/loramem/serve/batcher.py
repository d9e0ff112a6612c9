"""The scheduler: one worker thread owns the model and runs continuous batching over mixed adapters.

Between two decode steps it takes the requests that arrived, resolves them (`answer.pipeline.plan_many`: route,
load or merge, build the prompt; a request that fails gets its own error and never joins) and joins them to the
running `decode.Batch`, each row through its own module and in its own prompt format; rows leave as they finish.
A prompt over `prefill_chunk` tokens is prefilled a chunk per step, so a long prompt does not hold short requests
behind its whole prefill. A request that waits past its deadline before joining is refused (`Overloaded`); one
that decodes past it ends with finish "length".
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from loramem.answer.decode import Batch, Row
from loramem.answer.pipeline import Plan, Request, plan_many, result
from loramem.answer.session import Session


class Overloaded(Exception):
    """The request waited past its deadline before it could start (the server answers 429)."""


@dataclass(eq=False)
class Job:
    request: Request
    future: Future = field(default_factory=Future)
    plan: Plan | None = None


class Batcher:
    def __init__(self, session: Session, max_batch: int = 16, window_ms: float = 5.0,
                 prefill_chunk: int = 256) -> None:
        self.session = session
        self.max_batch = max_batch
        self.window = window_ms / 1000
        self.chunk = prefill_chunk
        self.q: queue.Queue[Job | None] = queue.Queue()
        self.batches: list[int] = []  # rows decoding at each step (for /health and the tests)
        self.batch = self._new_batch()
        self.jobs: dict[int, Job] = {}  # id(row) -> its job
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="loramem-batcher", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> Future:
        job = Job(request)
        self.q.put(job)
        return job.future

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=10)

    # ---- the worker thread ----

    def _new_batch(self) -> Batch:
        base = self.session.base
        return Batch(base.model, base.tokenizer, mixed=False, prefill_chunk=self.chunk)

    def _loop(self) -> None:
        while not self.stopped:
            jobs = self._take()
            if jobs:
                self._admit(jobs)
            if self.batch.busy:
                self._step()

    def _take(self) -> list[Job]:
        """Requests that arrived: wait for one when idle (then a short window for company), none when busy."""
        room = self.max_batch - len(self.batch.rows) - len(self.batch.pending)
        jobs: list[Job] = []
        if room <= 0:
            return jobs
        if not self.batch.busy:
            first = self.q.get()
            if first is None:
                self.stopped = True
                return jobs
            jobs.append(first)
            deadline = time.perf_counter() + self.window
        else:
            deadline = time.perf_counter()
        while len(jobs) < room:
            try:
                wait = max(0.0, deadline - time.perf_counter())
                nxt = self.q.get(timeout=wait) if wait else self.q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.stopped = True
                break
            jobs.append(nxt)
        return jobs

    def _admit(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        late = [j for j in jobs if j.request.deadline is not None and now > j.request.deadline]
        for j in late:
            j.future.set_exception(Overloaded("the server was too busy to start this request before its deadline; "
                                              "retry later or send fewer requests at once"))
        jobs = [j for j in jobs if j not in late]
        try:
            plans = plan_many(self.session, [j.request for j in jobs], pinned=frozenset(self.batch.adapters))
        except Exception as exc:  # plan_many isolates requests; this is the last guard: the worker goes on
            plans = None
            for j in jobs:
                j.future.set_exception(exc)
        ready: list[Row] = []
        for j, p in zip(jobs, plans or [], strict=True):
            if p.error is not None:
                j.future.set_exception(p.error)
                continue
            j.plan = p
            row = p.decode_row()
            self.jobs[id(row)] = j
            ready.append(row)
        if not ready:
            return
        host = self.session.resident.host
        if host is not None:  # a module is loaded: every row (base rows too) names its adapter
            self.batch.model, self.batch.mixed = host, True
        self.batch.model.eval()  # a writer in this process may have left it training (LoRA dropout on)
        try:
            self._finish(self.batch.join(ready))
        except Exception as exc:  # the prefill of these rows failed: they fail, the running rows go on
            for r in ready:
                self._fail(r, exc)
            self.batch.pending = [p for p in self.batch.pending if id(p.row) in self.jobs]

    def _step(self) -> None:
        try:
            self.batches.append(len(self.batch.rows) + len(self.batch.pending))
            if len(self.batches) > 100_000:  # a record for /health and the tests, not a leak
                del self.batches[:50_000]
            self._finish(self.batch.step())
        except Exception as exc:  # a step failed: every row in it fails, the worker starts a fresh batch
            for r in self.batch.rows + [p.row for p in self.batch.pending]:
                self._fail(r, exc)
            self.batch = self._new_batch()

    def _finish(self, rows: list[Row]) -> None:
        tok = self.session.base.tokenizer
        for r in rows:
            job = self.jobs.pop(id(r), None)
            if job is None:
                continue
            try:
                job.future.set_result(result(self.session, job.plan, r.decoded(tok)))
            except Exception as exc:
                job.future.set_exception(exc)

    def _fail(self, row: Row, exc: Exception) -> None:
        job = self.jobs.pop(id(row), None)
        if job is not None and not job.future.done():
            job.future.set_exception(exc)
