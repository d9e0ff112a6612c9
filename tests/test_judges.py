"""Judges: the offline embedding judge, the rubric LLM judge over a real local HTTP server, score parsing."""

from __future__ import annotations

import pytest
from openai_server import ChatServer

from loramem.chat import OpenAIChat
from loramem.config import EndpointConfig, JudgeConfig
from loramem.judges import RUBRIC_VERSION, EmbeddingJudge, JudgeItem, LLMJudge, make_judge, parse_score


def test_parse_score_reads_json_text_and_clamps():
    assert parse_score('{"score": 7, "reason": "ok"}') == 7.0
    assert parse_score("Score: 8/10 because ...") == 8.0
    assert parse_score("  6 \n") == 6.0
    assert parse_score('{"score": 14}') == 10.0
    assert parse_score("I cannot grade this.") is None


def test_embedding_judge_ranks_answers_by_meaning():
    judge = make_judge(JudgeConfig(kind="embed"))
    assert isinstance(judge, EmbeddingJudge) and judge.prompt_version == "embed-v1"
    gold = "The planner is called Diffuser."
    same, para, other, empty = judge.score([
        JudgeItem("q", gold, gold), JudgeItem("q", gold, "It is a diffusion planner named Diffuser."),
        JudgeItem("q", gold, "Bananas are rich in potassium."), JudgeItem("q", gold, "")])
    assert same == pytest.approx(10.0, abs=1e-3)
    assert para > other + 2
    assert empty == 0.0


def test_llm_judge_on_the_rubric_over_http():
    with ChatServer() as srv:
        judge = LLMJudge(OpenAIChat(EndpointConfig(base_url=srv.url, model="judge-model", api_key="k")))
        scores = judge.score([JudgeItem("What?", "Diffuser.", "Diffuser.", 1),
                              JudgeItem("Why?", "Because.", "No idea.", 3), JudgeItem("Who?", "Ann.", "  ", 2)])
        prompts = [r["messages"][-1]["content"] for r in srv.requests]
    assert scores == [10.0, 2.0, 0.0]
    assert judge.name == "llm:openai:judge-model" and judge.prompt_version == RUBRIC_VERSION
    assert any("0 to 10" in p and "Question (information recall): What?" in p for p in prompts)


def test_local_model_judge_runs_the_rubric(tiny_base):
    judge = make_judge(JudgeConfig(kind="local", model="tiny-random"))
    scores = judge.score([JudgeItem("What?", "Diffuser.", "Diffuser.", 1), JudgeItem("Who?", "Ann.", "", 2)])
    assert judge.name == "llm:local:tiny-random" and judge.prompt_version == RUBRIC_VERSION
    assert scores[1] == 0.0 and (scores[0] is None or 0.0 <= scores[0] <= 10.0)  # a random model rarely parses
