"""The recipe runner: per-cell JSONL, resume after a kill, failing cells recorded while the rest finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recipes_for_tests import SQUARES

from loramem.runs.runner import RecipeOptions, read_rows, run_recipe

HERE = Path(__file__).parent


def test_failing_cell_is_recorded_and_the_rest_finish(tmp_path):
    opts = RecipeOptions(out=tmp_path, params={"n": 5, "fail": [2]}, progress=False)
    summary = run_recipe(SQUARES, opts)
    rows = read_rows(tmp_path / "results.jsonl")
    assert [r["status"] for r in rows].count("ok") == 4
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 1 and "broke on purpose" in bad[0]["error"]
    assert summary["failed"] == ["x=2"] and summary["sum_y"] == 0 + 1 + 9 + 16
    assert "| 4 | 16 |" in (tmp_path / "squares.md").read_text()


def test_rerun_skips_finished_cells_and_retries_failed(tmp_path):
    run_recipe(SQUARES, RecipeOptions(out=tmp_path, params={"n": 3, "fail": [1]}, progress=False))
    summary = run_recipe(SQUARES, RecipeOptions(out=tmp_path, params={"n": 3}, progress=False))
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 4  # 3 first run (one failed) + only the failed one again
    assert summary["failed"] == [] and summary["ok"] == 3


def test_resume_after_killed_run(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        "from recipes_for_tests import SQUARES\n"
        "from loramem.runs.runner import RecipeOptions, run_recipe\n"
        f"run_recipe(SQUARES, RecipeOptions(out={str(tmp_path)!r}, params={{'n': 50, 'sleep': 0.2}}, progress=False))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    results = tmp_path / "results.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and len(read_rows(results)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_rows(results)
    assert 3 <= len(before) < 50
    run_recipe(SQUARES, RecipeOptions(out=tmp_path, params={"n": 50}, progress=False))
    after = read_rows(results)
    assert len(after) == 50  # each cell exactly once: none redone, none lost
    assert sorted(r["x"] for r in after) == list(range(50))
    assert json.loads((tmp_path / "summary.json").read_text())["ok"] == 50


def test_a_cell_keeps_every_prediction_up_to_a_bound_evenly_spaced():
    from loramem.runs.runner import PREDICTIONS_KEPT, kept_predictions

    few = kept_predictions([{"q": i} for i in range(5)])
    assert few == {"predictions": [{"i": i, "q": i} for i in range(5)], "predictions_of": 5}
    many = kept_predictions([{"q": i} for i in range(1000)])
    kept = [p["i"] for p in many["predictions"]]
    assert many["predictions_of"] == 1000 and len(kept) == PREDICTIONS_KEPT == 200
    assert kept[:3] == [0, 5, 10] and kept[-1] == 995  # spread over the whole book, not its first part
