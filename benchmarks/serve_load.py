"""Serving load: N concurrent clients on loopback, each asking questions for a different module of one bank.

The same bank is served twice by a real uvicorn on 127.0.0.1: with mixed-adapter batching (requests for
different modules decoded together) and one request at a time (max batch 1). Prints throughput and p50/p95
latency for both, and ends with `batching_speedup: X` (throughput ratio).

    python benchmarks/serve_load.py [--model smollm2-135m] [--modules 8] [--clients 16] [--requests 64]
"""

from __future__ import annotations

import argparse
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
from loramem.config import ServeConfig, WriterConfig  # noqa: E402
from loramem.data import phonebook  # noqa: E402
from loramem.models import load_base  # noqa: E402


def build_bank(root: Path, model: str, n_modules: int) -> tuple[MemoryBank, list[tuple[str, str]]]:
    """A bank of n small modules (a few facts each, a few training steps: the load matters here, not recall)."""
    base = load_base(model)
    bank = MemoryBank(root)
    entries = phonebook.generate(n_modules * 2, seed=1)
    questions = []
    for i in range(n_modules):
        part = entries[2 * i: 2 * i + 2]
        f = phonebook.write(part, root.parent / f"part{i}.csv")
        cfg = WriterConfig(rank=4, layers=f"{base.n_layers - 2}-{base.n_layers - 1}", steps=3, target_em=None,
                           progress=False)
        write_to_bank(f, bank, f"m{i}", base, cfg)
        questions += [(f"m{i}", e.question()) for e in part]
    return bank, questions


def serve(bank: MemoryBank, model: str, max_batch: int):
    import uvicorn

    from loramem.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(bank.root, model, ServeConfig(port=port, max_batch=max_batch, batch_window_ms=5))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, th, f"http://127.0.0.1:{port}/v1"


def load(url: str, questions: list[tuple[str, str]], clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> float:
        name, q = questions[i % len(questions)]
        t = time.perf_counter()
        client.chat.completions.create(model=f"loramem:{name}", max_tokens=max_tokens,
                                       messages=[{"role": "user", "content": q}])
        return time.perf_counter() - t

    one(0)  # warm: modules loaded, first decode done
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": requests / wall, "p50": statistics.median(lat), "p95": lat[int(0.95 * (len(lat) - 1))],
            "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--modules", type=int, default=8)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bank, questions = build_bank(Path(tmp) / "bank", a.model, a.modules)
        print(f"model {a.model}, {a.modules} modules, {a.clients} clients, {a.requests} requests, "
              f"max_tokens {a.max_tokens}")
        results = {}
        for label, max_batch in (("one at a time", 1), ("mixed-adapter batching", 16)):
            srv, th, url = serve(bank, a.model, max_batch)
            results[label] = r = load(url, questions, a.clients, a.requests, a.max_tokens)
            srv.should_exit = True
            th.join(timeout=30)
            print(f"{label:24s} {r['rps']:7.2f} req/s   p50 {r['p50'] * 1000:8.0f} ms   p95 {r['p95'] * 1000:8.0f} ms")
    speedup = results["mixed-adapter batching"]["rps"] / results["one at a time"]["rps"]
    print(f"batching_speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
