"""Routing quality of every router as a fraction of the oracle, on banks where each question's gold module is
known (src/loramem/experiments/route_cases.py), and answer exact match per router with trained modules:

    PYTHONPATH=src python benchmarks/routing_quality.py [--quick] [--paper-data DIR] [--latency-rows N]
                                                       [--answer-facts N] [--answer-questions N] [--cache DIR]

Routing: (a) the paper's 128K PhoneBook in 16 sectors, (b) QA facts in JSONL partitioned 8 and 32 ways, (c)
PaperQA with one module per paper; (a) and (b) asked with the trained questions and with template paraphrases.
Top-1 / top-3 routing accuracy needs no trained module (the oracle routes every question to its gold module: 1.0).

Answers (src/loramem/experiments/route_answers.py): QA facts (default 160) partitioned 8 ways are trained into
real smollm2-135m modules (`write_parts`, all eight in one pass; the bank is cached under --cache, so a rerun only
asks), then --answer-questions trained questions and as many paraphrases are asked through the answer pipeline
(`ask_many`, route=NAME, top_k=1) for every router, `lora` and `oracle` included.

Ends with:
- `route_<name>_of_oracle: X` per router: mean top-1 routing accuracy over all routing cases and question kinds,
  as a fraction of the oracle's (1.0); for `lora`, which asks the modules, its top-1 routing accuracy on the
  trained answer bank (both question kinds);
- `answer_<name>_of_oracle: X` per router: answer exact match over all asked questions / the oracle's;
- `route_ms_per_query_100k: Y`: the default router (embed) over 100,000 synthetic rows, encoder included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROUTED = ("embed", "bm25", "hybrid", "embed-sum", "embed-module", "bm25-module")
ROUTED_ANSWER = ("embed", "bm25", "hybrid", "lora", "embed-module", "bm25-module")  # registered routers


def routers(case):
    from loramem.bank.fact_routing import FactEmbedRouter
    from loramem.bank.routing import build_router

    for name in ROUTED:
        if name == "embed-sum":  # the aggregation ablation: sum of the retrieved rows' cosines per module
            yield name, FactEmbedRouter(case.modules, case.keys, how="sum")
        else:
            yield name, build_router(name, case.modules, keys=case.keys)


def with_llm_paraphrases(cases: list, mode: str) -> list:
    """Cases (a) and (b) with a third question kind rewritten by the configured endpoint (PaperQA keeps its own)."""
    from loramem.chat import OpenAIChat
    from loramem.config import EndpointConfig
    from loramem.experiments.route_cases import llm_paraphrases

    cfg = EndpointConfig.from_env()
    if mode == "off" or (mode == "auto" and not (cfg.base_url and cfg.model)):
        print("llm paraphrases: off (no OpenAI-compatible endpoint configured: LORAMEM_OPENAI_BASE_URL, "
              "LORAMEM_OPENAI_MODEL)" if mode == "auto" else "llm paraphrases: off")
        return cases
    llm = OpenAIChat(cfg)
    print(f"llm paraphrases: {llm.name} at {cfg.base_url}")
    return [llm_paraphrases(c, llm) if not c.name.startswith("paperqa") else c for c in cases]


def route_table(cases) -> list[dict]:
    from loramem.experiments.route_cases import accuracy

    rows = []
    for case in cases:
        for name, router in routers(case):
            for kind in case.questions:
                t0 = time.perf_counter()
                acc = accuracy(router, case, kind)
                rows.append({"case": case.name, "questions": kind, "router": name, "top1": acc["top1"],
                             "top3": acc["top3"], "n": acc["n"], "s": time.perf_counter() - t0})
                print(f"{case.name:18s} {kind:10s} {name:12s} top-1 {acc['top1']:.3f} top-3 {acc['top3']:.3f} "
                      f"(n={acc['n']}, {rows[-1]['s']:.1f} s)", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys((r["case"], r["questions"]) for r in rows))
    head = "| router | " + " | ".join(f"{c} {q}" for c, q in cols) + " | mean |"
    lines = [head, "|" + "---|" * (len(cols) + 2), "| oracle | " + " | ".join("1.000" for _ in cols) + " | 1.000 |"]
    for name in dict.fromkeys(r["router"] for r in rows):
        got = {(r["case"], r["questions"]): r for r in rows if r["router"] == name}
        cells = [f"{got[c]['top1']:.3f} / {got[c]['top3']:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean([got[c]['top1'] for c in cols]):.3f} |")
    return "\n".join(lines) + "\n\n(top-1 / top-3 routing accuracy; the oracle's is 1.0, so these are fractions of it)"


def answer_table(args, tmp: Path) -> list[dict]:
    """Train (or reuse) the QA bank of the answer case and ask it through every router."""
    from loramem.config import loramem_home
    from loramem.experiments import route_answers, route_cases

    case = route_cases.qa(args.answer_facts, 8, tmp / "answers")
    cache = args.cache or loramem_home() / "routing-quality"
    bank, names, train_s = route_answers.trained_bank(case, cache)
    print(f"answer bank {bank.root}: {len(names)} modules " + (f"trained in {train_s:.0f} s" if train_s else
                                                               "cached"), flush=True)
    n = args.answer_questions or (24 if args.quick else 80)
    return route_answers.ask_all(bank, case, names, ["oracle", *ROUTED_ANSWER], limit=n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paper-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/paper-release")
    ap.add_argument("--quick", action="store_true", help="small run: fewer PhoneBook questions and QA facts")
    ap.add_argument("--qa-facts", type=int, default=None, help="QA facts of case (b) (default 480, quick 160)")
    ap.add_argument("--phonebook-questions", type=int, default=None, help="sampled (default 2000, quick 300)")
    ap.add_argument("--latency-rows", type=int, default=100_000, help="rows of the latency bank (0: skip)")
    ap.add_argument("--answer-facts", type=int, default=160, help="QA facts of the trained answer bank (0: skip)")
    ap.add_argument("--answer-questions", type=int, default=None,
                    help="questions asked per kind, evenly spaced (default 80, quick 24)")
    ap.add_argument("--cache", type=Path, default=None, help="trained banks (default $LORAMEM_HOME/routing-quality)")
    ap.add_argument("--out", type=Path, default=None, help="write the tables (routing_quality.md) here")
    ap.add_argument("--llm-paraphrases", choices=("auto", "on", "off"), default="auto",
                    help="ask cases (a) and (b) with questions rewritten by the OpenAI-compatible endpoint too "
                         "(LORAMEM_OPENAI_BASE_URL / _MODEL): auto uses it when one is configured")
    args = ap.parse_args()

    import torch

    from loramem.experiments import route_answers, route_cases

    torch.set_num_threads(1)
    qa_n = args.qa_facts or (160 if args.quick else 480)
    pb_n = args.phonebook_questions or (300 if args.quick else 2000)
    if not args.paper_data.is_dir():
        print(f"paper release not found at {args.paper_data}; cases (a) and (c) skipped (pass --paper-data DIR)")
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        if args.paper_data.is_dir():
            cases.append(route_cases.phonebook(args.paper_data, pb_n))
        cases += [route_cases.qa(qa_n, 8, Path(tmp)), route_cases.qa(qa_n, 32, Path(tmp))]
        if args.paper_data.is_dir():
            cases.append(route_cases.paperqa(args.paper_data))
        cases = with_llm_paraphrases(cases, args.llm_paraphrases)
        rows = route_table(cases)
        table = markdown(rows)
        print("\n" + table + "\n")
        summary = {name: float(np.mean([r["top1"] for r in rows if r["router"] == name]))
                   for name in dict.fromkeys(r["router"] for r in rows)}
        summary["oracle"] = 1.0
        answers = {}
        if args.answer_facts:
            ans_rows = answer_table(args, Path(tmp))
            summary["lora"] = float(np.mean([r["routed"] for r in ans_rows if r["router"] == "lora"]))
            answers = route_answers.ratios(ans_rows)
            table += "\n\n" + route_answers.markdown(ans_rows)
            print("\n" + route_answers.markdown(ans_rows) + "\n")
        else:
            print("--answer-facts 0: no trained modules, so no answer exact match and no lora line")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "routing_quality.md").write_text(table + "\n")
    if args.latency_rows:
        from routing_latency import measure, report

        m = measure(args.latency_rows, max(1, args.latency_rows // 100))
        report(m)
    for name, v in summary.items():
        print(f"route_{name}_of_oracle: {v:.3f}")
    for name, v in answers.items():
        print(f"answer_{name}_of_oracle: {v:.3f}")
    if args.latency_rows:
        print(f"route_ms_per_query_{args.latency_rows // 1000}k: {m['embed_ms']:.3f}")  # the default router
    sys.stdout.flush()


if __name__ == "__main__":
    main()
