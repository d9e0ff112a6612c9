"""CounterFact: the paper's files and ROME's format are read as published; efficacy on a hand-made edit."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from loramem.config import WriterConfig
from loramem.data import counterfact as cf
from loramem.errors import UserError
from loramem.likelihood import answer_logprobs, efficacy, first_words, starts_with_answer

ROME = [{"case_id": 0, "requested_rewrite": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                                             "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}},
         "paraphrase_prompts": ["Where is the Eiffel Tower? It is in the city of"],
         "neighborhood_prompts": ["The Louvre is located in the city of"]}]


def test_paper_files_are_read_as_released(paper_dir):
    es = cf.load_paper("1K", paper_dir)
    assert len(es.edits) == 106 and es.edits[0] == "Lenta.ru is written in Italian"
    assert len(es.subjects) == 106 and 100 <= len(es.probes) <= 121
    trained = set(es.edits)
    assert all(f"{p.prompt} {p.new}" in trained and p.old is None for p in es.probes)
    assert es.examples()[0].prompt == "" and es.examples()[0].answer == es.edits[0]  # raw text
    bigger = cf.load_paper("2K", paper_dir)
    assert bigger.edits[: len(es.edits)] == es.edits and len(bigger.edits) > len(es.edits)
    with pytest.raises(UserError, match="1K..20K"):
        cf.paper_files("64K", paper_dir)


def test_rome_format_gives_true_objects_and_neighborhood(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(ROME))
    es = cf.load_rome(path)
    assert es.edits == ["The Eiffel Tower is located in the city of Rome"]
    assert [p.kind for p in es.probes] == ["rewrite", "paraphrase", "neighborhood"]
    assert all(p.old == "Paris" and p.new == "Rome" for p in es.probes)
    path.write_text('[{"x": 1}]')
    with pytest.raises(UserError, match="requested_rewrite"):
        cf.load_rome(path)


def test_metric_functions():
    assert efficacy([0.0, -1.0, -3.0], [-1.0, -2.0, -1.0]) == pytest.approx(2 / 3)
    assert math.isnan(efficacy([], []))
    assert starts_with_answer("Paris, France.", "Paris") and not starts_with_answer("Parisian food", "Paris")
    assert starts_with_answer("new york city", "New York") and not starts_with_answer("", "Rome")
    assert first_words("the Russian Federation, a country", 1) == "Russian"


def test_an_edit_module_makes_the_new_object_beat_the_old(tiny_base, tmp_path):
    from loramem.answer.pipeline import memory_off
    from loramem.writer import write_module

    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(ROME))
    es = cf.load_rome(path)
    probe = es.by_kind("rewrite")[0]
    model, off = memory_off(tiny_base)
    with off:
        new0, old0 = answer_logprobs(model, tiny_base, [probe.prompt] * 2, [probe.new, probe.old])
    cfg = WriterConfig(rank=8, steps=60, lr=2e-2, target_em=None, progress=False)
    res = write_module(es.examples(), tiny_base, cfg, adapter="cf_test")
    new1, old1 = answer_logprobs(res.model, tiny_base, [probe.prompt] * 2, [probe.new, probe.old])
    res.model.delete_adapter("cf_test")
    assert new1 > new0 + 0.2  # the edit raised the new object's likelihood
    assert efficacy([new1], [old1]) == 1.0  # and it now beats the old object
    # base model was not affected (adapter removed)
    model, off = memory_off(tiny_base)
    with off:
        assert answer_logprobs(model, tiny_base, [probe.prompt], [probe.new])[0] == pytest.approx(new0, abs=1e-4)


def test_bench_counterfact_cli_writes_efficacy(tmp_path, paper_dir):
    out = tmp_path / "cf"
    r = run_cli("bench", "counterfact", "--model", "tiny-random", "--ranks", "4", "--sizes", "1K", "--out", str(out),
                "--paper-data", str(paper_dir), "--layers", "0-1", "--steps", "3", "--max-probes", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "ok" and 0.0 <= rows[0]["efficacy"] <= 1.0
    assert rows[0]["n_probes"] == 4 and rows[0]["storage_bytes"] > 0 and "known_retained" in rows[0]
    assert (out / "counterfact.md").is_file() and "efficacy" in (out / "counterfact.md").read_text()
    from loramem.evaluate import normalize

    row = rows[0]  # every probe's prediction and scores, and every known fact before and after: they give the metrics
    assert len(row["predictions"]) == row["predictions_of"] and {"rewrite"} <= {p["kind"] for p in row["predictions"]}
    compared = [p for p in row["predictions"] if p["kind"] == "rewrite" and normalize(p["old"]) != normalize(p["gold"])]
    assert len(compared) == row["n_compared"]
    if compared:
        assert sum(p["new_beats_old"] for p in compared) / len(compared) == pytest.approx(row["efficacy"])
    known = [k for k in row["known_facts"] if k["right_before"]]
    assert len(known) == row["known_before"]
    if known:
        assert sum(k["right_after"] for k in known) / len(known) == pytest.approx(row["known_retained"])
    bad = run_cli("bench", "counterfact", "--model", "tiny-random", "--out", str(out), "--data", str(tmp_path / "no.json"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
