"""Views: specs, rows per view, the on-disk cache (hits, prompt-version misses), token budgets, facts."""

from __future__ import annotations

import json

import pytest

from loramem.config import ViewsConfig
from loramem.data.documents import Document, load_documents
from loramem.errors import UserError
from loramem.generators import TemplateGenerator
from loramem.views import (
    PAPER_MIXES,
    cache_path,
    fit_budget,
    make_views,
    parse_spec,
    row_tokens,
    write_view_files,
)

DOC = Document(id="d1", title="A paper", text=(
    "Alpha planners search over trees of partial plans. They use diffusion models to denoise plans.\n\n"
    "Beta baselines sample many plans independently. They waste samples on poor regions.\n\n"
    "Our method combines both ideas into one search. It scales with inference compute."))


class CountingTemplate(TemplateGenerator):
    """The real template generator, counting how often it is asked to generate."""

    def __init__(self) -> None:
        self.calls = 0

    def qa_pairs(self, doc, n):
        self.calls += 1
        return super().qa_pairs(doc, n)

    def summaries(self, doc, m):
        self.calls += 1
        return super().summaries(doc, m)


def test_parse_spec_uses_the_papers_names_and_defaults():
    assert [p.name for p in parse_spec("raw+summary8+rewrite4+qa40")] == ["raw", "summary8", "rewrite4", "qa40"]
    assert [p.name for p in parse_spec("qa+summary", ViewsConfig(qa=5))] == ["qa5", "summary8"]
    assert [p.name for p in parse_spec("Original+QA40")] == ["raw", "qa40"]
    for bad in ("qa40+poem2", "raw3", "qa0", "qa4+qa5", "+"):
        with pytest.raises(UserError):
            parse_spec(bad)
    assert set(PAPER_MIXES) == {"Original", "QA40", "Original+QA40", "Summary8+QA40", "Rewrite4+QA40", "All mixed"}


def test_views_record_generator_prompt_version_rows_and_tokens(tiny_base, tmp_path):
    cfg = ViewsConfig(cache_dir=tmp_path)
    vs = make_views(DOC, "raw+summary2+rewrite1+qa3", TemplateGenerator(), tiny_base.tokenizer, cfg)
    assert list(vs.parts) == ["raw", "summary2", "rewrite1", "qa3"]
    assert vs.parts["qa3"]["rows"] == 3 and vs.parts["qa3"]["generator"] == "template"
    assert vs.parts["qa3"]["prompt_version"] == "template-v1"
    assert vs.tokens == sum(row_tokens(r, tiny_base.tokenizer) for r in vs.rows)
    qa = [r for r in vs.rows if r["view"] == "qa3"]
    assert all(set(r) == {"question", "answer", "view", "doc"} for r in qa)
    assert [r["text"] for r in vs.rows if r["view"] == "raw"] == [DOC.text]


def test_second_make_is_a_cache_hit_and_a_new_prompt_version_regenerates(tiny_base, tmp_path):
    cfg = ViewsConfig(cache_dir=tmp_path)
    gen = CountingTemplate()
    first = make_views(DOC, "summary2+qa3", gen, tiny_base.tokenizer, cfg)
    assert gen.calls == 2 and not any(p["cached"] for p in first.parts.values())
    assert cache_path(tmp_path, DOC, "qa3", "template").is_file()
    again = make_views(DOC, "qa3+summary2", gen, tiny_base.tokenizer, cfg)  # order differs; same atomic views
    assert gen.calls == 2 and all(p["cached"] for p in again.parts.values())
    assert sorted(map(json.dumps, again.rows)) == sorted(map(json.dumps, first.rows))
    gen.prompt_version = "template-v2"
    make_views(DOC, "qa3", gen, tiny_base.tokenizer, cfg)
    assert gen.calls == 3
    other = Document(id="d1", title="A paper", text=DOC.text + " Changed.")
    make_views(other, "qa3", gen, tiny_base.tokenizer, cfg)  # same id, new content: new hash, regenerated
    assert gen.calls == 4
    make_views(DOC, "qa3", gen, tiny_base.tokenizer, ViewsConfig(cache_dir=tmp_path, refresh=True))
    assert gen.calls == 5


def test_budget_fixes_training_tokens(tiny_base, tmp_path):
    tok = tiny_base.tokenizer
    for spec in ("raw", "summary2", "rewrite1"):
        vs = make_views(DOC, spec, TemplateGenerator(), tok, ViewsConfig(cache_dir=tmp_path, budget_tokens=150))
        total = sum(row_tokens(r, tok) for r in vs.rows)
        assert 140 <= total <= 152, (spec, total)  # raw is cycled to reach the budget, the last row is cut
    rows = [{"question": "Q?", "answer": "A."}] * 3
    one = row_tokens(rows[0], tok)
    assert len(fit_budget(rows, 2 * one, tok)) == 2
    with pytest.raises(UserError):
        fit_budget(rows, 0, tok)


def test_view_files_per_document_and_views_json(tiny_base, tmp_path, paper_dir):
    docs = load_documents(paper_dir / "paperqa" / "paperQA_public.json")[:2]
    listing = write_view_files(docs, "summary8+qa40", TemplateGenerator(), tiny_base.tokenizer, tmp_path / "out",
                               ViewsConfig(cache_dir=tmp_path / "cache"))
    on_disk = json.loads((tmp_path / "out" / "views.json").read_text())
    assert on_disk == listing
    for d in on_disk["documents"]:
        rows = [json.loads(x) for x in (tmp_path / "out" / d["file"]).read_text().splitlines()]
        assert len(rows) == d["rows"] == sum(v["rows"] for v in d["views"].values())
        assert d["views"]["qa40"]["rows"] == 40 and d["tokens"] > 0
        assert {"generator", "prompt_version", "rows", "tokens"} <= set(d["views"]["summary8"])


def test_fact_documents_give_exact_qa_rows(tiny_base, tmp_path, paper_dir):
    (doc,) = load_documents(paper_dir / "pb_cf" / "phonebook_eval_qa_1K.json")
    vs = make_views(doc, "qa10", TemplateGenerator(), tiny_base.tokenizer, ViewsConfig(cache_dir=tmp_path))
    assert len(vs.rows) == len(doc.facts)  # every fact at least once
    assert vs.rows[0]["question"] == "What is the phone number of Jeffrey Buck" and vs.rows[0]["answer"] == "603-556-7631"
