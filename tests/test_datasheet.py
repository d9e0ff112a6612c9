"""The datasheet on a tiny grid: every section renders, plots are embedded, findings come from the rows,
a failing cell is reported while the rest finish, and a rerun resumes."""

from __future__ import annotations

import json

import pytest
import torch
from recipes_for_tests import SQUARES

from loramem import experiments
from loramem.datasheet import run_datasheet
from loramem.errors import UserError
from loramem.runs.runner import read_rows

TINY_CAPACITY = {"ranks": [1, 4], "entries": [2, 6], "tau": 0.9, "seeds": 1,
                 "writer": {"layers": "0-1", "steps": 3, "eval_every": 3}}


@pytest.fixture
def squares_registered(monkeypatch):
    monkeypatch.setitem(experiments.CUSTOM, "squares", SQUARES)


def test_report_renders_every_section_for_a_tiny_grid(tmp_path, squares_registered):
    """Two recipes at once in two worker processes (the default on a 2-core CPU): same rows, same report."""
    res = run_datasheet("tiny-random", "smoke", tmp_path, only="capacity,squares", progress=False, workers=2,
                        params={"capacity": TINY_CAPACITY, "squares": {"n": 4, "fail": [3]}})
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["workers"] == 2 and set(run["recipes"]) == {"capacity", "squares"}
    logs = list((tmp_path / "logs").glob("worker-*.log"))
    assert len(logs) == 2 and "== squares" in "".join(p.read_text() for p in logs)  # each recipe in a worker
    md = (tmp_path / "report.md").read_text()
    for section in ("## Environment", "## Findings of the paper", "## capacity: Q1-Q3", "## squares: test"):
        assert section in md, section
    assert "Failed cells: x=3" in md  # the failing cell is reported, the other three finished
    assert f"| recipes at once | 2 (worker processes, {run['threads_per_worker']} threads each" in md
    assert "| LoRA training precision | " in md and "| router query encoder | all-MiniLM-L6-v2 " in md
    assert "## Contents" in md and "- [capacity](#capacity-q1-q3" in md and "| loramem git commit | " in md
    assert "| command | `loramem.datasheet(...) from Python` |" in md
    assert "mean accuracy by rank (" in md.lower() and '{"' not in md.split("## Findings")[1].split("\n## ")[0]  # sentences
    assert "[capacity/results.jsonl](capacity/results.jsonl)" in md
    assert "Settings of its cells (from the rows): rank 1, 4;" in md
    assert all(p.with_suffix(".svg").is_file() for p in (tmp_path / "capacity").glob("*.png")) and "([SVG](" in md
    assert md.count("![") >= 4  # capacity's plots
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="capacity/' not in html  # self-contained
    assert 'id="capacity-q1-q3' in html  # the contents links land
    rows = read_rows(tmp_path / "results.jsonl")
    assert {r["recipe"] for r in rows} == {"capacity", "squares"}
    assert sum(r["recipe"] == "capacity" for r in rows) == 4
    verdicts = json.loads((tmp_path / "findings.json").read_text())
    assert {"finding", "agrees", "evidence"} <= set(verdicts[0])
    cap = {v["id"]: v for v in verdicts}["capacity-saturates"]
    assert cap["agrees"] in (True, False)  # measured: two ranks, two sizes
    assert "mean_accuracy_by_rank" in cap["evidence"]
    assert {v["id"]: v for v in verdicts}["qa-beats-raw"]["agrees"] is None  # not run here
    assert res["recipes"]["squares"]["failed"] == ["x=3"]


def test_rerun_resumes_without_redoing_cells(tmp_path, squares_registered):
    run_datasheet("tiny-random", "smoke", tmp_path, only="squares", progress=False,
                  params={"squares": {"n": 3, "fail": [1]}})
    run_datasheet("tiny-random", "smoke", tmp_path, only="squares", progress=False, params={"squares": {"n": 3}})
    rows = read_rows(tmp_path / "squares" / "results.jsonl")
    assert len(rows) == 4 and sum(r["status"] == "ok" for r in rows) == 3
    assert "Failed cells" not in (tmp_path / "report.md").read_text()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["workers"] == 1 and run["threads_per_worker"] == torch.get_num_threads()
    assert f"| recipes at once | 1 ({torch.get_num_threads()} threads) |" in (tmp_path / "report.md").read_text()


def test_recipes_that_share_a_bank_run_in_one_worker_in_order():
    from loramem.runs.workers import plan

    units = plan(["capacity", "routing", "mixes", "multi-lora", "n-modules", "squares"])
    assert ["multi-lora", "routing", "n-modules"] in units  # the Q8-Q11 bank is trained once, by multi-lora
    assert sorted(n for u in units for n in u) == sorted(["capacity", "routing", "mixes", "multi-lora",
                                                          "n-modules", "squares"])
    assert units[0][0] == "multi-lora" and units[-1] == ["squares"]  # longest first, unknown recipes last


def test_a_worker_that_dies_is_reported_and_the_other_recipes_finish(tmp_path, squares_registered):
    """A worker killed mid-recipe (as by the out-of-memory killer) becomes that recipe's error; the rest finish."""
    from recipes_for_tests import DIES

    experiments.CUSTOM["dies"] = DIES
    try:
        res = run_datasheet("tiny-random", "smoke", tmp_path, only="squares,dies", progress=False, workers=2,
                            params={"squares": {"n": 3}})
    finally:
        experiments.CUSTOM.pop("dies")
    assert "worker process died" in res["recipes"]["dies"]["error"]
    assert res["recipes"]["squares"]["ok"] == 3
    assert "worker process died" in (tmp_path / "report.md").read_text()


def test_workers_that_cannot_start_are_reported_not_restarted_forever(tmp_path, squares_registered):
    import threading

    from recipes_for_tests import Unloadable

    res: dict = {}
    run = threading.Thread(target=lambda: res.update(run_datasheet(
        "tiny-random", "smoke", tmp_path, only="squares,capacity", progress=False, workers=2,
        params={"squares": {"n": 2, "poison": Unloadable()}, "capacity": TINY_CAPACITY})), daemon=True)
    run.start()
    run.join(timeout=180)
    assert not run.is_alive(), "the datasheet kept restarting workers that cannot start"
    assert all("could not start" in res["recipes"][n]["error"] for n in ("squares", "capacity"))
    assert "could not start" in (tmp_path / "report.md").read_text()


def test_recipes_that_cannot_be_pickled_are_refused_with_the_fix(tmp_path, squares_registered):
    with pytest.raises(UserError, match="--workers 1"):
        run_datasheet("tiny-random", "smoke", tmp_path, only="squares,capacity", progress=False, workers=2,
                      params={"squares": {"n": 2, "unpicklable": lambda: None}, "capacity": TINY_CAPACITY})


def test_demo_reads_the_paper_release_from_paper_data(tmp_path):
    from conftest import run_cli

    missing = tmp_path / "no-release-here"
    proc = run_cli("demo", "--model", "tiny-random", "--only", "counterfact", "--workers", "1", "--paper-data",
                   str(missing), "--out", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = read_rows(tmp_path / "demo" / "counterfact" / "results.jsonl")
    assert row["status"] == "error" and str(missing) in row["error"]  # the folder given, not the default one


def test_side_results_call_out_the_base_knowledge_a_counterfact_module_lost(tmp_path):
    from loramem.datasheet import side_results

    (tmp_path / "counterfact").mkdir()
    summary = {"mean_known_retained": 0.346, "per_cell": {"r=4": {"known_before": 26, "known_retained": 0.346}}}
    (tmp_path / "counterfact" / "summary.json").write_text(json.dumps(summary))
    said = side_results(tmp_path, ["counterfact"])
    assert len(said) == 1 and "kept 0.346 of the facts the base model answered right before" in said[0]
    assert "26 such facts" in said[0]
    assert side_results(tmp_path, ["capacity"]) == []
