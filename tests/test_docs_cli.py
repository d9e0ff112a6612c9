"""The CLI contract: `loramem views make`, `loramem eval --metrics ... --json`, `loramem bench formats`."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from openai_server import ChatServer

DOC = """# Tree Planner

Alpha planners search over trees of partial plans. They use diffusion models to denoise plans.

Beta baselines sample many plans independently. They waste samples on poor regions.
"""


@pytest.fixture()
def home():
    return {"LORAMEM_OPENAI_BASE_URL": "", "OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""}


def test_views_make_writes_rows_and_views_json_then_hits_the_cache(tmp_path, home):
    doc = tmp_path / "notes.md"
    doc.write_text(DOC)
    args = ["views", "make", str(doc), "--views", "summary2+qa3", "--generator", "template", "--out",
            str(tmp_path / "out"), "--model", "tiny-random", "--cache", str(tmp_path / "cache")]
    res = run_cli(*args, env=home)
    assert res.returncode == 0, res.stderr
    listing = json.loads((tmp_path / "out" / "views.json").read_text())
    (d,) = listing["documents"]
    assert d["title"] == "Tree Planner" and d["file"] == "notes.jsonl"
    assert d["views"]["qa3"] | {"tokens": 0, "generate_s": 0} == {
        "generator": "template", "prompt_version": "template-v1", "rows": 3, "tokens": 0, "cached": False,
        "generate_s": 0}
    rows = [json.loads(x) for x in (tmp_path / "out" / "notes.jsonl").read_text().splitlines()]
    assert len(rows) == d["rows"] == 3 + d["views"]["summary2"]["rows"]
    again = run_cli(*args, env=home)
    assert again.returncode == 0 and "2/2 views cached" in again.stderr
    assert json.loads((tmp_path / "out" / "views.json").read_text())["documents"][0]["views"]["qa3"]["cached"]


def test_views_make_with_an_openai_compatible_server(tmp_path, home):
    doc = tmp_path / "notes.txt"
    doc.write_text(DOC)
    with ChatServer() as srv:
        res = run_cli("views", "make", str(doc), "--views", "qa2", "--generator", "openai", "--out",
                      str(tmp_path / "out"), "--model", "tiny-random", "--cache", str(tmp_path / "cache"),
                      env={**home, "LORAMEM_OPENAI_BASE_URL": srv.url, "LORAMEM_OPENAI_MODEL": "served"})
    assert res.returncode == 0, res.stderr
    views = json.loads((tmp_path / "out" / "views.json").read_text())["documents"][0]["views"]
    assert views["qa2"]["generator"] == "openai:served" and views["qa2"]["prompt_version"] == "views-v1"


def test_views_make_without_an_endpoint_says_how_to_set_one(tmp_path, home):
    doc = tmp_path / "notes.txt"
    doc.write_text(DOC)
    res = run_cli("views", "make", str(doc), "--generator", "openai", "--out", str(tmp_path / "o"), env=home)
    assert res.returncode == 2 and "LORAMEM_OPENAI_BASE_URL" in res.stderr and "Traceback" not in res.stderr


def test_eval_metrics_reports_each_metric_overall_and_per_level(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"question": f"Q{i}", "answer": f"A{i}"}) for i in range(3)))
    data = tmp_path / "papers.json"
    data.write_text(json.dumps([{"title": "T", "introduction": "x", "QA": [
        {"level": 1, "question": "Q0", "answer": "A0"}, {"level": 3, "question": "Q1", "answer": "A1"}]}]))
    res = run_cli("write", str(train), "--out", str(tmp_path / "mod"), "--model", "tiny-random", "--steps", "2")
    assert res.returncode == 0, res.stderr
    res = run_cli("eval", str(tmp_path / "mod"), "--data", str(data), "--metrics", "em,f1,rougeL,bleu,judge",
                  "--max-new-tokens", "4", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["overall"]) == {"n", "em", "f1", "rougeL", "bleu", "judge"} and out["overall"]["n"] == 2
    assert set(out["by_level"]) == {"1", "3"} and out["by_level"]["3"]["n"] == 1
    assert out["judge"]["name"] == "embed:all-MiniLM-L6-v2" and out["judge"]["prompt_version"] == "embed-v1"
    assert len(out["answers"]) == 2 and {"prediction", "gold", "level", "f1"} <= set(out["answers"][0])
    # --max-new-tokens (the old, hidden name of --max-tokens) still limits the answers: 4 tokens of the random model
    # are a few words; at the default 64 it runs on for hundreds of characters
    assert all(len(a["prediction"]) < 60 for a in out["answers"]), out["answers"]
    plain = run_cli("eval", str(tmp_path / "mod"), "--data", str(train), "--json")  # the old contract holds
    assert plain.returncode == 0 and set(json.loads(plain.stdout)) >= {"exact_match", "n", "method"}


def test_bench_formats_writes_results_table_and_plot(tmp_path, paper_dir):
    out = tmp_path / "q4"
    res = run_cli("bench", "formats", "--model", "tiny-random", "--scale", "smoke", "--out", str(out),
                  "--paper-data", str(paper_dir), "--papers", "1", "--questions", "2", "--budgets", "60",
                  "--formats", "raw,qa", env={"LORAMEM_HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["format"] for r in rows} == {"raw", "qa"} and all(r["judge_name"] for r in rows)
    assert (out / "formats.md").is_file() and list(out.glob("*.png"))
    assert json.loads((out / "summary.json").read_text())["qa_beats_raw"]["verdict"] in ("agrees", "disagrees", "undecided")
