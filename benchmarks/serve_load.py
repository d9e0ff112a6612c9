"""Serving load: N concurrent streaming clients on loopback, each asking for a different module of one bank.

The same bank is served twice by a real uvicorn on 127.0.0.1: one request at a time (max batch 1, whole-prompt
prefill: what a server without batching does) and continuous batching over mixed adapters (requests join and
leave the running batch between decode steps, long prompts prefilled in chunks). The bank holds more modules than
the resident LRU keeps loaded, so adapters are loaded and evicted while the batch runs. For both it prints
requests/s, p50/p95 latency and time to first token (TTFT) under load, then the TTFT of a one-line request sent
while a ~2,000-token prompt is being served, and ends with `batching_speedup: X` (throughput ratio).

    python benchmarks/serve_load.py [--model smollm2-135m] [--modules 8] [--resident 4] [--clients 16]
                                    [--requests 64] [--long-tokens 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loramem.bank.store import MemoryBank  # noqa: E402
from loramem.bank.write import write_to_bank  # noqa: E402
from loramem.config import AskConfig, ServeConfig, WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.models import load_base  # noqa: E402


def build_bank(root: Path, model: str, n_modules: int) -> tuple[MemoryBank, list[tuple[str, str]]]:
    """A bank of n small modules of two facts each, trained until they recall them (answers of ~14 tokens)."""
    base = load_base(model)
    bank = MemoryBank(root)
    entries = phonebook.generate(n_modules * 2, seed=1)
    questions = []
    for i in range(n_modules):
        part = entries[2 * i: 2 * i + 2]
        f = phonebook.write(part, root.parent / f"part{i}.csv")
        cfg = WriterConfig(rank=4, layers=f"{base.n_layers - 2}-{base.n_layers - 1}", steps=60, lr=3e-3,
                           target_em=1.0, eval_every=10, progress=False)
        write_to_bank(f, bank, f"m{i}", base, cfg)
        questions += [(f"m{i}", e.question()) for e in part]
    return bank, questions


def serve(bank: MemoryBank, model: str, max_batch: int, prefill_chunk: int, resident: int):
    import uvicorn

    from loramem.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(port=port, max_batch=max_batch, batch_window_ms=5, prefill_chunk=prefill_chunk,
                      request_timeout_s=None, ask=AskConfig(resident=resident))
    app = create_app(bank.root, model, cfg)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, th, f"http://127.0.0.1:{port}/v1"


def timed(client, model: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(time to the first content chunk, total) of one streamed chat completion, in seconds."""
    t = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model=model, max_tokens=max_tokens, stream=True,
                                                messages=[{"role": "user", "content": prompt}]):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t
    total = time.perf_counter() - t
    return (first if first is not None else total), total


def load(client, questions: list[tuple[str, str]], clients: int, requests: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[float, float]:
        name, q = questions[i % len(questions)]
        return timed(client, f"loramem:{name}", q, max_tokens)

    one(0)  # warm: first decode done
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(t for _, t in got)
    ttft = sorted(f for f, _ in got)
    return {"rps": requests / wall, "p50": statistics.median(lat), "p95": lat[int(0.95 * (len(lat) - 1))],
            "ttft50": statistics.median(ttft), "ttft95": ttft[int(0.95 * (len(ttft) - 1))]}


def behind_long(client, questions, long_tokens: int) -> tuple[float, float]:
    """(TTFT of a one-line request sent 0.3 s after a long prompt, that long request's total time)."""
    name, q = questions[0]
    long_prompt = "Here are some notes. " + "word " * long_tokens + "\n" + q
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(timed, client, f"loramem:{name}", long_prompt, 8)
        time.sleep(0.3)
        ttft, _ = timed(client, f"loramem:{questions[1][0]}", questions[1][1], 8)
        return ttft, fut.result()[1]


def main() -> None:
    import openai

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--modules", type=int, default=8)
    ap.add_argument("--resident", type=int, default=4, help="modules the server keeps loaded (LRU)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=2000)
    ap.add_argument("--prefill-chunk", type=int, default=128)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bank, questions = build_bank(Path(tmp) / "bank", a.model, a.modules)
        print(f"model {a.model}, {a.modules} modules ({a.resident} resident), {a.clients} clients, {a.requests} "
              f"requests, max_tokens {a.max_tokens}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        results = {}
        for label, max_batch, chunk in (("one at a time", 1, 0), ("continuous batching", 16, a.prefill_chunk)):
            srv, th, url = serve(bank, a.model, max_batch, chunk, a.resident)
            client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
            results[label] = r = load(client, questions, a.clients, a.requests, a.max_tokens)
            if a.long_tokens:
                r["behind"], r["long"] = behind_long(client, questions, a.long_tokens)
            srv.should_exit = True
            th.join(timeout=30)
            print(f"{label:20s} {r['rps']:6.2f} req/s  p50 {r['p50'] * 1000:7.0f} ms  p95 {r['p95'] * 1000:7.0f} ms"
                  f"  TTFT p50 {r['ttft50'] * 1000:6.0f} ms  p95 {r['ttft95'] * 1000:6.0f} ms"
                  + (f"  TTFT behind a {a.long_tokens}-token prompt {r['behind'] * 1000:6.0f} ms (the long one "
                     f"took {r['long']:.1f} s)" if a.long_tokens else ""), flush=True)
    speedup = results["continuous batching"]["rps"] / results["one at a time"]["rps"]
    print(f"batching_speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
