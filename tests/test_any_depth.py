"""The audit fits any base model: every recipe's smoke defaults (relative layer specs such as 'top 3') run on a
2-layer model, and a layer spec that cannot fit is refused with the fix."""

from __future__ import annotations

import pytest

from loramem import experiments
from loramem.adapters import layers_label, parse_layers
from loramem.errors import UserError
from loramem.runs.runner import RecipeOptions, run_one

# the datasheet's recipes (test files register extra ones)
BANKED = {"multi-lora", "routing", "merging", "n-modules"}  # the Q8-Q11 bank: at paper scale, 2 of its 16 sectors
RECIPES = ["capacity", "formats", "mixes", "model-scale", "generators", "multi-lora", "routing", "merging",
           "n-modules", "rag-icl", "counterfact", "continual"]


def test_relative_layer_specs_resolve_against_the_model_depth():
    assert parse_layers("top 3", 30) == [27, 28, 29] and parse_layers("top 3", 2) == [0, 1]
    assert parse_layers("top 20%", 30) == [24, 25, 26, 27, 28, 29] and parse_layers("top 20%", 2) == [1]
    assert parse_layers("top 100%", 28) is not None and len(parse_layers("top 100%", 28)) == 28
    assert parse_layers("all", 2) is None and layers_label("top 3", 30) == "27-29" and layers_label(None, 2) == "all 2"
    for bad in ("top 0", "top 1.5", "top 120%", "27-29"):
        with pytest.raises(UserError, match="top 3"):
            parse_layers(bad, 2)


def smoke_params(name: str) -> dict:
    """The smoke grid as it is, but the Q8-Q11 bank on 8 facts in 2 modules (its writer settings unchanged)."""
    return {"facts": 8, "modules": 2} if name in BANKED else {}


def paper_params(name: str) -> dict:
    return {"writer": {"steps": 2}, **({"modules": 2} if name in BANKED else {})}


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_a_cell_on_a_two_layer_model(name, scale, tmp_path, paper_dir, monkeypatch):
    """The first cell of each recipe, with the grid's own settings at that scale, on tiny-random (depth 2). At
    paper scale the writer trains 2 steps (the paper's 1,500-step recipe is a GPU's work): what is under test is
    that the paper branch's grid, layers and settings run on a model of any depth. cpu likewise (2 steps)."""
    monkeypatch.setenv("LORAMEM_CACHE", str(tmp_path / "cache"))
    recipe = experiments.get(name)
    opts = RecipeOptions(model="tiny-random", scale=scale, out=tmp_path / name, paper_data=paper_dir,
                         progress=False, params=smoke_params(name) if scale == "smoke" else paper_params(name))
    cells = recipe.cells(opts)
    row = run_one(recipe, cells[0], opts)
    assert row["status"] == "ok", row.get("error")
