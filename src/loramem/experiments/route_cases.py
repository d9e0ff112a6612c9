"""Routing-quality cases: banks of known facts where the gold module of every question is known, so routing
top-1 / top-3 accuracy needs no trained module (benchmarks/routing_quality.py, the Q9 recipe).

- phonebook: the paper's 128K PhoneBook in its 16 sectors (pb_cf/phonebook_qa_128K_routing_meta.json);
- qa-N: question/answer facts in JSONL (people x relations, so a name alone does not pick the module),
  partitioned N ways by the same `partition_file` as `loramem write --partition N`;
- paperqa: the paper's PaperQA, one module per paper keyed by title + introduction (a document module).
Each is asked with the trained questions and with template paraphrases (other words, same fact).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from loramem.bank.manifest import ModuleInfo
from loramem.bank.partition import Part, partition_file
from loramem.bank.rowkeys import RowKeys, embed_rows, row_texts

# (relation, answers, trained template, paraphrase templates): the paraphrases share the name, not the wording
RELATIONS = [
    ("city", ["Lisbon", "Osaka", "Denver", "Nairobi", "Lyon", "Krakow", "Austin", "Perth", "Porto", "Quito"],
     "In which city was {n} born?", ["Where was {n} born?", "What is the birthplace of {n}?",
                                     "{n} was born in which city?"]),
    ("job", ["chemist", "pilot", "architect", "nurse", "lawyer", "baker", "geologist", "violinist", "judge"],
     "What is the profession of {n}?", ["What does {n} do for a living?", "What is {n}'s job?",
                                        "{n} works as what?"]),
    ("employer", ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell"],
     "Which company does {n} work for?", ["Who is {n}'s employer?", "Where is {n} employed?",
                                          "{n} is employed by which company?"]),
    ("year", [str(y) for y in range(1950, 2005)],
     "In what year was {n} born?", ["When was {n} born?", "What is the birth year of {n}?",
                                    "{n} was born in what year?"]),
]
PHONEBOOK_PARAPHRASES = ["What number can I call to reach {n}?", "Tell me the telephone number of {n}.",
                         "How do I phone {n}?", "{n} can be reached at which number?"]


@dataclass
class Case:
    """Modules (routing stubs), their row keys, and questions with their gold module."""

    name: str
    modules: list[ModuleInfo]
    keys: RowKeys
    questions: dict[str, list[str]]  # "trained" / "paraphrase" -> questions
    gold: list[int]  # module index per question (the same order in every kind)
    parts: list[Part] | None = None  # the training parts (for writing real modules)


def stub(name: str, key_text: str, keys: list[str]) -> ModuleInfo:
    """A module as routing sees it (name, key text, fact keys); no adapter behind it."""
    return ModuleInfo(name=name, version=1, path="", base_name="", base_fingerprint="", rank=0, targets=[],
                      n_params=0, sources={}, view_mix={}, tokens=0, record={}, key_text=key_text, keys=keys)


def from_parts(name: str, parts: list[Part], questions: dict[str, list[str]], gold: list[int]) -> Case:
    """A case over training parts: modules keyed as `write_to_bank` keys them, rows as it stores them."""
    modules = [stub(f"m{p.suffix or '-00'}", p.key_text, p.keys) for p in parts]
    texts, owner = [], []
    for i, p in enumerate(parts):
        rows = row_texts(p.examples)
        texts += rows
        owner += [i] * len(rows)
    keys = RowKeys.build(modules, texts, embed_rows(texts), np.asarray(owner, dtype=np.int32))
    return Case(name, modules, keys, questions, gold, parts)


def phonebook(release: Path, limit: int | None = None, seed: int = 0) -> Case:
    """The paper's 16 sectors of the 128K PhoneBook; `limit` questions sampled evenly (all when None)."""
    meta = Path(release) / "pb_cf" / "phonebook_qa_128K_routing_meta.json"
    parts = partition_file(meta)
    asked = [(i, e.key) for i, p in enumerate(parts) for e in p.examples]
    if limit is not None and limit < len(asked):
        asked = random.Random(seed).sample(asked, limit)
    rng = random.Random(seed + 1)
    questions = {"trained": [f"What is the phone number of {n}?" for _, n in asked],
                 "paraphrase": [rng.choice(PHONEBOOK_PARAPHRASES).format(n=n) for _, n in asked]}
    return from_parts("phonebook-128K-16", parts, questions, [i for i, _ in asked])


def qa_facts(n: int, seed: int = 0) -> list[dict]:
    """`n` JSONL fact rows {question, answer, key, paraphrases}: people x relations (names from the PhoneBook
    generator, each person has several facts, so the relation matters as much as the name)."""
    from loramem.data import phonebook as pb

    rng = random.Random(seed)
    people = [e.name for e in pb.generate(max(1, n // 2), seed)]
    rows, used = [], set()
    while len(rows) < n:
        person, (rel, answers, trained, paras) = rng.choice(people), rng.choice(RELATIONS)
        if (person, rel) in used:
            continue
        used.add((person, rel))
        rows.append({"question": trained.format(n=person), "answer": rng.choice(answers),
                     "key": f"{person} / {rel}", "paraphrases": [p.format(n=person) for p in paras]})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r[k] for k in ("question", "answer", "key")}) + "\n" for r in rows))
    return path


def qa(n_facts: int, n_parts: int, folder: Path, seed: int = 0) -> Case:
    """`n_facts` QA facts written to JSONL and partitioned `n_parts` ways as `loramem write` does."""
    rows = qa_facts(n_facts, seed)
    parts = partition_file(write_jsonl(rows, folder / f"qa-{n_facts}-{seed}.jsonl"), n_parts)
    gold = [i for i, p in enumerate(parts) for _ in p.examples]
    rng = random.Random(seed + 1)
    questions = {"trained": [r["question"] for r in rows], "paraphrase": [rng.choice(r["paraphrases"]) for r in rows]}
    return from_parts(f"qa-{n_facts}-{n_parts}", parts, questions, gold)


def paperqa(release: Path) -> Case:
    """One module per paper of the paper's PaperQA, keyed by title + introduction (no training rows: a document
    module keeps its module-level key), asked the papers' own questions."""
    from loramem.bank.partition import KEY_TEXT_CHARS
    from loramem.data.paperqa import read_paperqa

    docs = read_paperqa(Path(release) / "paperqa" / "paperQA_public.json")
    modules = [stub(f"paper-{d.id}", f"{d.title}: {d.text[:KEY_TEXT_CHARS]}", [d.title]) for d in docs]
    keys = RowKeys.modules_only(modules)
    questions = [q.question for d in docs for q in d.questions]
    return Case("paperqa", modules, keys, {"trained": questions},
                [i for i, d in enumerate(docs) for _ in d.questions])


def accuracy(router, case: Case, kind: str, k: int = 3) -> dict:
    """Top-1 and top-k routing accuracy of a router on one kind of question of a case."""
    from loramem.bank.routing import route_many

    got = route_many(router, case.questions[kind], k)
    index = {m.name: i for i, m in enumerate(case.modules)}
    picks = [[index[s.module.name] for s in r] for r in got]
    top1 = float(np.mean([p[0] == g for p, g in zip(picks, case.gold, strict=True)]))
    topk = float(np.mean([g in p for p, g in zip(picks, case.gold, strict=True)]))
    return {"top1": top1, f"top{k}": topk, "n": len(picks), "picked": [p[0] for p in picks]}


PARAPHRASE_PROMPT = ("Rewrite this question in other words. Keep every name and the meaning; do not answer it.\n"
                     "Reply with the rewritten question only.\n\nQuestion: {q}")


def llm_paraphrases(case: Case, llm, kind: str = "trained") -> Case:
    """The case with one more question kind, "llm-paraphrase": each `kind` question rewritten by a chat model (an
    OpenAI-compatible endpoint: `loramem.chat.OpenAIChat`), same gold module. A reply that is empty or repeats
    the question word for word leaves the question as asked."""
    asked = case.questions[kind]
    replies = llm.chat([[{"role": "user", "content": PARAPHRASE_PROMPT.format(q=q)}] for q in asked], max_tokens=64)
    out = []
    for q, r in zip(asked, replies, strict=True):
        line = next((x.strip().strip('"') for x in (r or "").splitlines() if x.strip()), "")
        out.append(line if line and line.lower() != q.lower() else q)
    return replace(case, questions={**case.questions, "llm-paraphrase": out})
