"""Generators of synthetic supervision: QA pairs, summaries and rewrites of a document, behind one protocol.

    gen = make_generator(GeneratorConfig(kind="openai"))   # or "local" (HF model), "template" (no model)
    pairs = gen.qa_pairs(doc, 40)        # [{"question": ..., "answer": ...}, ...]
    texts = gen.summaries(doc, 8)        # 8 different summaries
    texts = gen.rewrites(doc, 4)         # 4 rewrites of the whole document in different styles

`PromptedGenerator` drives any chat model (chat.py) with versioned prompts and parses QA pairs from JSON or,
failing that, from "Q: ... A: ..." text. `TemplateGenerator` needs no model: exact QA pairs and paraphrased
statements for structured facts (PhoneBook, CounterFact), extractive questions/summaries/rewrites for text.
"""

from __future__ import annotations

import json
import math
import re
from typing import Protocol

from loramem.chat import ChatModel, chat_model
from loramem.config import GeneratorConfig
from loramem.data.documents import Document, Fact, fact_statement
from loramem.registry import GENERATORS

PROMPT_VERSION = "views-v1"

SYSTEM = "You turn documents into study material. Use only facts stated in the document."
QA_PROMPT = """Document title: {title}

Document section:
{section}

Write {n} different question-answer pairs that test knowledge of this section{aspect}. Each question must be
answerable from the section alone; each answer is one or two complete sentences.
Reply with JSON only: {{"pairs": [{{"question": "...", "answer": "..."}}]}}"""
QA_ASPECTS = ["", " (facts, names and numbers)", " (reasons, purposes and relationships)",
              " (how the ideas are structured and argued)"]
SUMMARY_PROMPT = """Document title: {title}

Document:
{text}

Write a summary of this document in one paragraph, {focus}. Reply with the summary only."""
SUMMARY_FOCUS = ["covering its main points", "focusing on the problem it addresses and why it matters",
                 "focusing on the proposed method and how it works", "focusing on results and claims",
                 "for a newcomer to the field", "as a list of its key ideas in prose",
                 "focusing on how it differs from prior work", "in the words of an expert reviewer"]
REWRITE_PROMPT = """Rewrite the following passage {style}. Keep every fact, name and number; do not add facts.

Passage from "{title}":
{section}

Reply with the rewritten passage only."""
REWRITE_STYLES = ["in plain, simple words", "as clear lecture notes in full sentences",
                  "in the style of an encyclopedia article", "as an explanation to a colleague",
                  "in a more concise way", "in a more formal academic style"]


class Generator(Protocol):
    name: str  # recorded with every view, e.g. "template", "local:smollm2-135m", "openai:gpt-4.1"
    prompt_version: str

    def qa_pairs(self, doc: Document, n: int) -> list[dict]: ...
    def summaries(self, doc: Document, m: int) -> list[str]: ...
    def rewrites(self, doc: Document, k: int) -> list[str]: ...


def make_generator(cfg: GeneratorConfig) -> Generator:
    """The registered generator a config names (template, local, openai, or one of your own)."""
    return GENERATORS.get(cfg.kind)(cfg)


@GENERATORS.register("template", help="no model: exact QA pairs and paraphrases from facts, extractive views")
def _template(cfg: GeneratorConfig) -> Generator:
    return TemplateGenerator()


@GENERATORS.register("local", help="a local chat model (--generator-model) writes views from versioned prompts")
def _local(cfg: GeneratorConfig) -> Generator:
    return PromptedGenerator(chat_model("local", cfg.model, cfg.endpoint, cfg.batch_size, cfg.seed), cfg)


@GENERATORS.register("openai", help="an OpenAI-compatible endpoint writes views from versioned prompts")
def _openai(cfg: GeneratorConfig) -> Generator:
    return PromptedGenerator(chat_model("openai", cfg.model, cfg.endpoint, cfg.batch_size, cfg.seed), cfg)


def sections(text: str, max_chars: int) -> list[str]:
    """Paragraph-aligned pieces of at most about `max_chars` (a long paragraph is cut at sentence ends)."""
    parts: list[str] = []
    for para in [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]:
        pieces = [para] if len(para) <= max_chars else _pack(sentences(para), max_chars)
        for piece in pieces:
            if parts and len(parts[-1]) + len(piece) + 2 <= max_chars:
                parts[-1] += "\n\n" + piece
            else:
                parts.append(piece)
    return parts or [text.strip()]


def _pack(items: list[str], max_chars: int) -> list[str]:
    out: list[str] = []
    for s in items:
        if out and len(out[-1]) + len(s) + 1 <= max_chars:
            out[-1] += " " + s
        else:
            out.append(s)
    return out


def sentences(text: str) -> list[str]:
    """Split at ., ! or ? followed by a space and an upper-case letter, digit or bracket (keeps 'et al. (2022)')."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\[(\"])", " ".join(text.split()))
    out: list[str] = []
    for p in parts:
        if out and re.search(r"\b(et al|e\.g|i\.e|etc|vs|Fig|Eq|Sec)\.$", out[-1]):
            out[-1] += " " + p
        else:
            out.append(p)
    return [s for s in out if s]


def parse_qa(text: str) -> list[dict]:
    """QA pairs from a model's reply: JSON ({"pairs": [...]}, a list, any nesting) or Q:/A: lines."""
    pairs = _qa_from_json(text)
    if not pairs:
        pairs = [{"question": q.strip(), "answer": a.strip()} for q, a in re.findall(
            r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*\d*\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*\d*\s*[:.]\s*(.+?)"
            r"(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*\d*\s*[:.]|\Z)", text, flags=re.S | re.I)]
    return [p for p in pairs if p["question"] and p["answer"]]


def _qa_from_json(text: str) -> list[dict]:
    dec = json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r"[\[{]", text)]:
        try:
            obj, _ = dec.raw_decode(text[start:])
        except json.JSONDecodeError:
            continue
        found = _walk_pairs(obj)
        if found:
            return found
    return []


def _walk_pairs(obj) -> list[dict]:
    if isinstance(obj, dict):
        q = obj.get("question") or obj.get("q") or obj.get("Q")
        a = obj.get("answer") or obj.get("a") or obj.get("A")
        if isinstance(q, str) and isinstance(a, str):
            return [{"question": " ".join(q.split()), "answer": " ".join(a.split())}]
        return [p for v in obj.values() for p in _walk_pairs(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in _walk_pairs(v)]
    return []


def _dedupe(pairs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for p in pairs:
        key = re.sub(r"\W+", " ", p["question"].lower()).strip()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


class PromptedGenerator:
    """Views written by a chat model (local or HTTP) from versioned prompts."""

    prompt_version = PROMPT_VERSION

    def __init__(self, llm: ChatModel, cfg: GeneratorConfig | None = None, max_rounds: int = 3) -> None:
        self.llm = llm
        self.cfg = cfg or GeneratorConfig()
        self.name = llm.name
        self.max_rounds = max_rounds

    def _ask(self, prompts: list[str], max_tokens: int, json_mode: bool = False) -> list[str]:
        convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in prompts]
        return self.llm.chat(convs, max_tokens=max_tokens, temperature=self.cfg.temperature, json_mode=json_mode)

    def qa_pairs(self, doc: Document, n: int) -> list[dict]:
        """`n` pairs spread over the document's sections; asks again (other aspects) while short."""
        secs = sections(doc.text, self.cfg.chunk_tokens * 4)
        per = max(1, math.ceil(n / len(secs)))
        by_section: list[list[dict]] = [[] for _ in secs]
        for rnd in range(self.max_rounds):
            aspect = QA_ASPECTS[rnd % len(QA_ASPECTS)]
            todo = [i for i in range(len(secs)) if len(by_section[i]) < per]
            if not todo or sum(len(b) for b in by_section) >= n:
                break
            replies = self._ask([QA_PROMPT.format(title=doc.title, section=secs[i], n=per - len(by_section[i]),
                                                  aspect=aspect) for i in todo],
                                max_tokens=min(self.cfg.max_new_tokens, 80 * per + 40), json_mode=True)
            for i, reply in zip(todo, replies, strict=True):
                by_section[i] = _dedupe(by_section[i] + parse_qa(reply))
        # round-robin over sections, so a short list still covers the whole document
        merged = [b[j] for j in range(max((len(b) for b in by_section), default=0)) for b in by_section if j < len(b)]
        return _dedupe(merged)[:n]

    def summaries(self, doc: Document, m: int) -> list[str]:
        text = doc.text[: self.cfg.chunk_tokens * 4 * 6]  # long documents: the summary reads the beginning
        prompts = [SUMMARY_PROMPT.format(title=doc.title, text=text, focus=SUMMARY_FOCUS[i % len(SUMMARY_FOCUS)])
                   for i in range(m)]
        return [r.strip() for r in self._ask(prompts, max_tokens=min(self.cfg.max_new_tokens, 256))]

    def rewrites(self, doc: Document, k: int) -> list[str]:
        """Each rewrite restyles every section, so it carries the whole document."""
        secs = sections(doc.text, self.cfg.chunk_tokens * 4)
        prompts = [REWRITE_PROMPT.format(style=REWRITE_STYLES[i % len(REWRITE_STYLES)], title=doc.title, section=s)
                   for i in range(k) for s in secs]
        replies = self._ask(prompts, max_tokens=self.cfg.max_new_tokens)
        return ["\n\n".join(r.strip() for r in replies[i * len(secs):(i + 1) * len(secs)]) for i in range(k)]


class TemplateGenerator:
    """No model: exact QA pairs and paraphrased statements from facts; extractive views of plain text."""

    name = "template"
    prompt_version = "template-v1"
    FACT_QUESTIONS = ["{prompt}?", "Do you know {prompt_lc}?", "Tell me: {prompt_lc}?", "Recall {prompt_lc}?"]
    FACT_STATEMENTS = ["{s}", "It is recorded that {s_lc}", "According to the records, {s_lc}", "Fact: {s}"]

    def qa_pairs(self, doc: Document, n: int) -> list[dict]:
        if doc.facts:  # every fact at least once, then paraphrased questions until n
            total = max(n, len(doc.facts))
            return [self._fact_qa(doc.facts[i % len(doc.facts)], i // len(doc.facts)) for i in range(total)]
        sents = [s for s in sentences(doc.text) if len(s.split()) >= 6] or sentences(doc.text)
        out = []
        for i in range(n if sents else 0):  # pass 1: continue a sentence; 2: name the sentence; 3+: later cuts
            words, rnd = sents[i % len(sents)].split(), i // len(sents)
            if rnd == 1:
                out.append({"question": f'Which statement in "{doc.title}" ends with "{" ".join(words[-4:])}"',
                            "answer": " ".join(words)})
                continue
            cut = max(3, min(8, len(words) // 3)) if rnd == 0 else max(2, len(words) * rnd // (rnd + 2))
            out.append({"question": f'In "{doc.title}", how does the statement beginning "{" ".join(words[:cut])}" '
                                    "continue", "answer": " ".join(words[cut:]) or words[-1]})
        return out

    def _fact_qa(self, f: Fact, variant: int) -> dict:
        prompt = f.prompt.rstrip("?")
        if not f.question_like:  # CounterFact: "Lenta.ru is written in" -> "Lenta.ru is written in what?"
            prompt = f"{prompt} what"
        q = self.FACT_QUESTIONS[variant % len(self.FACT_QUESTIONS)].format(
            prompt=prompt, prompt_lc=prompt[:1].lower() + prompt[1:])
        return {"question": q.rstrip("?"), "answer": f.answer}

    def summaries(self, doc: Document, m: int) -> list[str]:
        if doc.facts:
            return [self._fact_text(doc.facts, i) for i in range(m)]
        paras = [sentences(p) for p in re.split(r"\n\s*\n", doc.text) if p.strip()]
        # summary i: the i-th sentence of each paragraph (cycling), so each digest spans the whole document
        return [" ".join(p[i % len(p)] for p in paras if p) for i in range(m)]

    def rewrites(self, doc: Document, k: int) -> list[str]:
        if doc.facts:
            return [self._fact_text(list(reversed(doc.facts)) if i % 2 else doc.facts, i + 1) for i in range(k)]
        sents = sentences(doc.text)
        styles = [lambda s: "- " + s, lambda s: "The text states: " + s, lambda s: s,
                  lambda s: "Note: " + s]
        out = []
        for i in range(k):
            order = sents if i % 2 == 0 else [s for p in reversed(re.split(r"\n\s*\n", doc.text))
                                               for s in sentences(p)]
            out.append("\n".join(styles[i % len(styles)](s) for s in order))
        return out

    def _fact_text(self, facts: list[Fact], variant: int) -> str:
        tpl = self.FACT_STATEMENTS[variant % len(self.FACT_STATEMENTS)]
        lines = []
        for f in facts:
            s = fact_statement(f)
            lines.append(tpl.format(s=s, s_lc=s[:1].lower() + s[1:]))
        return "\n".join(lines)
