"""One worker thread owns the model: it takes requests from a queue and hands those that arrive together to the
answer pipeline as one batch (`answer.pipeline.ask_many`: one mixed-adapter decode, each row through its own
module). The batcher only groups; each request gets its own row or its own error."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from loramem.answer.pipeline import Request, ask_many
from loramem.answer.session import Session


@dataclass
class Job:
    request: Request
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, session: Session, max_batch: int = 16, window_ms: float = 5.0) -> None:
        self.session = session
        self.max_batch = max_batch
        self.window = window_ms / 1000
        self.q: queue.Queue[Job | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches decoded (for /health and the benchmark)
        self.thread = threading.Thread(target=self._loop, name="loramem-batcher", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> Future:
        job = Job(request)
        self.q.put(job)
        return job.future

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            jobs = [job]
            deadline = time.perf_counter() + self.window
            while len(jobs) < self.max_batch:
                try:
                    nxt = self.q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                jobs.append(nxt)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        try:
            results = ask_many(self.session, [j.request for j in jobs])
        except Exception as exc:  # the pipeline isolates requests; this is the last guard: the worker goes on
            results = [exc] * len(jobs)
        self.batches.append(len(jobs))
        for j, res in zip(jobs, results, strict=True):
            if isinstance(res, Exception):
                j.future.set_exception(res)
            else:
                j.future.set_result(res)
