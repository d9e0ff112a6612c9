"""Document loaders: the paper's PaperQA file, text/Markdown/JSONL/facts files, and malformed files."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from loramem.data.documents import load_documents, load_questions
from loramem.data.paperqa import read_paperqa
from loramem.errors import UserError


def test_the_papers_paperqa_file_loads(paper_dir):
    docs = read_paperqa(paper_dir / "paperqa" / "paperQA_public.json")
    assert len(docs) == 10
    d = docs[0]
    assert d.title == "Monte Carlo Tree Diffusion for System 2 Planning"
    assert d.text.startswith("Diffusion models have recently emerged")
    assert len(d.questions) == 30 and {q.level for q in d.questions} == {1, 2, 3}
    assert all(q.doc == d.id for q in d.questions)
    assert load_documents(paper_dir / "paperqa" / "paperQA_public.json")[3].title == docs[3].title
    assert len({x.hash for x in docs}) == 10


def test_any_file_of_the_paperqa_format_loads(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps([{"title": "T", "introduction": "Some text.", "QA": [
        {"level": "2", "question": "Q?", "answer": "A."}, {"question": "Q2?", "answer": "B."}]}]))
    (d,) = load_documents(f)
    assert d.id == "0" and [q.level for q in d.questions] == [2, None]
    assert [q.answer for q in load_questions(f)] == ["A.", "B."]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps([{"title": "T", "QA": []}]), "paper 0 lacks 'introduction'"),
    (json.dumps([{"title": "T", "introduction": "x", "QA": [{"level": 7, "question": "q", "answer": "a"}]}]),
     "level must be 1, 2 or 3"),
    (json.dumps([{"title": "T", "introduction": "x", "QA": [{"question": "q"}]}]), "needs 'question' and 'answer'"),
    (json.dumps([{"title": "T", "introduction": "  ", "QA": []}]), "'introduction' must be non-empty"),
    (json.dumps([{"id": 1, "title": "T", "introduction": "x", "QA": []}] * 2), "duplicate id 1"),
    (json.dumps({"papers": []}), "not a PaperQA file"),
])
def test_malformed_paperqa_files_give_one_line_errors(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_documents(f)
    assert "\n" not in str(err.value)


def test_text_markdown_and_jsonl_documents(tmp_path):
    (tmp_path / "a.txt").write_text("Plain text here.\n")
    (tmp_path / "b.md").write_text("Intro line\n\n# The Title\n\nBody.")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "x", "title": "X", "text": "Doc x.", "questions": [
        {"question": "What?", "answer": "Doc x.", "level": 1}]}) + "\n\n" + json.dumps({"text": "Doc y."}) + "\n")
    docs = load_documents(tmp_path)
    assert [(d.id, d.title) for d in docs] == [("a", "a"), ("b", "The Title"), ("x", "X"), ("3", "3")]
    assert docs[2].questions[0].level == 1 and docs[2].questions[0].doc == "x"


def test_question_rows_and_fact_files_give_questions(tmp_path, paper_dir):
    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"question": "Q?", "answer": "A", "level": 3}) + "\n")
    assert [(q.question, q.level) for q in load_questions(rows)] == [("Q?", 3)]
    facts = load_documents(paper_dir / "pb_cf" / "counterfact_eval_qa.json")[0].facts
    assert facts[0].prompt == "Pochepsky District, which is located in" and facts[0].answer == "India"
    assert not facts[0].question_like
    pb = load_documents(paper_dir / "pb_cf" / "phonebook_eval_qa_1K.json")[0]
    assert pb.facts[0].subject == "Jeffrey Buck" and "The phone number of Jeffrey Buck is 603-556-7631." in pb.text


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "", "is empty"),
    ("rows.jsonl", '{"text": "ok"}\n{oops\n', r"rows.jsonl:2: not valid JSON"),
    ("rows2.jsonl", '{"title": "no text"}\n', "needs non-empty 'text'"),
    ("doc.pdf", "%PDF", "unsupported document type"),
])
def test_malformed_documents_give_one_line_errors(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_documents(f)


def test_cli_prints_a_malformed_file_error_in_one_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"title": "T", "QA": []}]))
    res = run_cli("views", "make", str(f), "--out", str(tmp_path / "o"), "--model", "tiny-random")
    assert res.returncode == 2
    assert "lacks 'introduction'" in res.stderr and "Traceback" not in res.stderr
