"""`--executor ray`: a local Ray with 2 CPUs runs a tiny grid; rows land in results.jsonl like a local run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from recipes_for_tests import SQUARES

from loramem.runs.runner import RecipeOptions, read_rows, run_recipe

ray = pytest.importorskip("ray")


def test_ray_runs_a_tiny_grid_and_records_failures(tmp_path):
    here = str(Path(__file__).parent)
    src = str(Path(__file__).parents[1] / "src")
    path = os.pathsep.join([here, src, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        summary = run_recipe(SQUARES, RecipeOptions(out=tmp_path, params={"n": 4, "fail": [3]}, progress=False),
                             executor="ray")
        rows = read_rows(tmp_path / "results.jsonl")
        assert sorted(r["x"] for r in rows if r["status"] == "ok") == [0, 1, 2]
        assert summary["failed"] == ["x=3"] and summary["sum_y"] == 5
        assert len({r.get("finished") for r in rows}) >= 1
    finally:
        ray.shutdown()
