"""Answer exact match per router, with trained modules: a routing case's parts written as real modules into a
bank (`write_parts`, all parts in one pass over the base, as `loramem write --partition N` does), then every
question asked through the answer pipeline (`ask_many`, route=NAME, top_k=1) for every router, the oracle
included (benchmarks/routing_quality.py).

The oracle routes a trained question to the module trained on it (`--route oracle`); a paraphrase has no gold
module the oracle router can know, so for paraphrases the oracle is the gold module forced through the same road
(`Request.module`, as the server's `loramem:NAME` model does).

The bank is cached under CACHE/<hash of base, facts and writer settings>, so a rerun only asks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from loramem.config import AskConfig, WriterConfig
from loramem.experiments.route_cases import Case

# fast, honest modules: every layer's linear maps would memorize too, ~3x slower on a CPU; the top six layers
# let the frozen layers below be cached (the writer's prefix cache), early stop at training exact match 1.0
WRITER = {"rank": 4, "targets": "all-linear", "layers": "24-29", "lr": 5e-3, "epochs": 60, "batch_size": 4}
NAME = "qa"


def bank_tag(case: Case, model_fingerprint: str, writer: dict) -> str:
    """Cache key: the base's weights, every training row and the writer settings."""
    rows = [[(e.prompt, e.answer, e.key) for e in p.examples] for p in case.parts]
    blob = json.dumps({"model": model_fingerprint, "rows": rows, "writer": writer, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def trained_bank(case: Case, cache: Path, model: str = "smollm2-135m", writer: dict | None = None):
    """The case's parts as trained modules in a bank under `cache` (reused when it holds them all) ->
    (bank, module names in part order, seconds spent training; 0 when cached)."""
    from loramem.bank.store import MemoryBank
    from loramem.bank.write import write_parts
    from loramem.models import load_base

    writer = {**WRITER, **(writer or {})}
    base = load_base(model)
    root = Path(cache) / f"{case.name}-{bank_tag(case, base.fingerprint, writer)}"
    names = [NAME + p.suffix for p in case.parts]
    if root.is_dir():
        bank = MemoryBank(root)
        if sorted(m.name for m in bank.list()) == sorted(names):
            return bank, names, 0.0
        shutil.rmtree(root)  # write_parts commits all parts at once, so a partial bank is not ours: start over
    bank = MemoryBank(root)
    t0 = time.perf_counter()
    write_parts(case.parts, bank, NAME, base, WriterConfig(**writer, progress=False))
    return bank, names, time.perf_counter() - t0


def gold_answers(case: Case) -> list[str]:
    """The trained answer of every question, in the case's question order (parts' examples in order)."""
    return [e.answer for p in case.parts for e in p.examples]


def ask_all(bank, case: Case, names: list[str], routers: list[str], limit: int | None = None,
            batch: int = 32, max_new_tokens: int = 8) -> list[dict]:
    """Per (question kind, router): answer exact match, routing accuracy (the gold module answered), n; `limit`
    questions per kind, evenly spaced over the case (answers are a word or a year: 8 new tokens hold them)."""
    from loramem.answer.pipeline import Request, ask_many
    from loramem.answer.session import open_session
    from loramem.metrics import exact_match

    session = open_session(bank)
    golds = gold_answers(case)
    out = []
    for kind, questions in case.questions.items():
        n = len(questions) if limit is None else min(limit, len(questions))
        idx = [i * len(questions) // n for i in range(n)]  # evenly spaced: every module's facts are asked
        for route in routers:
            cfg = AskConfig(route=route, top_k=1, max_new_tokens=max_new_tokens)
            forced = route == "oracle" and kind != "trained"
            reqs = [Request(questions[i], cfg, module=names[case.gold[i]] if forced else None) for i in idx]
            t0 = time.perf_counter()
            rows = []
            for lo in range(0, len(reqs), batch):
                rows += ask_many(session, reqs[lo : lo + batch])
            bad = [r for r in rows if isinstance(r, Exception)]
            if bad:
                raise bad[0]
            em = [exact_match(r["answer"], golds[i]) for r, i in zip(rows, idx, strict=True)]
            hit = [r["modules"][0]["name"] == names[case.gold[i]] for r, i in zip(rows, idx, strict=True)]
            out.append({"case": case.name, "questions": kind, "router": route, "em": sum(em) / len(em),
                        "routed": sum(hit) / len(hit), "n": len(em), "s": round(time.perf_counter() - t0, 1),
                        "oracle_forced": forced})
            print(f"{case.name:18s} {kind:10s} {route:12s} answer EM {out[-1]['em']:.3f} routed "
                  f"{out[-1]['routed']:.3f} (n={len(em)}, {out[-1]['s']:.1f} s)", flush=True)
    return out


def ratios(rows: list[dict]) -> dict[str, float]:
    """Answer EM of each router over all its questions, as a fraction of the oracle's over the same questions."""
    def total(name):
        return sum(r["em"] * r["n"] for r in rows if r["router"] == name)

    oracle = total("oracle")
    return {name: (total(name) / oracle if oracle else 0.0) for name in dict.fromkeys(r["router"] for r in rows)}


def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys((r["case"], r["questions"]) for r in rows))
    lines = ["| router | " + " | ".join(f"{c} {q}" for c, q in cols) + " | of oracle |", "|" + "---|" * (len(cols) + 2)]
    frac = ratios(rows)
    for name in dict.fromkeys(r["router"] for r in rows):
        got = {(r["case"], r["questions"]): r for r in rows if r["router"] == name}
        cells = [f"{got[c]['em']:.3f} ({got[c]['routed']:.3f})" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {frac[name]:.3f} |")
    return "\n".join(lines) + ("\n\n(answer exact match through `ask_many`, top-1; in brackets the share routed to "
                               "the gold module; the last column: answer EM over all questions / the oracle's)")
