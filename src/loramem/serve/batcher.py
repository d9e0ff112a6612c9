"""One worker thread owns the model: it takes requests from a queue and decodes those that arrive together in
one PEFT mixed-adapter batch (each row through its own module), so requests for different modules are not run
one at a time. Requests that need a merge of several modules run alone (their merged adapter is cached)."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from loramem.bank.ask import Session, activate
from loramem.bank.generate import BASE, generate_rows
from loramem.bank.routing import route_many
from loramem.config import MergeConfig
from loramem.errors import UserError


@dataclass
class Job:
    question: str
    max_tokens: int
    module: str | None = None  # a module name forced by the request's model ("loramem:NAME")
    route: str = "embed"  # AskConfig's default router
    top_k: int = 1
    merge: str = "none"
    mode: str = "lora"  # lora (routed memory), base (memory off), or rag/icl/lora+rag/lora+icl (BANK/index)
    future: Future = field(default_factory=Future)

    def batchable(self) -> bool:
        return self.mode in ("lora", "base") and (self.merge == "none" or self.top_k == 1 or self.module is not None)


class Batcher:
    def __init__(self, session: Session, max_batch: int = 16, window_ms: float = 5.0) -> None:
        self.session = session
        self.max_batch = max_batch
        self.window = window_ms / 1000
        self.q: queue.Queue[Job | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches decoded (for /health and the benchmark)
        self.thread = threading.Thread(target=self._loop, name="loramem-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
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
            together = [j for j in jobs if j.batchable()]
            alone = [j for j in jobs if not j.batchable()]
            if together:
                self._run(self._batch, together)
            for j in alone:
                self._run(self._merged, [j])

    def _run(self, fn, jobs: list[Job]) -> None:
        try:
            for j, res in zip(jobs, fn(jobs), strict=True):
                j.future.set_result(res)
        except Exception as exc:  # every waiting request gets the error, the worker goes on
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)

    def _choose(self, job: Job, routed: dict[int, list] | None = None):
        mods = self.session.modules()
        if not mods:
            raise UserError("the bank has no modules yet; write one with `loramem write FILE --bank DIR --name N`")
        if job.module is not None:
            match = [m for m in mods if m.name == job.module]
            if not match:
                raise UserError(f"no module '{job.module}' in the bank; GET /v1/models lists them")
            return match[0], [{"name": match[0].name, "version": match[0].version, "score": 1.0}]
        scored = (routed or {}).get(id(job)) or self.session.router(job.route).route(job.question, job.top_k)
        return scored[0].module, [s.to_json() for s in scored]

    def _route_together(self, jobs: list[Job]) -> dict[int, list]:
        """Route the batch's routed requests with one call per (router, k): one encoder pass for `embed`."""
        groups: dict[tuple[str, int], list[Job]] = {}
        for j in jobs:
            if j.mode != "base" and j.module is None:
                groups.setdefault((j.route, j.top_k), []).append(j)
        out: dict[int, list] = {}
        if not groups or not self.session.modules():
            return out
        for (kind, k), group in groups.items():
            for j, scored in zip(group, route_many(self.session.router(kind), [j.question for j in group], k),
                                 strict=True):
                out[id(j)] = scored
        return out

    def _batch(self, jobs: list[Job]) -> list[dict]:
        """Top-1 (or forced) module per request, all decoded in one mixed-adapter batch."""
        t0 = time.perf_counter()
        names, chosen, fmt = [], [], "plain"
        routed = self._route_together(jobs)
        for j in jobs:
            if j.mode == "base":
                names.append(BASE)
                chosen.append([])
                continue
            module, info = self._choose(j, routed)
            names.append(self.session.resident.ensure(module, pinned=set(names)))
            chosen.append(info)
            fmt = module.format
        t1 = time.perf_counter()
        host = self.session.resident.host
        if host is None:  # only base-mode requests and nothing loaded yet: load one module to get the wrapper
            self.session.resident.ensure(self.session.modules()[0])
            host = self.session.resident.host
        rows = generate_rows(host, self.session.base, [j.question for j in jobs], names, fmt,
                             max(j.max_tokens for j in jobs))
        t2 = time.perf_counter()
        self.batches.append(len(jobs))
        return [self._result(j, r, c, (t1 - t0) * 1000, (t2 - t1) * 1000, len(jobs))
                for j, r, c in zip(jobs, rows, chosen, strict=True)]

    def _merged(self, jobs: list[Job]) -> list[dict]:
        job = jobs[0]
        if job.mode not in ("lora", "base"):
            return [self._context(job)]
        t0 = time.perf_counter()
        scored = self.session.router(job.route).route(job.question, job.top_k)
        name, _ = activate(self.session, scored, MergeConfig(method=job.merge))
        t1 = time.perf_counter()
        row = generate_rows(self.session.resident.host, self.session.base, [job.question], [name],
                            scored[0].module.format, job.max_tokens)[0]
        self.batches.append(1)
        return [self._result(job, row, [s.to_json() for s in scored], (t1 - t0) * 1000,
                             (time.perf_counter() - t1) * 1000, 1)]

    def _context(self, job: Job) -> dict:
        """A mode with retrieved chunks or whole documents in the prompt (loramem.modes over the bank's index)."""
        from loramem.bank.ask import ask_mode
        from loramem.config import AnswerConfig

        cfg = self.session.cfg.model_copy(update={"route": job.route, "top_k": job.top_k,
                                                  "merge": MergeConfig(method=job.merge)})
        res = ask_mode(job.question, self.session.bank, job.mode, self.session.base.name, cfg,
                       answer_cfg=AnswerConfig(max_new_tokens=job.max_tokens))
        self.batches.append(1)
        return {"text": res["answer"], "prompt_tokens": res["prompt_tokens"],
                "completion_tokens": res["generated_tokens"], "modules": res.get("modules", []),
                "route_merge_ms": round(res.get("route_ms", 0) + res.get("merge_ms", 0), 2),
                "generate_ms": res["latency_ms"], "batch": 1, "mode": job.mode}

    def _result(self, job: Job, row, chosen, route_ms: float, gen_ms: float, batch: int) -> dict:
        text = row.text
        if row.new_tokens > job.max_tokens:  # the batch decoded for its longest request: cut to this one's limit
            tok = self.session.base.tokenizer
            text = tok.decode(tok(row.text, add_special_tokens=False).input_ids[: job.max_tokens]).strip()
        return {"text": text, "prompt_tokens": row.prompt_tokens, "completion_tokens": min(row.new_tokens,
                job.max_tokens), "modules": chosen, "route_merge_ms": round(route_ms, 2),
                "generate_ms": round(gen_ms, 2), "batch": batch, "mode": job.mode}
