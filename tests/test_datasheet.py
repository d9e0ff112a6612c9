"""The datasheet on a tiny grid: every section renders, plots are embedded, findings come from the rows,
a failing cell is reported while the rest finish, and a rerun resumes."""

from __future__ import annotations

import json

import pytest
from recipes_for_tests import SQUARES

from loramem import experiments
from loramem.datasheet import run_datasheet
from loramem.experiments.runner import read_rows

TINY_CAPACITY = {"ranks": [1, 4], "entries": [2, 6], "tau": 0.9,
                 "writer": {"layers": "0-1", "steps": 3, "eval_every": 3}}


@pytest.fixture
def squares_registered(monkeypatch):
    monkeypatch.setitem(experiments.CUSTOM, "squares", SQUARES)


def test_report_renders_every_section_for_a_tiny_grid(tmp_path, squares_registered):
    res = run_datasheet("tiny-random", "smoke", tmp_path, only="capacity,squares", progress=False,
                        params={"capacity": TINY_CAPACITY, "squares": {"n": 4, "fail": [3]}})
    md = (tmp_path / "report.md").read_text()
    for section in ("## Environment", "## Findings of the paper", "## capacity: Q1-Q3", "## squares: test"):
        assert section in md, section
    assert "Failed cells: x=3" in md  # the failing cell is reported, the other three finished
    assert md.count("![") >= 4  # capacity's plots
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="capacity/' not in html  # self-contained
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
